//! Configuration: one typed struct, layered from the compiled-in `config/default.toml`, an
//! optional `--config FILE`, and `CONFAB__SECTION__KEY` environment variables, validated at load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::http::ws::config::SessionConfig;
use confab_actors::engine::Limits as EngineLimits;
use confab_actors::limits::{Rate, RateConfig};

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub session: Session,
    pub limits: Limits,
    pub chat: Chat,
    pub groups: Groups,
    pub storage: Storage,
    pub api: Api,
    pub log: Log,
    pub cluster: Cluster,
    pub webhooks: Webhooks,
}

/// `[webhooks]`: signed POSTs of events to backends, and the `before_send` check (docs/webhooks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Where events go. Empty: no outbox is written and nothing is sent.
    #[serde(deserialize_with = "webhook_endpoints")]
    pub endpoints: Vec<WebhookEndpoint>,
    /// Attempts per event and endpoint before the delivery is marked `failed` (replayable).
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest wait for an endpoint's answer.
    pub timeout_ms: u64,
    /// Deliveries in flight per endpoint.
    pub max_in_flight: usize,
    /// How often the dispatcher looks for new events (it also wakes when a delivery finishes).
    pub poll_interval_ms: u64,
    /// How long the dispatcher's lease lasts without renewal (one active dispatcher per cluster).
    pub lease_ttl_ms: u64,
    /// How long delivered and failed events (and their delivery log) are kept, in hours; may be
    /// fractional. Events still pending for some endpoint are kept whatever their age.
    pub retention_hours: f64,
    /// How often the dispatcher holding the lease removes what is past the retention.
    pub trim_interval_ms: u64,
    pub before_send: BeforeSendConfig,
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// A stable name: the delivery log is kept under it.
    pub name: String,
    pub url: String,
    /// Event kinds to send; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Sent as `X-Confab-Key`; the receiver looks the secret up by it.
    pub key_id: String,
    pub secret: String,
}

/// `[webhooks.before_send]`: the synchronous check of client messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeforeSendConfig {
    /// Empty: no check.
    pub url: String,
    pub timeout_ms: u64,
    /// When the check cannot be made (timeout, error): true accepts the message, false refuses it.
    pub fail_open: bool,
    pub key_id: String,
    pub secret: String,
}

/// Like `api.keys`: a list of tables in a file, or a JSON array in one environment variable.
fn webhook_endpoints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WebhookEndpoint>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        List(Vec<WebhookEndpoint>),
        Json(String),
    }
    match Repr::deserialize(d)? {
        Repr::List(v) => Ok(v),
        Repr::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Repr::Json(s) => serde_json::from_str(&s)
            .map_err(|e| serde::de::Error::custom(format!("webhooks.endpoints: not a JSON array of endpoints: {e}"))),
    }
}

fn check_http_url(name: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.chars().any(char::is_whitespace) {
        return Err(ConfigError(format!("{name} = {url:?} must be an http:// or https:// URL")));
    }
    Ok(())
}

impl Webhooks {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for e in &self.endpoints {
            if confab_actors::model::validate_id("name", &e.name).is_err() || e.name.contains('/') {
                return Err(ConfigError(format!(
                    "webhooks.endpoints: name {:?} must be 1 to 64 characters of [A-Za-z0-9_.@:-]",
                    e.name
                )));
            }
            if !names.insert(e.name.as_str()) {
                return Err(ConfigError(format!("webhooks.endpoints: name {:?} appears twice", e.name)));
            }
            check_http_url(&format!("webhooks.endpoints[{}].url", e.name), &e.url)?;
            if e.key_id.is_empty() || e.secret.len() < 16 {
                return Err(ConfigError(format!(
                    "webhooks.endpoints[{}]: key_id must be set and secret at least 16 bytes",
                    e.name
                )));
            }
            let kinds = confab_actors::outbox::EVENT_KINDS;
            if let Some(k) = e.events.iter().find(|k| !kinds.contains(&k.as_str())) {
                return Err(ConfigError(format!(
                    "webhooks.endpoints[{}]: unknown event {k:?} (known: {})",
                    e.name,
                    kinds.join(", ")
                )));
            }
        }
        range("webhooks.max_attempts", self.max_attempts, 1, 1000)?;
        range("webhooks.backoff_initial_ms", self.backoff_initial_ms, 10, 3_600_000)?;
        range("webhooks.backoff_max_ms", self.backoff_max_ms, self.backoff_initial_ms, 86_400_000)?;
        range("webhooks.timeout_ms", self.timeout_ms, 100, 600_000)?;
        range("webhooks.max_in_flight", self.max_in_flight, 1, 1024)?;
        range("webhooks.poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        range("webhooks.lease_ttl_ms", self.lease_ttl_ms, 1000, 600_000)?;
        // At least one second, at most ten years (fractions of an hour are allowed: 0.5 = 30 min).
        if !(self.retention_hours.is_finite() && (1.0 / 3600.0..=87_600.0).contains(&self.retention_hours)) {
            return Err(ConfigError(format!(
                "webhooks.retention_hours = {} must be between 0.0003 (one second) and 87600 (ten years)",
                self.retention_hours
            )));
        }
        range("webhooks.trim_interval_ms", self.trim_interval_ms, 100, 86_400_000)?;
        let b = &self.before_send;
        if !b.url.is_empty() {
            check_http_url("webhooks.before_send.url", &b.url)?;
            range("webhooks.before_send.timeout_ms", b.timeout_ms, 10, 60_000)?;
            if b.key_id.is_empty() || b.secret.len() < 16 {
                return Err(ConfigError(
                    "webhooks.before_send: key_id must be set and secret at least 16 bytes".into(),
                ));
            }
        }
        Ok(())
    }
}

