//! Rate limits: token buckets (the generic cell rate algorithm of the `governor` crate).
//!
//! A limit lets `burst` events through at once, then one every `period / rate` on average; a
//! request beyond it is refused with `rate_limited` (and changes nothing), saying when to retry.
//! Limits count on this node: in a cluster a user connected to two nodes has each node's
//! allowance. The HTTP integration API is trusted (signed by the backend) and is not limited
//! per user. `docs/security.md` lists every limit and its default.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::{Error, ErrorCode, Result};

/// One limit: `rate` events per `period`, up to `burst` at once. A rate or burst of 0 turns the
/// limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub rate: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    pub const OFF: Rate = Rate { rate: 0, period: Duration::from_secs(1), burst: 0 };

    pub fn per_sec(rate: u32, burst: u32) -> Rate {
        Rate { rate, period: Duration::from_secs(1), burst }
    }

    pub fn per_hour(rate: u32, burst: u32) -> Rate {
        Rate { rate, period: Duration::from_secs(3600), burst }
    }

    fn quota(self) -> Option<Quota> {
        let (Some(rate), Some(burst)) = (NonZeroU32::new(self.rate), NonZeroU32::new(self.burst)) else {
            return None;
        };
        let every = self.period / rate.get();
        Quota::with_period(every.max(Duration::from_nanos(1))).map(|q| q.allow_burst(burst))
    }
}

/// Every limit of a node (from `[limits]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// Requests (any op) per WebSocket connection.
    pub requests_per_conn: Rate,
    /// Messages sent per WebSocket connection.
    pub sends_per_conn: Rate,
    /// Messages sent per user, over all their connections to this node.
    pub sends_per_user: Rate,
    /// Groups created per user.
    pub group_creates_per_user: Rate,
    /// Users put into groups per user (the members of a group it creates, and those it adds).
    pub group_adds_per_user: Rate,
    /// Friend requests and group join applications per user (what lands in someone else's list).
    pub asks_per_user: Rate,
    /// WebSocket connections opened per client IP address.
    pub connections_per_ip: Rate,
    /// WebSocket connections open at once per client IP address; 0: no limit.
    pub max_connections_per_ip: usize,
}

impl RateConfig {
    /// No limit at all (tests of other things, benchmarks).
    pub const OFF: RateConfig = RateConfig {
        requests_per_conn: Rate::OFF,
        sends_per_conn: Rate::OFF,
        sends_per_user: Rate::OFF,
        group_creates_per_user: Rate::OFF,
        group_adds_per_user: Rate::OFF,
        asks_per_user: Rate::OFF,
        connections_per_ip: Rate::OFF,
        max_connections_per_ip: 0,
    };
}

impl Default for RateConfig {
    /// The documented defaults (`config/default.toml`): generous for people, tight for scripts.
    fn default() -> Self {
        RateConfig {
            requests_per_conn: Rate::per_sec(50, 200),
            sends_per_conn: Rate::per_sec(20, 100),
            sends_per_user: Rate::per_sec(50, 200),
            group_creates_per_user: Rate::per_hour(60, 20),
            group_adds_per_user: Rate::per_hour(20_000, 10_000),
            asks_per_user: Rate::per_hour(100, 30),
            connections_per_ip: Rate::per_sec(20, 200),
            max_connections_per_ip: 1000,
        }
    }
}

/// The error of a refused request: which limit, and when a retry may pass.
fn refused(what: &str, wait: Duration) -> Error {
    Error::new(ErrorCode::RateLimited, format!("{what}: rate limit reached; retry in {} ms", wait.as_millis().max(1)))
}

/// One connection's limits (each session owns one).
pub struct ConnLimits {
    requests: Option<DefaultDirectRateLimiter>,
    sends: Option<DefaultDirectRateLimiter>,
}

impl ConnLimits {
    pub fn new(cfg: &RateConfig) -> Self {
        ConnLimits {
            requests: cfg.requests_per_conn.quota().map(RateLimiter::direct),
            sends: cfg.sends_per_conn.quota().map(RateLimiter::direct),
        }
    }

