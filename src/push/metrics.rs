//! The pusher's metrics, rendered by `/metrics` after the node's own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use confab_actors::metrics::{Histogram, LATENCY_BOUNDS};

/// Bucket bounds (seconds) from a message to its notification's acceptance: they include
/// `push.delay_ms` and any retries.
const DELIVERY_BOUNDS: &[f64] = &[0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];

/// Counters by label, and two histograms.
pub struct PushMetrics {
    planned: AtomicU64,
    gave_up: AtomicU64,
    profile_reads: AtomicU64,
    sent: Mutex<BTreeMap<String, u64>>,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    failed: Mutex<BTreeMap<&'static str, u64>>,
    latency: Histogram,
    call: Histogram,
}

impl Default for PushMetrics {
    fn default() -> Self {
        PushMetrics {
            planned: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            profile_reads: AtomicU64::new(0),
            sent: Mutex::default(),
            skipped: Mutex::default(),
            failed: Mutex::default(),
            latency: Histogram::new(DELIVERY_BOUNDS),
            call: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl PushMetrics {
    pub fn planned(&self, n: u64) {
        self.planned.fetch_add(n, Relaxed);
    }

    pub fn gave_up(&self) {
        self.gave_up.fetch_add(1, Relaxed);
    }

    /// A sender's profile or a group's name read from the store (the caches missed).
    pub fn profile_read(&self) {
        self.profile_reads.fetch_add(1, Relaxed);
    }

    pub fn sent(&self, provider: &str) {
        let mut m = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(provider.to_owned()).or_default() += 1;
    }

    pub fn skipped(&self, reason: &'static str) {
        self.skipped_n(reason, 1);
    }

    pub fn skipped_n(&self, reason: &'static str, n: u64) {
        *self.skipped.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += n;
    }

    pub fn failed(&self, reason: &'static str) {
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    /// From the (first) message to the provider's acceptance.
    pub fn latency(&self, d: Duration) {
        self.latency.observe(d);
    }

    /// One provider call.
    pub fn call(&self, d: Duration) {
        self.call.observe(d);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP confab_push_queued_total Notifications queued for devices not connected (one per device and message; a burst shares one job).\n# TYPE confab_push_queued_total counter\nconfab_push_queued_total {}",
            self.planned.load(Relaxed)
        );
        let labelled = |out: &mut String, name: &str, help: &str, label: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in rows {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        };
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        labelled(
            &mut out,
            "confab_push_sent_total",
            "Notifications a provider accepted, by provider.",
            "provider",
            sent,
        );
        let skipped =
            self.skipped.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        labelled(
            &mut out,
            "confab_push_skipped_total",
            "Notifications not sent, by reason (online, read, muted, not_member, recalled, no_token, revoked, unconfigured, stale).",
            "reason",
            skipped,
        );
        let failed =
            self.failed.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        labelled(
            &mut out,
            "confab_push_failed_total",
            "Failed provider attempts, by reason (invalid_token, timeout, connect, throttled, auth, http_4xx, http_5xx, store).",
            "reason",
            failed,
        );
        let _ = writeln!(
            out,
            "# HELP confab_push_given_up_total Notifications dropped after push.max_attempts failed attempts.\n# TYPE confab_push_given_up_total counter\nconfab_push_given_up_total {}",
            self.gave_up.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP confab_push_profile_reads_total Senders' profiles and groups' names read from the store for notifications (cache misses).\n# TYPE confab_push_profile_reads_total counter\nconfab_push_profile_reads_total {}",
            self.profile_reads.load(Relaxed)
        );
        self.latency.render(
            &mut out,
            "confab_push_delivery_seconds",
            "From a message to its notification's acceptance by the provider (includes push.delay_ms and retries).",
        );
        self.call.render(&mut out, "confab_push_provider_call_seconds", "One call to a push provider.");
        out
    }
}
