//! Versions without a cluster-wide counter: a hybrid logical clock per node, and a closed
//! watermark that sync reads never pass. `docs/storage.md` ("Versions") explains the scheme and
//! why it keeps the `since` cursors' guarantee; this is its code.
//!
//! - Each node hands out versions from its own clock: `max(last + 1, wall ms << 10)`, so they grow
//!   on every node, stay below 2^53 (exact in JavaScript) until the year 2248, and need no shared
//!   document.
//! - Each node has one document in `nodes`, `{_id, closed, until}`, written only by that node:
//!   `closed` promises that the node will never again commit a version at or below it. Every write
//!   transaction of the node sets it to the highest version the transaction used (in the same
//!   transaction, so a reader that sees the promise sees the writes). Every [`HEARTBEAT`] each
//!   node reads the others' and moves its clock past them; an idle node whose `closed` another
//!   passed publishes the highest (so it does not hold the watermark back), and renews its lease
//!   `until` every second.
//! - A sync read (`conversations`, `changes`, webhook events) shows only versions at or below the
//!   watermark `W = min(closed)` over the nodes: nothing can commit at or below `W` afterwards.
//! - A node whose lease ran out is evicted by the next reader (its `closed` folded into the floor
//!   document, then its document deleted). Its transactions write its document, so one still open
//!   either committed before the eviction or fails afterwards (matching nothing, or conflicting):
//!   a dead node holds the watermark back for at most its lease, and can never commit behind it.
//! - A node (re-)registers by inserting its document, then reading every `closed` and the floor
//!   and moving its clock past the largest: any watermark computed without it is below its
//!   versions from then on.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::Duration;

use confab_actors::clock::now_ms;

/// Bits of a version below the millisecond: 1,024 versions per millisecond per node before the
/// clock runs ahead of the wall clock.
const LOGICAL_BITS: u32 = 10;
/// How often an idle node publishes a fresh `closed` (and a busy one reads the others').
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(50);

/// This node's clock and its registration.
pub(crate) struct Clock {
    /// This node's document id: the configured node id and a random part, new at every start.
    id: String,
    last: AtomicU64,
    /// The `closed` this node published last, and when (ms since the epoch) its lease was renewed.
    published: AtomicU64,
    renewed_ms: AtomicI64,
    registered: AtomicBool,
}

fn physical() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0) << LOGICAL_BITS
}

impl Clock {
    pub fn new(node: &str) -> Clock {
        let node = if node.is_empty() { "node" } else { node };
        Clock {
            id: format!("{node}.{}", confab_actors::engine::random_id()),
            last: AtomicU64::new(0),
            published: AtomicU64::new(0),
            renewed_ms: AtomicI64::new(0),
            registered: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Hands out `n` (≥ 1) consecutive versions above every one handed out before and at least the
    /// wall clock's; returns the first.
    pub fn reserve(&self, n: u64) -> u64 {
        let mut first = 0;
        let _ = self.last.fetch_update(Relaxed, Relaxed, |last| {
            first = (last + 1).max(physical());
            Some(first + n.max(1) - 1)
        });
        first
    }

    /// The last version handed out.
    pub fn last(&self) -> u64 {
        self.last.load(Relaxed)
    }

    /// Moves the clock to at least `v` (versions seen elsewhere).
    pub fn observe(&self, v: u64) {
        self.last.fetch_max(v, Relaxed);
    }

    /// Records a `closed` published (and the lease renewed) by a committed write of this node.
    pub fn published(&self, closed: u64) {
        self.published.fetch_max(closed, Relaxed);
        self.renewed_ms.store(now_ms(), Relaxed);
    }

    /// Whether an idle node must publish: another node's `closed` (or the floor) passed this
    /// node's, which then holds the watermark back, or its lease is due for renewal.
    pub fn must_publish(&self, highest_seen: u64, renew_every_ms: i64) -> bool {
        highest_seen > self.published.load(Relaxed) || now_ms() - self.renewed_ms.load(Relaxed) >= renew_every_ms
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Relaxed)
    }

    /// Marks the node registered (`nodes::register`).
    pub fn registered(&self) {
        self.registered.store(true, Relaxed);
    }

    /// Marks the node evicted: it registers again before its next write.
    pub fn lost(&self) {
        self.registered.store(false, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_stay_exact_in_javascript_and_follow_what_was_seen() {
        let c = Clock::new("n1");
        let a = c.reserve(3);
        let b = c.reserve(1);
        assert_eq!(b, a + 3, "three versions taken, the next follows");
        assert!(b < (1 << 53), "exact as a JavaScript number: {b}");
        assert!(a >= physical() - (1 << LOGICAL_BITS) * 1000, "near the wall clock");
        c.observe(b + 1_000_000);
        assert_eq!(c.reserve(1), b + 1_000_001, "a version seen elsewhere moves the clock past it");
        assert!(Clock::new("n1").id() != c.id(), "a new id at every start");
    }
}