/// `[api]`: the signed HTTP integration API (`/api/v1`, docs/http-api.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// The credentials of backends. Empty: every API request is answered 401.
    #[serde(deserialize_with = "api_keys")]
    pub keys: Vec<ApiKey>,
    /// The account that sends system messages to a single user (`from: null, to: USER`).
    pub system_user: String,
    /// Largest request body accepted, in bytes (`body_too_large` beyond).
    pub max_body_bytes: usize,
    /// Most `(key, nonce)` pairs remembered for replay protection on this node.
    pub nonce_cache_size: usize,
}

/// One API credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The API scopes a key may hold. `admin` grants every other one.
pub const API_SCOPES: &[&str] = &["users", "messages", "conversations", "groups", "webhooks", "admin"];

/// `api.keys` is a list of tables in a file, or a JSON array in one environment variable
/// (`CONFAB__API__KEYS='[{"id":"…","secret":"…","scopes":["admin"]}]'`).
fn api_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ApiKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        List(Vec<ApiKey>),
        Json(String),
    }
    match Repr::deserialize(d)? {
        Repr::List(keys) => Ok(keys),
        Repr::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Repr::Json(s) => serde_json::from_str(&s)
            .map_err(|e| serde::de::Error::custom(format!("api.keys: not a JSON array of keys: {e}"))),
    }
}

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
    /// Proxies (addresses or networks) whose `X-Forwarded-For` names the client.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// Longest time `/readyz` waits for the store's answer.
    pub ready_timeout_ms: u64,
}

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
    pub connections_per_ip_per_sec: u32,
    pub connections_per_ip_burst: u32,
    pub max_connections_per_ip: usize,
}

/// A list given as a TOML array, or (from the environment) as one comma-separated string.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Items(Vec<String>),
        Text(String),
    }
    Ok(match List::deserialize(d)? {
        List::Items(v) => v,
        List::Text(t) => t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub heartbeat_interval_secs: u64,
    pub client_timeout_secs: u64,
    pub outbound_queue: usize,
    pub max_inflight_requests: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub max_text_chars: usize,
    pub recall_window_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub max_members: usize,
    pub fanout_chunk: usize,
    pub idle_timeout_secs: u64,
    pub arbiters: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub backend: String,
    pub path: PathBuf,
    pub mongodb: MongoDb,
}

/// `[storage.mongodb]`: used when `storage.backend = "mongodb"` (and by `confab migrate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoDb {
    pub uri: String,
    pub database: String,
    pub connect_timeout_ms: u64,
    pub server_selection_timeout_ms: u64,
    pub op_timeout_ms: u64,
}

/// `[cluster]`: several nodes sharing one MongoDB, bridged by Redis (src/cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub enabled: bool,
    /// This node's id; empty in the file means generated at load (see [`Cluster::generate_node_id`]).
    pub node_id: String,
    pub redis_url: String,
    pub redis_pool_size: u32,
    /// Longest wait for one Redis call (connecting, pool checkout and reply), in milliseconds.
    pub redis_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub node_ttl_ms: u64,
}

impl Cluster {
    /// `hostname-pid-random`, reduced to the characters a node id may hold.
    pub fn generate_node_id() -> String {
        use std::hash::{BuildHasher as _, Hasher as _};
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_else(|| "node".into());
        let host: String = host.trim().chars().filter(|c| is_node_id_char(*c)).take(32).collect();
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        let host = if host.is_empty() { "node".to_owned() } else { host };
        format!("{host}-{}-{:06x}", std::process::id(), h.finish() & 0xff_ffff)
    }
}

