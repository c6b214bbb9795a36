//! The cluster layer's counters and their Prometheus rendering.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Counters of the cluster layer, rendered on `/metrics` by [`ClusterMetrics::render`].
#[derive(Default)]
pub struct ClusterMetrics {
    /// Whether the last Redis call succeeded.
    pub redis_up: AtomicBool,
    /// Failed Redis calls (timeouts, refused connections, error replies).
    pub redis_errors: AtomicU64,
    /// PUBLISH commands sent: one per destination node per batch, one per broadcast.
    pub publishes: AtomicU64,
    /// Batches received for this node's users (including any dropped because the queue was full).
    pub batches_received: AtomicU64,
    /// Broadcast events received from other nodes.
    pub broadcasts_received: AtomicU64,
    /// Received messages dropped: malformed, of another version, or the incoming queue was full.
    pub incoming_dropped: AtomicU64,
    /// `deliver`/`announce` work dropped: the queue was full or Redis was unreachable.
    pub outgoing_dropped: AtomicU64,
    /// Presence writes sent (one per register or unregister).
    pub presence_writes: AtomicU64,
    /// Times this node re-asserted its whole presence table (after an outage or a Redis restart).
    pub presence_reasserts: AtomicU64,
    /// Presence entries of dead nodes deleted.
    pub presence_cleaned: AtomicU64,
    /// Users this node announced online (their first connection in the cluster).
    pub users_online: AtomicU64,
    /// Users this node announced offline (their last connection in the cluster left or died).
    pub users_offline: AtomicU64,
    /// `locate` calls that reached Redis.
    pub locates: AtomicU64,
    /// Successful (re)subscriptions to the node bus.
    pub subscriptions: AtomicU64,
}

impl ClusterMetrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "confab_cluster_redis_up",
            "1 when the last Redis call succeeded.",
            "gauge",
            self.redis_up.load(Relaxed).into(),
        );
        let counters: [(&str, &str, &AtomicU64); 13] = [
            ("confab_cluster_redis_errors_total", "Failed Redis calls.", &self.redis_errors),
            ("confab_cluster_publishes_total", "PUBLISH commands sent to the node bus.", &self.publishes),
            ("confab_cluster_batches_received_total", "Batches received from other nodes.", &self.batches_received),
            ("confab_cluster_broadcasts_received_total", "Broadcast events received.", &self.broadcasts_received),
            ("confab_cluster_incoming_dropped_total", "Node bus messages dropped.", &self.incoming_dropped),
            ("confab_cluster_outgoing_dropped_total", "Deliveries and broadcasts dropped.", &self.outgoing_dropped),
            ("confab_cluster_presence_writes_total", "Presence writes sent to Redis.", &self.presence_writes),
            ("confab_cluster_presence_reasserts_total", "Full presence re-assertions.", &self.presence_reasserts),
            (
                "confab_cluster_presence_cleaned_total",
                "Presence entries of dead nodes deleted.",
                &self.presence_cleaned,
            ),
            ("confab_cluster_users_online_total", "Users this node announced online.", &self.users_online),
            ("confab_cluster_users_offline_total", "Users this node announced offline.", &self.users_offline),
            ("confab_cluster_locates_total", "Presence lookups sent to Redis.", &self.locates),
            ("confab_cluster_subscriptions_total", "Subscriptions to the node bus.", &self.subscriptions),
        ];
        for (name, help, v) in counters {
            line(name, help, "counter", v.load(Relaxed));
        }
        out
    }
}
