//! # confab: the server
//!
//! The transports and adapters around `confab-actors` (the domain and actors):
//! - [`config`]: the typed configuration, layered defaults < file < `CONFAB__…` environment.
//! - [`auth`]: HS256 access tokens.
//! - [`cluster`]: the cluster layer in Redis: presence, the node bus, heartbeats.
//! - [`store`]: storage adapters implementing `confab_actors::store::Store`: embedded (redb) and MongoDB.
//! - [`http`]: the transports, thin shells around the engine: health, readiness and metrics,
//!   the WebSocket endpoint and its sessions (`http::ws`), the signed integration API under
//!   `/api/v1` (`http::api`), and what is done with a TCP connection first (`http::conn`).
//! - [`webhooks`]: delivering the outbox to backends, and the `before_send` check.
//! - [`server`]: assembling and running a node; [`runtime`]: a tokio runtime of a component's own.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod files;
pub mod http;
pub mod push;
pub mod runtime;
pub mod server;
pub mod store;
pub mod webhooks;
