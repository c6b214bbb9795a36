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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A window of messages in flight: the next is sent when an earlier one was delivered.
    Closed,
    /// A fixed send rate whatever the system does (latency is measured from the scheduled time).
    Open,
    /// No messages.
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
            Mode::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Closed, Mode::Open, Mode::Idle].into_iter().find(|x| x.name() == s)
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
    /// Closed loop: messages in flight (fanout: in total; pairs: per sending user).
    pub window: usize,
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

    /// Deliveries per message.
    pub fn recipients(&self) -> usize {
        match self.scenario {
            Scenario::Fanout => self.size,
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
    /// Closed-loop pairs: messages in flight per sending user.
    pub pairs_window: usize,
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
            pairs_window: 4,
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
            pairs_window: 4,
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
            rate: 0.0,
            warmup: self.warmup,
            duration: self.duration,
            drain: self.drain,
            conns_per_ip: self.conns_per_ip,
        };
        let mut out = Vec::new();
        if scenarios.contains(&Scenario::Fanout) {
            for &n in &self.fanout_sizes {
                let window = (self.fanout_inflight_deliveries / n.max(1)).clamp(4, 64);
                out.push(Case { window, ..base(Scenario::Fanout, n, Mode::Closed) });
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
