//! # confab: the server
//!
//! The transports and adapters around `confab-actors` (the domain and actors):
//! - [`config`]: the typed configuration, layered defaults < file < `CONFAB__…` environment.
//! - [`auth`]: HS256 access tokens.
//! - [`cluster`]: the cluster layer in Redis: presence, the node bus, heartbeats.
//! - [`store`]: storage adapters implementing `confab_actors::store::Store`: embedded (redb) and MongoDB.
//! - [`api`]: the signed HTTP integration API under `/api/v1`.
//! - [`http`]: HTTP routes: `/healthz`, `/readyz`, `/metrics`, and the `/ws` upgrade.
//! - [`conn`]: socket options, the client's address, per-address connection limits.
//! - [`frame_guard`]: refuses oversized WebSocket frames from their header.
//! - [`webhooks`]: delivering the outbox to backends, and the `before_send` check.
//! - [`server`]: assembling and running a node.

pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod frame_guard;
pub mod http;
pub mod server;
pub mod store;
pub mod webhooks;
