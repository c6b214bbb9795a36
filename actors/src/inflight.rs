//! A connection's request slots (`session.max_inflight_requests`).
//!
//! Each request takes a slot when it arrives and gives it back no later than its reply is queued:
//! a client that waits for each reply before its next request must never be refused
//! `too_many_requests`. A reply may be queued by the session (most requests) or by a conversation
//! actor (the acknowledgement of a send or a group change, queued in the conversation's order):
//! whoever queues it frees the slot first. A slot is freed once, and at the latest when the last
//! holder drops it (a request that ends without a reply, an actor that stopped).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// One request's slot.
#[derive(Debug)]
pub struct Slot {
    /// The connection's count of requests in flight.
    inflight: Arc<AtomicUsize>,
    freed: AtomicBool,
}

impl Slot {
    /// Takes a slot of `inflight` (the caller checked there is room).
    pub fn take(inflight: &Arc<AtomicUsize>) -> Arc<Slot> {
        inflight.fetch_add(1, Ordering::AcqRel);
        Arc::new(Slot { inflight: inflight.clone(), freed: AtomicBool::new(false) })
    }

    /// Gives the slot back (once; later calls do nothing).
    pub fn free(&self) {
        if !self.freed.swap(true, Ordering::AcqRel) {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_freed_once_whoever_frees_it() {
        let n = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&n);
        let b = Slot::take(&n);
        assert_eq!(n.load(Ordering::Acquire), 2);
        let a2 = a.clone();
        a.free();
        a2.free();
        drop(a);
        assert_eq!(n.load(Ordering::Acquire), 1, "freed once");
        drop(a2);
        assert_eq!(n.load(Ordering::Acquire), 1);
        drop(b);
        assert_eq!(n.load(Ordering::Acquire), 0, "dropping the last holder frees it");
    }
}
