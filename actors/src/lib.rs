//! # confab-actors: the domain and the actors
//!
//! No HTTP, no database driver: transports (`confab::http`) call [`engine::Engine`]; storage
//! adapters (`confab::store`) implement [`store::Store`]; the cluster layer (`confab::cluster`)
//! implements [`cluster::Cluster`]. Modules use only modules listed before them here (a test,
//! `tests/integration/layers.rs`, keeps the graph free of circles):
//!
//! - [`model`], [`error`]: plain types (ids, bodies, messages, conversations, groups, users) and
//!   the one table of stable error codes.
//! - [`clock`], [`limits`], [`inflight`]: the clock, rate limits, a connection's request slots.
//! - [`rules`]: the chat rules as plain functions (group permissions, recall, limits).
//! - [`store`]: the storage contract and the decisions both adapters share (`store::plan`).
//! - [`outbox`], [`cluster`]: the webhook outbox contract; the seam to other nodes.
//! - [`proto`]: the WebSocket wire format.
//! - [`metrics`], [`registry`]: counters behind `/metrics`; the in-process bus of sessions.
//! - [`core`]: what every actor and operation shares.
//! - [`conversation`]: the conversation actor (ordering, fan-out, its directory).
//! - [`engine`]: the operations every transport calls.
//!
//! The `openapi` feature derives `utoipa::ToSchema` for the types the HTTP API returns.

pub mod clock;
pub mod cluster;
pub mod conversation;
pub mod core;
pub mod engine;
pub mod error;
pub mod inflight;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod proto;
pub mod push;
pub mod registry;
pub mod rules;
pub mod store;
