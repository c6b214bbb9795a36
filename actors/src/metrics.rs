//! Counters, gauges and histograms an operator watches, rendered as Prometheus text by `/metrics`.
//!
//! Plain atomics: recording is a relaxed `fetch_add`, cheap enough for per-delivery paths.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A fixed-bucket histogram of durations in seconds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Bucket bounds (seconds) for latencies from 50 µs to 5 s.
pub const LATENCY_BOUNDS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric of a node. One instance, shared by `Arc`.
pub struct Metrics {
    /// Open WebSocket sessions.
    pub connections: AtomicI64,
    /// Sessions ever accepted.
    pub connections_total: AtomicU64,
    /// Sessions closed because their outgoing queue was full (slow consumers).
    pub slow_consumers_dropped: AtomicU64,
    /// TCP connections open (WebSocket or not, including those closing whose data is still
    /// being written).
    pub sockets_open: AtomicI64,
    /// TCP connections ever accepted.
    pub sockets_total: AtomicU64,
    /// Requests and connections refused by a rate limit (`rate_limited`).
    pub rate_limited: AtomicU64,
    /// Messages accepted and stored (duplicates not counted).
    pub messages_in: AtomicU64,
    /// Re-sends answered from the store without storing anything.
    pub messages_duplicate: AtomicU64,
    /// Gaps in a conversation's `seq` (messages stored by other nodes) read back from the store.
    pub gap_fills: AtomicU64,
    /// Messages from other nodes that arrived after they were already fanned out here.
    pub peer_messages_stale: AtomicU64,
    /// Frames queued to sessions: message events, acks, receipts and other events.
    pub frames_out: AtomicU64,
    /// Message events queued to sessions (one per device per message).
    pub deliveries_out: AtomicU64,
    /// Requests answered with an error.
    pub request_errors: AtomicU64,
    /// Conversation actors alive.
    pub conversation_actors: AtomicI64,
    /// Fan-out jobs waiting in conversation actors (messages not yet fully delivered).
    pub fanout_queue_depth: AtomicI64,
    /// Store operations waiting for the writer.
    pub store_queue_depth: AtomicI64,
    /// Time from a message being stored to its last delivery being queued.
    pub fanout_seconds: Histogram,
    /// Time of a store write (from enqueue to durable commit).
    pub store_write_seconds: Histogram,
    /// Write operations committed (divide by `store_commits` for the group-commit batch size).
    pub store_batch_ops: AtomicU64,
    /// Number of store commits.
    pub store_commits: AtomicU64,
    /// Embedded store: 1 while healthy, 0 while it recovers from an I/O error (database closed,
    /// or re-opened and on probation); -1 (not rendered) on other backends.
    pub store_embedded_healthy: AtomicI64,
    /// Embedded store: times it went from healthy to down after an I/O error.
    pub store_embedded_outages: AtomicU64,
    /// Embedded store: times it re-opened its database after an I/O error.
    pub store_embedded_reopens: AtomicU64,
    /// Database commands sent by a networked store (MongoDB command monitoring), by kind: writes
    /// (insert, update, delete, findAndModify, commitTransaction, abortTransaction), reads (find,
    /// aggregate, getMore, count, distinct) and other (ping, createIndexes, ...).
    pub db_commands_write: AtomicU64,
    pub db_commands_read: AtomicU64,
    pub db_commands_other: AtomicU64,
    /// BSON bytes of the commands sent and of the replies received (MongoDB command monitoring).
    pub db_bytes_sent: AtomicU64,
    pub db_bytes_received: AtomicU64,
    /// Database commands that failed (error reply or no reply).
    pub db_command_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            slow_consumers_dropped: AtomicU64::new(0),
            sockets_open: AtomicI64::new(0),
            sockets_total: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            messages_duplicate: AtomicU64::new(0),
            gap_fills: AtomicU64::new(0),
            peer_messages_stale: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            deliveries_out: AtomicU64::new(0),
            request_errors: AtomicU64::new(0),
            conversation_actors: AtomicI64::new(0),
            fanout_queue_depth: AtomicI64::new(0),
            store_queue_depth: AtomicI64::new(0),
            fanout_seconds: Histogram::new(LATENCY_BOUNDS),
            store_write_seconds: Histogram::new(LATENCY_BOUNDS),
            store_batch_ops: AtomicU64::new(0),
            store_commits: AtomicU64::new(0),
            store_embedded_healthy: AtomicI64::new(-1),
            store_embedded_outages: AtomicU64::new(0),
            store_embedded_reopens: AtomicU64::new(0),
            db_commands_write: AtomicU64::new(0),
            db_commands_read: AtomicU64::new(0),
            db_commands_other: AtomicU64::new(0),
            db_bytes_sent: AtomicU64::new(0),
            db_bytes_received: AtomicU64::new(0),
            db_command_failures: AtomicU64::new(0),
        }
    }
}

/// A metric read as one sample: an `AtomicI64` is a gauge (it goes up and down), an `AtomicU64`
/// a counter (it only goes up).
trait Sample {
    /// The Prometheus type.
    fn kind(&self) -> &'static str;
    fn value(&self) -> String;
}

impl Sample for AtomicI64 {
    fn kind(&self) -> &'static str {
        "gauge"
    }
    fn value(&self) -> String {
        self.load(Relaxed).to_string()
    }
}

