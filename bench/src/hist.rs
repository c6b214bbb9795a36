//! A lock-free latency histogram in microseconds: exact below 1 ms, then 128 buckets per power of
//! two (under 1% error), up to about 12 days. Receivers on any thread record into one shared
//! instance with relaxed atomic adds; percentiles are read once the run is over.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Values below this are counted exactly (one bucket per microsecond).
const LINEAR: u64 = 1024;
/// Sub-buckets per power of two above `LINEAR` (7 bits of mantissa).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above `LINEAR` (2^10 .. 2^50 µs).
const OCTAVES: u64 = 40;

pub struct Hist {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

fn index(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = u64::from(63 - us.leading_zeros()); // >= 10
    let octave = (e - 10).min(OCTAVES - 1);
    let mantissa = (us >> (e - u64::from(SUB_BITS))) & (SUB - 1);
    (LINEAR + octave * SUB + mantissa) as usize
}

/// The midpoint of a bucket, in microseconds.
fn value(idx: usize) -> f64 {
    let idx = idx as u64;
    if idx < LINEAR {
        return idx as f64;
    }
    let octave = (idx - LINEAR) / SUB;
    let mantissa = (idx - LINEAR) % SUB;
    let e = octave + 10;
    let width = 1u64 << (e - u64::from(SUB_BITS));
    let low = (1u64 << e) + mantissa * width;
    low as f64 + width as f64 / 2.0
}

impl Hist {
    pub fn new() -> Self {
        let n = (LINEAR + OCTAVES * SUB) as usize;
        Self {
            buckets: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record_us(&self, us: u64) {
        self.buckets[index(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The `q` quantile (0..=1) in milliseconds; `None` when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Relaxed);
            if seen >= rank {
                return Some((value(i) / 1000.0).min(self.max_ms().unwrap_or(f64::MAX)));
            }
        }
        self.max_ms()
    }

    pub fn max_ms(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.max_us.load(Relaxed) as f64 / 1000.0)
    }

    pub fn mean_ms(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_us.load(Relaxed) as f64 / n as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..5_000_000u64).step_by(37) {
            let i = index(us);
            assert!(i >= last, "index must not decrease at {us}");
            last = i;
            let v = value(i);
            assert!((v - us as f64).abs() <= (us as f64 / 100.0).max(1.0), "{us} -> {v}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Hist::new();
        for us in 1..=1000 {
            h.record_us(us);
        }
        assert_eq!(h.quantile_ms(0.5), Some(0.5));
        assert_eq!(h.quantile_ms(0.99), Some(0.99));
        assert_eq!(h.max_ms(), Some(1.0));
        assert!(Hist::new().quantile_ms(0.5).is_none());
    }
}
