//! The scenarios and their sizes: the full set, and `--quick`'s toy version of it.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One sender, one group of `size` members, each on its own connection.
    Fanout,
    /// `size` pairs of users, each user sending to its partner.
    Pairs,
    /// `size` connections doing nothing.
    Idle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        [Scenario::Fanout, Scenario::Pairs, Scenario::Idle].into_iter().find(|x| x.name() == s)
    }
}

/// How load arrives. Every mode but `closed` writes one message per frame and per write, as
/// messages from independent people arrive; `closed` lets a sender's queued frames go out in one
/// write (bursty: the server reads many messages per wake-up, which flatters servers that batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A window of messages in flight: the next is sent when an earlier one was delivered. What
    /// is queued on a connection goes out in one write (bursty).
    Closed,
    /// Fan-out only: one sender, one message in flight (`--fanout-window` for more), one message
    /// per write: each message fanned out alone.
    Steady,
    /// Fan-out only: several members each keep one message of their own in flight into the same
    /// group, one message per write (a busy group's talkers).
    Senders,
    /// A fixed send rate whatever the system does (latency is measured from the scheduled time);
    /// one message per write.
    Open,
    /// No messages.
    Idle,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Closed, Mode::Steady, Mode::Senders, Mode::Open, Mode::Idle];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Steady => "steady",
            Mode::Senders => "senders",
            Mode::Open => "open",
            Mode::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|x| x.name() == s)
    }

    /// A loop that waits for deliveries before sending more.
    pub fn is_closed_loop(self) -> bool {
        matches!(self, Mode::Closed | Mode::Steady | Mode::Senders)
    }

    /// Whether a connection may write several queued messages at once.
    pub fn coalesces(self) -> bool {
        self == Mode::Closed
    }
}

#[derive(Debug, Clone)]
pub struct Case {
    pub scenario: Scenario,
    /// Members (fanout), pairs (pairs) or connections (idle) actually used.
    pub size: usize,
    /// The size asked for, when the machine forced a smaller one (see `capped_by`).
    pub requested: usize,
    pub capped_by: Option<String>,
    pub mode: Mode,
    /// Closed loop: messages in flight (fanout: in total, or per sender in `senders`; pairs: per
    /// sending user).
    pub window: usize,
    /// Fan-out `senders` mode: how many members send.
    pub senders: usize,
    /// Open loop: messages per second, all senders together.
    pub rate: f64,
    /// Sending before the measured window (conversations load, caches warm).
    pub warmup: Duration,
    /// The measured window (idle: how long connections are held and watched).
    pub duration: Duration,
    /// After the window, how long to wait for messages still in flight.
    pub drain: Duration,
    /// Client connections per 127.0.0.x source address.
    pub conns_per_ip: usize,
}

impl Case {
    /// The case's key in results and ratios, e.g. `fanout/500/closed`.
    pub fn key(&self) -> String {
        match self.mode {
            Mode::Idle => format!("idle/{}", self.requested),
            m => format!("{}/{}/{}", self.scenario.name(), self.size, m.name()),
        }
    }

    /// Deliveries per message: every member but the sending connection (in `senders` mode the
    /// senders are members; otherwise the sender is not in the measured group).
    pub fn recipients(&self) -> usize {
        match (self.scenario, self.mode) {
            (Scenario::Fanout, Mode::Senders) => self.size.saturating_sub(1),
            (Scenario::Fanout, _) => self.size,
            _ => 1,
        }
    }
}

/// Sizes and timings of a suite.
#[derive(Debug, Clone)]
pub struct Plan {
    pub fanout_sizes: Vec<usize>,
    pub pairs_sizes: Vec<usize>,
    pub idle_sizes: Vec<usize>,
    /// Open-loop fan-out load, in deliveries per second (the issue: 50,000).
    pub fanout_open_deliveries: f64,
    /// Open-loop one-to-one load, in messages per second (the issue: 20,000).
    pub pairs_open_rate: f64,
    /// Closed-loop fan-out: deliveries in flight (window = this / members, 4..=64 messages).
    pub fanout_inflight_deliveries: usize,
    /// Closed-loop fan-out: messages in flight, instead of the window derived from
    /// `fanout_inflight_deliveries` (`--fanout-window`).
    pub fanout_window: Option<usize>,
    /// Closed-loop pairs: messages in flight per sending user.
    pub pairs_window: usize,
    /// Fan-out `senders` mode: members sending into the group.
    pub fanout_senders: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub idle_duration: Duration,
    pub drain: Duration,
    pub conns_per_ip: usize,
}

