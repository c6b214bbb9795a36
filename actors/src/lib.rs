//! # confab-actors: the domain and the actors
//!
//! Layers point one way: `model` and `error` (plain types) ← `store` (the storage contract) ←
//! `registry`, `conversation`, `ops` (rules and actors). Transports (`confab::ws`, `confab::http`)
//! call into `ops`; storage adapters (`confab::store`) implement `store::Store`.
//!
//! - [`error`]: the error type and the one table of stable error codes.
//! - [`model`]: ids, message bodies and their validation, conversations, groups.
//! - [`store`]: the storage traits every backend implements.
//! - [`metrics`]: counters and histograms behind `/metrics`.

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
pub mod registry;
pub mod rules;
pub mod store;