    /// Counts one request of the connection.
    pub fn request(&self) -> Result<()> {
        direct(&self.requests, "requests on this connection")
    }

    /// Counts one message sent on the connection.
    pub fn send(&self) -> Result<()> {
        direct(&self.sends, "messages sent on this connection")
    }
}

fn direct(limiter: &Option<DefaultDirectRateLimiter>, what: &str) -> Result<()> {
    match limiter {
        None => Ok(()),
        Some(l) => {
            l.check().map_err(|not_until| refused(what, not_until.wait_time_from(DefaultClock::default().now())))
        }
    }
}

/// A limit per key (user, IP address), for the whole node. Keys unused for a while are forgotten
/// as the map grows (a key's state is one timestamp).
pub struct Keyed<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    burst: u32,
    what: &'static str,
    /// The map's size below which it is not swept (doubles with the survivors of a sweep).
    sweep_at: AtomicUsize,
}

/// Keys a keyed limiter holds before its first sweep of idle keys.
const SWEEP_FLOOR: usize = 10_000;

impl<K: Hash + Eq + Clone> Keyed<K> {
    pub fn new(rate: Rate, what: &'static str) -> Self {
        Keyed {
            limiter: rate.quota().map(RateLimiter::keyed),
            burst: rate.burst,
            what,
            sweep_at: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    /// Counts `n` events of `key` (all or none of them).
    pub fn check(&self, key: &K, n: u32) -> Result<()> {
        let Some(l) = &self.limiter else { return Ok(()) };
        let Some(n) = NonZeroU32::new(n) else { return Ok(()) };
        let verdict = match l.check_key_n(key, n) {
            Ok(v) => v,
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::RateLimited,
                    format!("{}: {n} at once is more than this limit ever allows ({})", self.what, self.burst),
                ))
            }
        };
        if l.len() >= self.sweep_at.load(Ordering::Relaxed) {
            l.retain_recent();
            l.shrink_to_fit();
            self.sweep_at.store((l.len() * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
        }
        verdict.map_err(|not_until| refused(self.what, not_until.wait_time_from(DefaultClock::default().now())))
    }
}

/// The node-wide limits per user.
pub struct UserLimits {
    pub sends: Keyed<Arc<str>>,
    pub group_creates: Keyed<Arc<str>>,
    pub group_adds: Keyed<Arc<str>>,
    pub asks: Keyed<Arc<str>>,
}

impl UserLimits {
    pub fn new(cfg: &RateConfig) -> Self {
        UserLimits {
            sends: Keyed::new(cfg.sends_per_user, "messages sent by this user"),
            group_creates: Keyed::new(cfg.group_creates_per_user, "groups created by this user"),
            group_adds: Keyed::new(cfg.group_adds_per_user, "users put into groups by this user"),
            asks: Keyed::new(cfg.asks_per_user, "friend requests and join applications of this user"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let conn = ConnLimits::new(&RateConfig { sends_per_conn: Rate::per_sec(1, 3), ..RateConfig::OFF });
        for _ in 0..3 {
            assert!(conn.send().is_ok());
        }
        let e = conn.send().unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!(e.message.contains("retry in"), "{}", e.message);
        assert!(conn.request().is_ok(), "requests are off");
    }

    #[test]
    fn keyed_limits_count_per_key_and_refuse_more_than_the_burst() {
        let adds: Keyed<Arc<str>> = Keyed::new(Rate::per_hour(10, 5), "adds");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(adds.check(&a, 5).is_ok());
        assert_eq!(adds.check(&a, 1).unwrap_err().code, ErrorCode::RateLimited);
        assert!(adds.check(&b, 4).is_ok(), "another key has its own bucket");
        let e = adds.check(&b, 6).unwrap_err();
        assert!(e.message.contains("more than this limit ever allows"), "{}", e.message);
        assert!(Keyed::<Arc<str>>::new(Rate::OFF, "off").check(&a, 1_000_000).is_ok());
    }
}
