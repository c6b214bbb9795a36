//! The sections of one node's serving side: `[server]`, `[auth]`, `[session]`, `[limits]`,
//! `[chat]`, `[groups]` and `[log]`, their checks, and the settings derived from them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{list_or_string, range, Config, ConfigError};
use confab_actors::engine::Limits as EngineLimits;
use confab_actors::limits::{Rate, RateConfig};

/// `[server]`: the listener and its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub bind: String,
    pub workers: usize,
    pub max_frame_bytes: usize,
    pub shutdown_timeout_secs: u64,
    /// `SO_SNDBUF` of every connection; 0: the kernel's autotuning.
    pub send_buffer_bytes: usize,
    /// `TCP_USER_TIMEOUT` of every connection; 0: the kernel's default (about 15 minutes).
    pub write_timeout_secs: u64,
    /// `TCP_NODELAY` on every connection: each frame leaves at once instead of waiting for the
    /// peer's acknowledgement of the previous one (Nagle's algorithm).
    pub tcp_nodelay: bool,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` names the client.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// Longest time `/readyz` waits for the store's answer.
    pub ready_timeout_ms: u64,
}

/// `[auth]`: the access tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub secret: String,
    pub token_ttl_secs: u64,
    pub max_token_ttl_secs: u64,
    pub max_clock_skew_secs: u64,
    /// Longest wait for the user's record when a WebSocket connects.
    pub access_check_timeout_ms: u64,
}

/// `[limits]`: rate limits (see `confab_actors::limits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub requests_per_conn_per_sec: u32,
    pub requests_per_conn_burst: u32,
    pub sends_per_conn_per_sec: u32,
    pub sends_per_conn_burst: u32,
    pub sends_per_user_per_sec: u32,
    pub sends_per_user_burst: u32,
    pub group_creates_per_user_per_hour: u32,
    pub group_creates_per_user_burst: u32,
    pub group_adds_per_user_per_hour: u32,
    pub group_adds_per_user_burst: u32,
    pub asks_per_user_per_hour: u32,
    pub asks_per_user_burst: u32,
    pub connections_per_ip_per_sec: u32,
    pub connections_per_ip_burst: u32,
    pub max_connections_per_ip: usize,
}

/// A list given as a TOML array, or (from the environment) as one comma-separated string.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list_or_string(d, |t| Ok(t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()))
}

/// `[session]`: one WebSocket connection's heartbeat and queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub heartbeat_interval_secs: u64,
    pub client_timeout_secs: u64,
    pub outbound_queue: usize,
    pub max_inflight_requests: usize,
}

/// `[chat]`: messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub max_text_chars: usize,
    pub recall_window_secs: u64,
    /// Who may message whom one-to-one: `open`, `friends` or `friends_or_groups`.
    #[serde(default)]
    pub who_may_message: confab_actors::rules::WhoMayMessage,
    /// Accounts exempt from `who_may_message` and from blocks (operators, service accounts).
    #[serde(default, deserialize_with = "string_list")]
    pub staff: Vec<String>,
}

/// `[groups]`: group sizes and the conversation actors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub max_members: usize,
    pub fanout_chunk: usize,
    pub idle_timeout_secs: u64,
    pub arbiters: usize,
}

/// `[log]`: the log filter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