/// Node ids are used in Redis keys, channel names and presence fields.
pub fn is_node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn range<T: PartialOrd + std::fmt::Display>(name: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError(format!("{name} = {v} is out of range ({lo} to {hi})")));
    }
    Ok(())
}

impl Config {
    /// Loads defaults < `file` < environment (`CONFAB__…`), then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut b =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("--config {}: no such file", f.display())));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        let env: std::collections::HashMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("CONFAB__")).collect();
        b = b.add_source(
            config::Environment::with_prefix("CONFAB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = b.build().map_err(|e| ConfigError(e.to_string()))?;
        let mut cfg: Config = raw.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        if cfg.cluster.node_id.is_empty() {
            cfg.cluster.node_id = Cluster::generate_node_id();
        }
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
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
        crate::http::conn::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|e| ConfigError(format!("server.trusted_proxies: {e}")))?;
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
        range("groups.max_members", self.groups.max_members, 2, 1_000_000)?;
        range("groups.fanout_chunk", self.groups.fanout_chunk, 1, 100_000)?;
        range("groups.idle_timeout_secs", self.groups.idle_timeout_secs, 1, 86400)?;
        range("groups.arbiters", self.groups.arbiters, 0, 256)?;
        match self.storage.backend.as_str() {
            "embedded" => {
                if self.storage.path.as_os_str().is_empty() {
                    return Err(ConfigError("storage.path must not be empty".into()));
                }
            }
            "mongodb" => {
                let uri = &self.storage.mongodb.uri;
                if !uri.starts_with("mongodb://") {
                    return Err(ConfigError(format!(
                        "storage.mongodb.uri = {uri:?} must start with mongodb:// (set it when storage.backend = \"mongodb\")"
                    )));
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "storage.backend = {other:?} is not supported (use \"embedded\" or \"mongodb\")"
                )));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for k in &self.api.keys {
            if confab_actors::model::validate_id("id", &k.id).is_err() {
                return Err(ConfigError(format!(
                    "api.keys: id {:?} must be 1 to 64 characters of [A-Za-z0-9_.@:-]",
                    k.id
                )));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(ConfigError(format!("api.keys: id {:?} appears twice", k.id)));
            }
            if k.secret.len() < 16 {
                return Err(ConfigError(format!("api.keys: the secret of key {:?} must be at least 16 bytes", k.id)));
            }
            if let Some(s) = k.scopes.iter().find(|s| !API_SCOPES.contains(&s.as_str())) {
                return Err(ConfigError(format!(
                    "api.keys: key {:?} has unknown scope {s:?} (known: {})",
                    k.id,
                    API_SCOPES.join(", ")
                )));
            }
        }
        if confab_actors::model::validate_id("user", &self.api.system_user).is_err() {
            return Err(ConfigError(format!("api.system_user = {:?} is not a valid user id", self.api.system_user)));
        }
        range("api.max_body_bytes", self.api.max_body_bytes, 1024, 64 << 20)?;
        range("api.nonce_cache_size", self.api.nonce_cache_size, 100, 10_000_000)?;
        self.webhooks.validate()?;
        let db = &self.storage.mongodb.database;
        if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
            return Err(ConfigError(format!("storage.mongodb.database = {db:?} is not a valid MongoDB database name")));
        }
        range("storage.mongodb.connect_timeout_ms", self.storage.mongodb.connect_timeout_ms, 100, 600_000)?;
        range(
            "storage.mongodb.server_selection_timeout_ms",
            self.storage.mongodb.server_selection_timeout_ms,
            100,
            600_000,
        )?;
        range("storage.mongodb.op_timeout_ms", self.storage.mongodb.op_timeout_ms, 100, 600_000)?;
        self.validate_cluster()?;
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let id = &c.node_id;
        if !id.is_empty() && (id.len() > 64 || !id.chars().all(is_node_id_char)) {
            return Err(ConfigError(format!(
                "cluster.node_id = {id:?} must be 1 to 64 characters of [A-Za-z0-9_.-] (or empty to generate one)"
            )));
        }
        range("cluster.redis_pool_size", c.redis_pool_size, 1, 1024)?;
        range("cluster.redis_timeout_ms", c.redis_timeout_ms, 10, 60_000)?;
        range("cluster.heartbeat_ms", c.heartbeat_ms, 50, 60_000)?;
        range("cluster.node_ttl_ms", c.node_ttl_ms, 100, 600_000)?;
        if c.node_ttl_ms < 2 * c.heartbeat_ms {
            return Err(ConfigError(format!(
                "cluster.node_ttl_ms = {} must be at least twice cluster.heartbeat_ms = {}",
                c.node_ttl_ms, c.heartbeat_ms
            )));
        }
        if !c.enabled {
            return Ok(());
        }
        if !c.redis_url.starts_with("redis://") {
            return Err(ConfigError(format!(
                "cluster.redis_url = {:?} must start with redis:// (set it when cluster.enabled = true; TLS is not supported)",
                c.redis_url
            )));
        }
        if self.storage.backend != "mongodb" {
            return Err(ConfigError(format!(
                "cluster.enabled = true needs storage.backend = \"mongodb\" (the {:?} store belongs to one node)",
                self.storage.backend
            )));
        }
        Ok(())
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError(format!("server.bind = {:?} is not an address like 127.0.0.1:8080", self.server.bind))
        })
    }

    pub fn limits(&self) -> EngineLimits {
        EngineLimits {
            max_text_chars: self.chat.max_text_chars,
            recall_window: Duration::from_secs(self.chat.recall_window_secs),
            max_group_members: self.groups.max_members,
            fanout_chunk: self.groups.fanout_chunk,
            idle_timeout: Duration::from_secs(self.groups.idle_timeout_secs),
            conversation_mailbox: 1024,
            rates: self.rates(),
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
            connections_per_ip: Rate::per_sec(l.connections_per_ip_per_sec, l.connections_per_ip_burst),
            max_connections_per_ip: l.max_connections_per_ip,
        }
    }

    /// The token rules of `[auth]`.
    pub fn tokens(&self) -> crate::auth::Tokens {
        crate::auth::Tokens::new(&self.auth.secret, self.auth.max_token_ttl_secs, self.auth.max_clock_skew_secs)
    }

    /// The socket options of `[server]`.
    pub fn socket_options(&self) -> crate::http::conn::SocketOptions {
        crate::http::conn::SocketOptions {
            send_buffer: (self.server.send_buffer_bytes > 0).then_some(self.server.send_buffer_bytes),
            write_timeout: (self.server.write_timeout_secs > 0)
                .then(|| Duration::from_secs(self.server.write_timeout_secs)),
        }
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(self.session.heartbeat_interval_secs),
            client_timeout: Duration::from_secs(self.session.client_timeout_secs),
            outbound_queue: self.session.outbound_queue,
            max_inflight: self.session.max_inflight_requests,
            max_frame_bytes: self.server.max_frame_bytes,
            rates: self.rates(),
            tokens: Some(std::sync::Arc::new(self.tokens())),
        }
    }

    pub fn uses_default_secret(&self) -> bool {
        DEFAULT_TOML.contains(&format!("secret = \"{}\"", self.auth.secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert!(c.uses_default_secret());
    }

    #[test]
    fn webhook_retention() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert_eq!(c.webhooks.retention_hours, 168.0);
        assert_eq!(c.webhooks.trim_interval_ms, 300_000);
        let c = Config::load_with_env(None, env(&[("CONFAB__WEBHOOKS__RETENTION_HOURS", "0.5")])).expect("valid");
        assert_eq!(c.webhooks.retention_hours, 0.5);
        for bad in ["0", "-1", "0.0001", "100000", "NaN"] {
            let e = Config::load_with_env(None, env(&[("CONFAB__WEBHOOKS__RETENTION_HOURS", bad)])).unwrap_err();
            assert!(e.to_string().contains("webhooks.retention_hours"), "{bad}: {e}");
        }
        let e = Config::load_with_env(None, env(&[("CONFAB__WEBHOOKS__TRIM_INTERVAL_MS", "0")])).unwrap_err();
        assert!(e.to_string().contains("webhooks.trim_interval_ms"), "{e}");
    }

    #[test]
    fn env_overrides() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("CONFAB__SERVER__BIND", "127.0.0.1:9000"),
                ("CONFAB__STORAGE__PATH", "/tmp/x"),
                ("CONFAB__SESSION__OUTBOUND_QUEUE", "64"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.bind, "127.0.0.1:9000");
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
        assert_eq!(c.session.outbound_queue, 64);
    }

    #[test]
    fn mongodb_backend() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("CONFAB__STORAGE__BACKEND", "mongodb"),
                ("CONFAB__STORAGE__MONGODB__URI", "mongodb://db1:27017,db2:27017/?replicaSet=rs0"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.storage.backend, "mongodb");
        assert_eq!(c.storage.mongodb.database, "confab");
        assert_eq!(c.storage.mongodb.uri, "mongodb://db1:27017,db2:27017/?replicaSet=rs0");
        let e = Config::load_with_env(
            None,
            env(&[("CONFAB__STORAGE__BACKEND", "mongodb"), ("CONFAB__STORAGE__MONGODB__URI", "")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("storage.mongodb.uri"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__STORAGE__MONGODB__DATABASE", "a.b")])).unwrap_err();
        assert!(e.to_string().contains("storage.mongodb.database"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__STORAGE__BACKEND", "sqlite")])).unwrap_err();
        assert!(e.to_string().contains("storage.backend"), "{e}");
    }

    #[test]
    fn api_keys_from_env_or_file() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert!(c.api.keys.is_empty());
        assert_eq!(c.api.system_user, "system");
        let c = Config::load_with_env(
            None,
            env(&[(
                "CONFAB__API__KEYS",
                r#"[{"id":"php","secret":"0123456789abcdef0123","scopes":["messages","groups"]}]"#,
            )]),
        )
        .expect("valid");
        assert_eq!(c.api.keys.len(), 1);
        assert_eq!((c.api.keys[0].id.as_str(), c.api.keys[0].scopes.len()), ("php", 2));
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[api]\nkeys = [{ id = \"a\", secret = \"0123456789abcdef0123\", scopes = [\"admin\"] }, { id = \"b\", secret = \"0123456789abcdef0124\" }]\n").expect("write");
        let c = Config::load_with_env(Some(&f), env(&[])).expect("valid");
        assert_eq!(c.api.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let e =
            Config::load_with_env(None, env(&[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"short","scopes":[]}]"#)]))
                .unwrap_err();
        assert!(e.to_string().contains("api.keys"), "{e}");
        let e = Config::load_with_env(
            None,
            env(&[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"0123456789abcdef0123","scopes":["root"]}]"#)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown scope"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__API__KEYS", "not json")])).unwrap_err();
        assert!(e.to_string().contains("api.keys"), "{e}");
    }

    #[test]
    fn cluster_settings() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert!(!c.cluster.enabled);
        assert!(!c.cluster.node_id.is_empty(), "a node id is generated when none is set");
        assert!(c.cluster.node_id.chars().all(is_node_id_char), "{}", c.cluster.node_id);
        assert_eq!((c.cluster.heartbeat_ms, c.cluster.node_ttl_ms), (1000, 5000));
        let mongo = [
            ("CONFAB__STORAGE__BACKEND", "mongodb"),
            ("CONFAB__STORAGE__MONGODB__URI", "mongodb://db:27017/?replicaSet=rs0"),
            ("CONFAB__CLUSTER__ENABLED", "true"),
            ("CONFAB__CLUSTER__NODE_ID", "node-1"),
            ("CONFAB__CLUSTER__REDIS_URL", "redis://redis:6379"),
            ("CONFAB__CLUSTER__REDIS_POOL_SIZE", "8"),
        ];
        let c = Config::load_with_env(None, env(&mongo)).expect("valid");
        assert_eq!((c.cluster.node_id.as_str(), c.cluster.redis_pool_size), ("node-1", 8));
        let e = Config::load_with_env(None, env(&mongo[2..])).unwrap_err();
        assert!(e.to_string().contains("storage.backend = \"mongodb\""), "{e}");
        let mut bad = mongo.to_vec();
        bad.push(("CONFAB__CLUSTER__REDIS_URL", ""));
        let e = Config::load_with_env(None, env(&bad)).unwrap_err();
        assert!(e.to_string().contains("cluster.redis_url"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__CLUSTER__NODE_ID", "a/b")])).unwrap_err();
        assert!(e.to_string().contains("cluster.node_id"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__CLUSTER__NODE_TTL_MS", "1500")])).unwrap_err();
        assert!(e.to_string().contains("cluster.node_ttl_ms"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__CLUSTER__REDIS_POOL_SIZE", "0")])).unwrap_err();
        assert!(e.to_string().contains("cluster.redis_pool_size"), "{e}");
    }

    #[test]
    fn invalid_settings_are_named() {
        let e = Config::load_with_env(None, env(&[("CONFAB__SERVER__BIND", "nope")])).unwrap_err();
        assert!(e.to_string().contains("server.bind"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__AUTH__SECRET", "short")])).unwrap_err();
        assert!(e.to_string().contains("auth.secret"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__SERVER__MAX_FRAME_BYTES", "abc")])).unwrap_err();
        assert!(e.to_string().contains("max_frame_bytes"), "{e}");
    }
}
