//! What one run's connections share: the clock, the measured window, counters, the latency
//! histogram, and the bookkeeping that closes the loop (a sender waits until its earlier messages
//! were delivered before sending more).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

use crate::hist::Hist;
use crate::wire::parse_marker;

/// Slots for counting the deliveries of fanned-out messages still in flight (a power of two,
/// far above any window).
const RING: usize = 1 << 14;

/// How a closed loop learns that messages completed.
pub enum Track {
    /// Open loop or idle: nothing waits.
    None,
    /// One or more senders into one group, `expected` deliveries per message: message `k`
    /// (numbered across all senders) completes when the last member got it, which frees one
    /// place in its sender's window (`inflight[sender]`).
    Fanout { ring: Vec<AtomicU32>, expected: u32, inflight: Vec<AtomicU64>, notify: Vec<Notify>, next_k: AtomicU32 },
    /// Many senders, one delivery per message: sender `s` has `outstanding[s]` undelivered.
    Pairs { outstanding: Vec<AtomicU32>, notify: Vec<Notify> },
}

impl Track {
    pub fn fanout(expected: u32, senders: usize) -> Track {
        Track::Fanout {
            ring: (0..RING).map(|_| AtomicU32::new(0)).collect(),
            expected,
            inflight: (0..senders).map(|_| AtomicU64::new(0)).collect(),
            notify: (0..senders).map(|_| Notify::new()).collect(),
            next_k: AtomicU32::new(0),
        }
    }

    pub fn pairs(senders: usize) -> Track {
        Track::Pairs {
            outstanding: (0..senders).map(|_| AtomicU32::new(0)).collect(),
            notify: (0..senders).map(|_| Notify::new()).collect(),
        }
    }
}

pub struct Stats {
    /// The one clock every timestamp is read from.
    pub base: Instant,
    /// The measured window, in ns since `base` (`u64::MAX` until set).
    win_start: AtomicU64,
    win_end: AtomicU64,
    pub hist: Hist,
    pub delivered_total: AtomicU64,
    pub delivered_win: AtomicU64,
    pub sent_total: AtomicU64,
    pub sent_win: AtomicU64,
    /// Frames the generator could not queue (a connection's queue was full): generator overload.
    pub gen_dropped: AtomicU64,
    pub acks: AtomicU64,
    pub errors: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    /// Connections closed by the server (or failing) before the run ended.
    pub disconnects: AtomicU64,
    /// Set when the run is over: closes are expected from then on, senders stop.
    pub stopping: AtomicBool,
    /// A closed-loop sender waited too long for its window: something lost messages.
    pub stalled: AtomicBool,
    pub track: Track,
}

impl Stats {
    pub fn new(track: Track) -> Stats {
        Stats {
            base: Instant::now(),
            win_start: AtomicU64::new(u64::MAX),
            win_end: AtomicU64::new(u64::MAX),
            hist: Hist::new(),
            delivered_total: AtomicU64::new(0),
            delivered_win: AtomicU64::new(0),
            sent_total: AtomicU64::new(0),
            sent_win: AtomicU64::new(0),
            gen_dropped: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            disconnects: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            track,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.win_start.load(Relaxed) && t < self.win_end.load(Relaxed)
    }

    pub fn open_window(&self) {
        self.win_start.store(self.now_ns(), Relaxed);
    }

    pub fn close_window(&self) {
        self.win_end.store(self.now_ns(), Relaxed);
    }

    pub fn stop(&self) {
        self.stopping.store(true, Relaxed);
        match &self.track {
            Track::Fanout { notify, .. } | Track::Pairs { notify, .. } => notify.iter().for_each(Notify::notify_one),
            Track::None => {}
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// A message stamped `ts_ns` was handed to a connection.
    pub fn on_sent(&self, ts_ns: u64) {
        self.sent_total.fetch_add(1, Relaxed);
        if self.in_window(ts_ns) {
            self.sent_win.fetch_add(1, Relaxed);
        }
    }

    /// A frame classified as a delivery arrived.
    pub fn on_delivery(&self, frame: &str) {
        let Some(m) = parse_marker(frame) else { return };
        let now = self.now_ns();
        self.delivered_total.fetch_add(1, Relaxed);
        if self.in_window(now) {
            self.delivered_win.fetch_add(1, Relaxed);
            self.hist.record_us(now.saturating_sub(m.ts_ns) / 1000);
        }
        match &self.track {
            Track::Fanout { ring, expected, inflight, notify, .. } => {
                if ring[m.k as usize % RING].fetch_add(1, Relaxed) + 1 == *expected {
                    if let (Some(i), Some(n)) = (inflight.get(m.sender as usize), notify.get(m.sender as usize)) {
                        i.fetch_sub(1, Relaxed);
                        n.notify_one();
                    }
                }
            }
            Track::Pairs { outstanding, notify } => {
                if let (Some(o), Some(n)) = (outstanding.get(m.sender as usize), notify.get(m.sender as usize)) {
                    let _ = o.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
                    n.notify_one();
                }
            }
            Track::None => {}
        }
    }

    pub fn on_error(&self, frame: &str) {
        self.errors.fetch_add(1, Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(frame.chars().take(300).collect());
        }
    }

    /// Fanout closed loop: numbers a new message of `sender` and claims its slot.
    pub fn fanout_begin(&self, sender: usize) -> u32 {
        let Track::Fanout { ring, inflight, next_k, .. } = &self.track else { return 0 };
        let k = next_k.fetch_add(1, Relaxed);
        ring[k as usize % RING].store(0, Relaxed);
        if let Some(i) = inflight.get(sender) {
            i.fetch_add(1, Relaxed);
        }
        k
    }
}
