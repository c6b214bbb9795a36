//! confab's benchmark harness (issue 3): one load generator driving confab, a bare actix-ws relay
//! and socket.io (one node, and two nodes joined by Redis) with the same workloads in one run.
//!
//! - [`case`]: the scenarios (`fanout`, `pairs`, `idle`), closed and open loop, and their sizes.
//! - [`systems`]: starting and stopping each system as child processes on 127.0.0.1.
//! - [`wire`]: the three protocols, the 100-byte timestamped payload, confab tokens.
//! - [`client`]: opening WebSocket connections and the per-connection task.
//! - [`stats`]: what a run's connections share (clock, window, counters, closed-loop bookkeeping).
//! - [`hist`]: the latency histogram.
//! - [`run`]: executing one case against one system and measuring it.
//! - [`procfs`]: CPU, memory and machine load from `/proc`.
//! - [`report`]: ratios against the baselines, the targets, tables.
//! - [`suite`]: the whole benchmark, writing `target/bench/results.jsonl`.
//!
//! The binaries: `confab-bench` (the generator and orchestrator) and `confab-relay` (the
//! baseline relay). `scripts/bench` builds them and runs the suite.

pub mod case;
pub mod client;
pub mod hist;
pub mod procfs;
pub mod report;
pub mod run;
pub mod stats;
pub mod suite;
pub mod systems;
pub mod wire;