impl Plan {
    /// The sizes, each scenario bounded to about 15 s of measurement.
    pub fn full() -> Plan {
        Plan {
            fanout_sizes: vec![500, 5000],
            pairs_sizes: vec![500],
            idle_sizes: vec![10_000, 100_000],
            fanout_open_deliveries: 50_000.0,
            pairs_open_rate: 20_000.0,
            fanout_inflight_deliveries: 16_000,
            fanout_window: None,
            pairs_window: 4,
            fanout_senders: 20,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(15),
            idle_duration: Duration::from_secs(5),
            drain: Duration::from_secs(5),
            conns_per_ip: 10_000,
        }
    }

    /// Toy sizes: every code path (several source addresses included) in well under two minutes.
    pub fn quick() -> Plan {
        Plan {
            fanout_sizes: vec![50],
            pairs_sizes: vec![25],
            idle_sizes: vec![300],
            fanout_open_deliveries: 5_000.0,
            pairs_open_rate: 1_000.0,
            fanout_inflight_deliveries: 800,
            fanout_window: None,
            pairs_window: 4,
            fanout_senders: 5,
            warmup: Duration::from_millis(500),
            duration: Duration::from_millis(1500),
            idle_duration: Duration::from_millis(500),
            drain: Duration::from_secs(2),
            conns_per_ip: 100,
        }
    }

    /// Every case of the plan for the chosen scenarios; idle sizes are capped to what the
    /// open-file limit `nofile` allows (server and generator each hold one descriptor per
    /// connection).
    pub fn cases(&self, scenarios: &[Scenario], nofile: Option<u64>) -> Vec<Case> {
        let base = |scenario, size, mode| Case {
            scenario,
            size,
            requested: size,
            capped_by: None,
            mode,
            window: 0,
            senders: 1,
            rate: 0.0,
            warmup: self.warmup,
            duration: self.duration,
            drain: self.drain,
            conns_per_ip: self.conns_per_ip,
        };
        let mut out = Vec::new();
        if scenarios.contains(&Scenario::Fanout) {
            for &n in &self.fanout_sizes {
                let window = self.fanout_window.unwrap_or((self.fanout_inflight_deliveries / n.max(1)).clamp(4, 64));
                out.push(Case { window, ..base(Scenario::Fanout, n, Mode::Closed) });
                // One message at a time unless asked (`--fanout-window`): each message is fanned
                // out alone, as in a group whose messages do not overlap at the server.
                out.push(Case { window: self.fanout_window.unwrap_or(1), ..base(Scenario::Fanout, n, Mode::Steady) });
                // Each sender one message at a time: up to `senders` messages overlap.
                let senders = self.fanout_senders.clamp(1, n.saturating_sub(1).max(1));
                out.push(Case { window: 1, senders, ..base(Scenario::Fanout, n, Mode::Senders) });
                out.push(Case {
                    rate: self.fanout_open_deliveries / n.max(1) as f64,
                    ..base(Scenario::Fanout, n, Mode::Open)
                });
            }
        }
        if scenarios.contains(&Scenario::Pairs) {
            for &p in &self.pairs_sizes {
                out.push(Case { window: self.pairs_window, ..base(Scenario::Pairs, p, Mode::Closed) });
                out.push(Case { rate: self.pairs_open_rate, ..base(Scenario::Pairs, p, Mode::Open) });
            }
        }
        if scenarios.contains(&Scenario::Idle) {
            for &c in &self.idle_sizes {
                let mut case = Case { duration: self.idle_duration, ..base(Scenario::Idle, c, Mode::Idle) };
                if let Some(limit) = nofile {
                    let max = limit.saturating_sub(500) as usize;
                    if c > max {
                        case.size = max;
                        case.capped_by = Some(format!(
                            "open-file limit {limit} per process (ulimit -n; the hard limit cannot be raised here without CAP_SYS_RESOURCE)"
                        ));
                    }
                }
                out.push(case);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_has_every_publishing_pattern() {
        let cases = Plan::full().cases(&[Scenario::Fanout], None);
        let at_500: Vec<&Case> = cases.iter().filter(|c| c.size == 500).collect();
        let modes: Vec<Mode> = at_500.iter().map(|c| c.mode).collect();
        assert_eq!(modes, [Mode::Closed, Mode::Steady, Mode::Senders, Mode::Open]);
        let senders = at_500[2];
        assert_eq!((senders.senders, senders.window, senders.recipients()), (20, 1, 499));
        assert_eq!((at_500[0].window, at_500[1].window, at_500[1].recipients()), (32, 1, 500));
        assert!(at_500[0].mode.coalesces() && !at_500[1].mode.coalesces() && !senders.mode.coalesces());
        assert!(!Mode::Open.is_closed_loop() && Mode::Senders.is_closed_loop());
        let big = cases.iter().find(|c| c.size == 5000 && c.mode == Mode::Closed).map(|c| c.window);
        assert_eq!(big, Some(4));
    }
}
