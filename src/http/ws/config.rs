//! What a session is given: its settings, how its token checked out, and its transport halves.

use std::sync::Arc;
use std::time::Duration;

use actix_ws::AggregatedMessageStream;

use confab_actors::limits::RateConfig;

use super::outlet::ControlBody;

/// Timings and limits of a session (the `[session]`, `[server]` and `[limits]` configuration).
#[derive(Clone)]
pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// Outgoing frames a session may have queued before it is dropped as a slow consumer.
    pub outbound_queue: usize,
    /// Requests a connection may have in flight at once.
    pub max_inflight: usize,
    /// Largest text frame accepted (the transport closes the connection, 1009, beyond it).
    pub max_frame_bytes: usize,
    /// Rate limits per connection.
    pub rates: RateConfig,
    /// Checks the tokens clients present on an open connection (`refresh`).
    pub tokens: Option<Arc<dyn TokenVerifier>>,
}

impl SessionConfig {
    /// What each WebSocket session needs, from `[session]`, `[server]`, `[limits]` and `[auth]`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(cfg.session.heartbeat_interval_secs),
            client_timeout: Duration::from_secs(cfg.session.client_timeout_secs),
            outbound_queue: cfg.session.outbound_queue,
            max_inflight: cfg.session.max_inflight_requests,
            max_frame_bytes: cfg.server.max_frame_bytes,
            rates: cfg.rates(),
            tokens: Some(Arc::new(crate::auth::Tokens::from_config(cfg))),
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("client_timeout", &self.client_timeout)
            .field("outbound_queue", &self.outbound_queue)
            .field("max_inflight", &self.max_inflight)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

pub use crate::auth::{TokenInfo, TokenVerifier};

/// How the connection's token checked out when it connected.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    /// When the token was issued (unix ms).
    pub issued_ms: u64,
    /// When it expires (unix ms): the connection is closed then (1008, `token_expired`) unless
    /// the client presented a fresh token with `refresh`.
    pub expires_ms: u64,
    /// [`Registry::access_epoch`](crate::registry::Registry::access_epoch) of the user, read
    /// before the access check: a revocation applied since is caught once the session is
    /// registered.
    pub epoch: u64,
    /// The access check could be made. When the store could not be reached the connection is
    /// let in (it can do little without a store) and checked again every [`RECHECK_EVERY`] until
    /// a check succeeds.
    pub verified: bool,
}

/// What the transport hands a session besides its actix-ws halves.
pub struct Transport {
    /// The connection's actix-ws session (control frames).
    pub ws: actix_ws::Session,
    /// Incoming frames.
    pub stream: AggregatedMessageStream,
    /// actix-ws's response body, carried by the [`Outlet`].
    pub control: ControlBody,
    /// Set by the transport when it refused a frame for its size: the session then closes with
    /// 1009 rather than 1002.
    pub frame_too_large: Arc<std::sync::atomic::AtomicBool>,
    /// Held as long as the session runs, dropped when it stops (e.g. a per-address count).
    pub hold: Option<Box<dyn std::any::Any>>,
}

/// How often a session whose access could not be checked (store unavailable) tries again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// How long before its token expires a session sends `token_expiring` (or at half its
/// remaining life, when that is shorter).
pub const EXPIRY_NOTICE: Duration = Duration::from_secs(60);
