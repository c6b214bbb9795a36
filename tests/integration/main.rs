//! confab's integration tests: one binary, one module per feature.
//! Servers run in-process on 127.0.0.1:0; clients are real WebSocket clients.
#![allow(clippy::unwrap_used)]

mod cluster;
mod cluster_nodes;
mod common;
mod disk_full;
mod files;
mod hardening;
mod http_api;
mod layers;
mod mongo_versions;
mod observability;
mod properties;
mod push;
mod push_receivers;
mod store;
mod store_mongo;
mod webhooks;
mod ws_chat;
mod ws_contacts;
mod ws_errors;
mod ws_groups;
mod ws_node;
mod ws_persistence;