impl Sample for AtomicU64 {
    fn kind(&self) -> &'static str {
        "counter"
    }
    fn value(&self) -> String {
        self.load(Relaxed).to_string()
    }
}

/// Writes a metric's `# HELP`, `# TYPE` and sample.
fn sample(out: &mut String, name: &str, help: &str, m: &dyn Sample) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}\n{name} {}", m.kind(), m.value());
}

impl Metrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        sample(&mut out, "confab_connections", "Open WebSocket sessions.", &self.connections);
        sample(&mut out, "confab_connections_total", "WebSocket sessions accepted.", &self.connections_total);
        sample(
            &mut out,
            "confab_slow_consumers_dropped_total",
            "Sessions closed because their outgoing queue was full.",
            &self.slow_consumers_dropped,
        );
        sample(
            &mut out,
            "confab_sockets_open",
            "TCP connections open (WebSocket or not), including those still writing after a close.",
            &self.sockets_open,
        );
        sample(&mut out, "confab_sockets_total", "TCP connections accepted.", &self.sockets_total);
        sample(
            &mut out,
            "confab_rate_limited_total",
            "Requests and connections refused by a rate limit.",
            &self.rate_limited,
        );
        sample(&mut out, "confab_messages_in_total", "Messages stored.", &self.messages_in);
        sample(
            &mut out,
            "confab_messages_duplicate_total",
            "Re-sends answered without storing.",
            &self.messages_duplicate,
        );
        sample(
            &mut out,
            "confab_gap_fills_total",
            "Gaps in a conversation's seq (messages stored by other nodes) read back from the store.",
            &self.gap_fills,
        );
        sample(
            &mut out,
            "confab_peer_messages_stale_total",
            "Messages from other nodes that arrived after they were fanned out here.",
            &self.peer_messages_stale,
        );
        sample(&mut out, "confab_frames_out_total", "Frames queued to sessions.", &self.frames_out);
        sample(&mut out, "confab_deliveries_out_total", "Message events queued to sessions.", &self.deliveries_out);
        sample(&mut out, "confab_request_errors_total", "Requests answered with an error.", &self.request_errors);
        sample(&mut out, "confab_conversation_actors", "Conversation actors alive.", &self.conversation_actors);
        sample(
            &mut out,
            "confab_fanout_queue_depth",
            "Messages waiting for fan-out in conversation actors.",
            &self.fanout_queue_depth,
        );
        sample(
            &mut out,
            "confab_store_queue_depth",
            "Store operations waiting for the writer.",
            &self.store_queue_depth,
        );
        sample(
            &mut out,
            "confab_store_commits_total",
            "Store commits (each may hold many operations).",
            &self.store_commits,
        );
        sample(
            &mut out,
            "confab_store_ops_committed_total",
            "Store write operations committed.",
            &self.store_batch_ops,
        );
        if self.store_embedded_healthy.load(Relaxed) >= 0 {
            sample(
                &mut out,
                "confab_store_embedded_healthy",
                "1 while the embedded store is healthy, 0 while it recovers from an I/O error.",
                &self.store_embedded_healthy,
            );
            sample(
                &mut out,
                "confab_store_embedded_outages_total",
                "Times the embedded store went down after an I/O error.",
                &self.store_embedded_outages,
            );
            sample(
                &mut out,
                "confab_store_embedded_reopens_total",
                "Times the embedded store re-opened its database after an I/O error.",
                &self.store_embedded_reopens,
            );
        }
        let _ = writeln!(
            out,
            "# HELP confab_store_db_commands_total Database commands sent by the store (MongoDB command monitoring).\n# TYPE confab_store_db_commands_total counter"
        );
        for (kind, v) in
            [("write", &self.db_commands_write), ("read", &self.db_commands_read), ("other", &self.db_commands_other)]
        {
            let _ = writeln!(out, "confab_store_db_commands_total{{kind=\"{kind}\"}} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP confab_store_db_bytes_total BSON bytes of the store's database commands (sent) and their replies (received).\n# TYPE confab_store_db_bytes_total counter"
        );
        for (dir, v) in [("sent", &self.db_bytes_sent), ("received", &self.db_bytes_received)] {
            let _ = writeln!(out, "confab_store_db_bytes_total{{direction=\"{dir}\"}} {}", v.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP confab_store_db_command_failures_total Database commands that failed.\n# TYPE confab_store_db_command_failures_total counter\nconfab_store_db_command_failures_total {}",
            self.db_command_failures.load(Relaxed)
        );
        self.fanout_seconds.render(
            &mut out,
            "confab_fanout_seconds",
            "Time from a message being stored to its last delivery being queued.",
        );
        self.store_write_seconds.render(
            &mut out,
            "confab_store_write_seconds",
            "Store write latency from enqueue to durable commit.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_and_counters_render_with_their_types() {
        let m = Metrics::default();
        m.connections.store(-2, Relaxed);
        m.messages_in.store(7, Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE confab_connections gauge\nconfab_connections -2\n"), "{text}");
        assert!(text.contains("# TYPE confab_messages_in_total counter\nconfab_messages_in_total 7\n"), "{text}");
        assert!(!text.contains("confab_store_embedded"), "not an embedded store: {text}");
        m.store_embedded_healthy.store(0, Relaxed);
        assert!(m.render().contains("# TYPE confab_store_embedded_healthy gauge\nconfab_store_embedded_healthy 0\n"));
    }
}