impl Config {
    /// Checks `[server]`, `[auth]`, `[session]`, `[chat]` and `[groups]`, naming the setting at
    /// fault.
    pub(super) fn validate_server_sections(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        range("server.workers", self.server.workers, 0, 1024)?;
        range("server.max_frame_bytes", self.server.max_frame_bytes, 1024, 16 << 20)?;
        if self.auth.secret.len() < 16 {
            return Err(ConfigError("auth.secret must be at least 16 bytes".into()));
        }
        range("auth.max_token_ttl_secs", self.auth.max_token_ttl_secs, 60, 10 * 365 * 86400)?;
        range("auth.token_ttl_secs", self.auth.token_ttl_secs, 1, self.auth.max_token_ttl_secs)?;
        range("auth.max_clock_skew_secs", self.auth.max_clock_skew_secs, 0, 3600)?;
        range("auth.access_check_timeout_ms", self.auth.access_check_timeout_ms, 10, 60_000)?;
        range("server.send_buffer_bytes", self.server.send_buffer_bytes, 0, 64 << 20)?;
        range("server.write_timeout_secs", self.server.write_timeout_secs, 0, 86400)?;
        range("server.ready_timeout_ms", self.server.ready_timeout_ms, 10, 60_000)?;
        networks(&self.server.trusted_proxies).map_err(|e| ConfigError(format!("server.trusted_proxies: {e}")))?;
        range("session.heartbeat_interval_secs", self.session.heartbeat_interval_secs, 1, 3600)?;
        if self.session.client_timeout_secs <= self.session.heartbeat_interval_secs {
            return Err(ConfigError(
                "session.client_timeout_secs must be greater than session.heartbeat_interval_secs".into(),
            ));
        }
        range("session.outbound_queue", self.session.outbound_queue, 16, 1 << 20)?;
        range("session.max_inflight_requests", self.session.max_inflight_requests, 1, 10_000)?;
        range("chat.max_text_chars", self.chat.max_text_chars, 1, 1 << 20)?;
        range("chat.recall_window_secs", self.chat.recall_window_secs, 0, 365 * 86400)?;
        for u in &self.chat.staff {
            if confab_actors::model::validate_id("user", u).is_err() {
                return Err(ConfigError(format!("chat.staff: {u:?} is not a valid user id")));
            }
        }
        range("groups.max_members", self.groups.max_members, 2, 1_000_000)?;
        range("groups.fanout_chunk", self.groups.fanout_chunk, 1, 100_000)?;
        range("groups.idle_timeout_secs", self.groups.idle_timeout_secs, 1, 86400)?;
        range("groups.arbiters", self.groups.arbiters, 0, 256)?;
        Ok(())
    }

    /// `server.bind` as a socket address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError(format!("server.bind = {:?} is not an address like 127.0.0.1:8080", self.server.bind))
        })
    }

    /// The engine's limits, from `[chat]`, `[groups]` and `[limits]`.
    pub fn limits(&self) -> EngineLimits {
        EngineLimits {
            max_text_chars: self.chat.max_text_chars,
            recall_window: Duration::from_secs(self.chat.recall_window_secs),
            max_group_members: self.groups.max_members,
            fanout_chunk: self.groups.fanout_chunk,
            idle_timeout: Duration::from_secs(self.groups.idle_timeout_secs),
            conversation_mailbox: 1024,
            rates: self.rates(),
            who_may_message: self.chat.who_may_message,
            // The HTTP API's system user sends the backend's notifications: never refused.
            staff: std::sync::Arc::new(
                self.chat.staff.iter().cloned().chain(std::iter::once(self.api.system_user.clone())).collect(),
            ),
        }
    }

    /// The rate limits of `[limits]`.
    pub fn rates(&self) -> RateConfig {
        let l = &self.limits;
        RateConfig {
            requests_per_conn: Rate::per_sec(l.requests_per_conn_per_sec, l.requests_per_conn_burst),
            sends_per_conn: Rate::per_sec(l.sends_per_conn_per_sec, l.sends_per_conn_burst),
            sends_per_user: Rate::per_sec(l.sends_per_user_per_sec, l.sends_per_user_burst),
            group_creates_per_user: Rate::per_hour(l.group_creates_per_user_per_hour, l.group_creates_per_user_burst),
            group_adds_per_user: Rate::per_hour(l.group_adds_per_user_per_hour, l.group_adds_per_user_burst),
            asks_per_user: Rate::per_hour(l.asks_per_user_per_hour, l.asks_per_user_burst),
            connections_per_ip: Rate::per_sec(l.connections_per_ip_per_sec, l.connections_per_ip_burst),
            max_connections_per_ip: l.max_connections_per_ip,
        }
    }
}

/// Addresses and networks (`10.0.0.0/8`, `::1`, `192.168.1.7`) as `(address, prefix length)`
/// (`server.trusted_proxies`).
pub fn networks(list: &[String]) -> Result<Vec<(IpAddr, u8)>, String> {
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let (addr, bits) = match item.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (item.as_str(), None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| format!("{item:?} is not an address or network"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => {
                b.trim().parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("{item:?}: bad prefix"))?
            }
            None => max,
        };
        out.push((ip, bits));
    }
    Ok(out)
}
