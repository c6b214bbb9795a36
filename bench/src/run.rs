//! Running one case against one started system: connect, set up, load (closed or open loop),
//! measure over a fixed window, drain, and turn it all into one JSON result.
//!
//! Timeline of a messaging run: connect every client → set up (confab: `group_create`) → start
//! sending → `warmup` → **window** (CPU, deliveries and latencies counted only here) → stop
//! sending → wait up to `drain` for what is still in flight (anything missing is `lost`). An idle
//! run connects, waits for memory to settle, reads RSS, then watches CPU for `duration`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::case::{Case, Mode, Scenario};
use crate::client::{self, Conn};
use crate::procfs::{self, CpuDelta, CpuSnap};
use crate::stats::{Stats, Track};
use crate::wire::{payload, Dialect};

/// Another process using more than this many cores during a window marks the result `busy`.
pub const BUSY_CORES: f64 = 0.25;
/// Handshakes in progress at once.
const CONNECT_CONCURRENCY: usize = 200;
/// The most time connecting all clients of a run may take.
const CONNECT_BUDGET: Duration = Duration::from_secs(240);
/// A closed-loop sender that waits this long for room in its window gives up (messages lost).
const STALL: Duration = Duration::from_secs(5);
/// The room / group every fan-out uses.
const ROOM: &str = "bench";

/// What the runner needs of a started system.
pub struct Target<'a> {
    pub addrs: &'a [SocketAddr],
    pub pids: &'a [u32],
    pub dialect: &'a Dialect,
}

/// The outcome of connecting a list of users: the connections in order (`None` where one
/// failed), how many failed and the first failure.
struct Connected {
    conns: Vec<Option<Conn>>,
    failed: usize,
    first_err: Option<String>,
}

impl Connected {
    /// Every connection, or an error if any failed.
    fn all(self) -> anyhow::Result<Vec<Conn>> {
        if self.failed > 0 {
            bail!(
                "{} of {} connections failed; first: {}",
                self.failed,
                self.conns.len(),
                self.first_err.unwrap_or_default()
            );
        }
        Ok(self.conns.into_iter().flatten().collect())
    }
}

/// Connects `users[i]` (in `room`) to node `i % nodes`, `CONNECT_CONCURRENCY` at a time, at most
/// `per_ip` from one source address.
async fn connect(
    t: &Target<'_>,
    users: &[String],
    room: Option<&str>,
    per_ip: usize,
    stats: &Arc<Stats>,
    coalesce: bool,
) -> anyhow::Result<Connected> {
    let wire = t.dialect.wire;
    let all = futures_util::stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let addr = t.addrs[i % t.addrs.len()];
            let src = client::source_ip(i, per_ip);
            async move { (i, client::open(t.dialect, addr, src, user, room).await) }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .map(|(i, res)| (i, res.map(|ws| client::spawn(ws, wire, stats.clone(), coalesce))))
        .collect::<Vec<_>>();
    let results = tokio::time::timeout(CONNECT_BUDGET, all).await.context("connecting took longer than the budget")?;
    let mut out = Connected { conns: (0..users.len()).map(|_| None).collect(), failed: 0, first_err: None };
    for (i, r) in results {
        match r {
            Ok(c) => out.conns[i] = Some(c),
            Err(e) => {
                out.failed += 1;
                out.first_err.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Ok(out)
}

/// Calls `emit(i, scheduled_ns)` at `rate` per second until the run stops; late calls catch up
/// in a burst, stamped with their scheduled time (so a stall shows as latency).
async fn pace(stats: &Stats, rate: f64, mut emit: impl FnMut(u64, u64)) {
    let period = 1e9 / rate.max(1e-3);
    let start = stats.now_ns();
    let mut i = 0u64;
    while !stats.is_stopping() {
        let now = stats.now_ns();
        while (i as f64 * period) as u64 <= now - start {
            emit(i, start + (i as f64 * period) as u64);
            i += 1;
        }
        let next = start + (i as f64 * period) as u64;
        tokio::time::sleep(Duration::from_nanos(next.saturating_sub(stats.now_ns()))).await;
    }
}

/// One fan-out sender (`me`): keeps `window` of its messages in flight.
async fn fanout_closed(stats: Arc<Stats>, me: usize, sender: Arc<Conn>, dialect: Dialect, window: u64) {
    let Track::Fanout { inflight, notify, .. } = &stats.track else { return };
    let (Some(inflight), Some(notify)) = (inflight.get(me), notify.get(me)) else { return };
    while !stats.is_stopping() {
        while inflight.load(Relaxed) >= window {
            if tokio::time::timeout(STALL, notify.notified()).await.is_err() && !stats.is_stopping() {
                stats.stalled.store(true, Relaxed);
                return;
            }
            if stats.is_stopping() {
                return;
            }
        }
        let k = stats.fanout_begin(me);
        let ts = stats.now_ns();
        if sender.send(dialect.group_frame(ROOM, u64::from(k), &payload(ts, k, me as u32)), &stats) {
            stats.on_sent(ts);
        }
    }
}

async fn pairs_closed(stats: Arc<Stats>, me: usize, conn: Arc<Conn>, partner: String, dialect: Dialect, window: u32) {
    let Track::Pairs { outstanding, notify } = &stats.track else { return };
    let mut k: u32 = 0;
    while !stats.is_stopping() {
        while outstanding[me].load(Relaxed) >= window {
            if tokio::time::timeout(STALL, notify[me].notified()).await.is_err() && !stats.is_stopping() {
                stats.stalled.store(true, Relaxed);
                return;
            }
            if stats.is_stopping() {
                return;
            }
        }
        outstanding[me].fetch_add(1, Relaxed);
        let ts = stats.now_ns();
        if conn.send(dialect.direct_frame(&partner, u64::from(k), &payload(ts, k, me as u32)), &stats) {
            stats.on_sent(ts);
        } else {
            outstanding[me].fetch_sub(1, Relaxed);
            tokio::task::yield_now().await;
        }
        k = k.wrapping_add(1);
    }
}

/// The measured part of a messaging run: CPU and memory over the window, then the drain.
struct Window {
    wall_s: f64,
    cpu: CpuDelta,
    rss_kib: u64,
    peak_rss_kib: u64,
    drained: bool,
}

async fn measure(case: &Case, pids: &[u32], stats: &Stats) -> Window {
    tokio::time::sleep(case.warmup).await;
    let a = CpuSnap::take(pids);
    let t0 = Instant::now();
    stats.open_window();
    tokio::time::sleep(case.duration).await;
    stats.close_window();
    let wall_s = t0.elapsed().as_secs_f64();
    let b = CpuSnap::take(pids);
    let (rss_kib, peak_rss_kib) = procfs::mem_sum_kib(pids);
    stats.stop();
    let want = |s: &Stats| s.sent_total.load(Relaxed) * case.recipients() as u64;
    let deadline = Instant::now() + case.drain;
    let mut drained = false;
    while Instant::now() < deadline {
        if stats.delivered_total.load(Relaxed) >= want(stats) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Window { wall_s, cpu: CpuDelta::between(&a, &b, wall_s), rss_kib, peak_rss_kib, drained }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn opt(x: Option<f64>, digits: i32) -> Value {
    x.filter(|v| v.is_finite()).map(|v| json!(round(v, digits))).unwrap_or(Value::Null)
}

/// Runs a fan-out or pairs case.
async fn messaging(case: &Case, t: &Target<'_>) -> anyhow::Result<Value> {
    let closed = case.mode.is_closed_loop();
    let coalesce = case.mode.coalesces();
    let (track, users, room): (Track, Vec<String>, Option<&str>) = match case.scenario {
        Scenario::Fanout => (
            if closed { Track::fanout(case.recipients() as u32, case.senders) } else { Track::None },
            (0..case.size).map(|i| format!("m{i}")).collect(),
            Some(ROOM),
        ),
        _ => (
            if closed { Track::pairs(case.size * 2) } else { Track::None },
            (0..case.size * 2).map(|i| format!("p{i}")).collect(),
            None,
        ),
    };
    let stats = Arc::new(Stats::new(track));
    let t_connect = Instant::now();
    let conns: Vec<Arc<Conn>> =
        connect(t, &users, room, case.conns_per_ip, &stats, coalesce).await?.all()?.into_iter().map(Arc::new).collect();
    // The fan-out sender's own connection (not a member's), held here until the drain is over:
    // if it dropped with its sending task when sending stops, the connection would be reset
    // (zero linger) and the frames still in flight to the server discarded with it.
    let mut sender_conn: Option<Arc<Conn>> = None;
    let mut tasks = Vec::new();
    if case.scenario == Scenario::Fanout {
        // The sender: on node 0, after every member.
        let src = client::source_ip(users.len(), case.conns_per_ip);
        let mut ws = client::open(t.dialect, t.addrs[0], src, "s0", None).await.context("connecting the sender")?;
        if let Some(frame) = t.dialect.group_create_frame(ROOM, &users) {
            ws.send(Message::text(frame)).await?;
            let reply =
                client::read_until(&mut ws, Duration::from_secs(60), |f| f.starts_with(r#"{"id":"setup""#)).await?;
            if !reply.contains(r#""result""#) {
                bail!("group_create failed: {}", reply.chars().take(300).collect::<String>());
            }
        }
        let d = t.dialect.clone();
        if case.mode == Mode::Senders {
            // The group's creator leaves; members 0..senders talk (each also receives the others').
            let _ = ws.close(None).await;
            drop(ws);
            for (me, conn) in conns.iter().take(case.senders).enumerate() {
                tasks.push(tokio::spawn(fanout_closed(stats.clone(), me, conn.clone(), d.clone(), case.window as u64)));
            }
        } else {
            let sender = Arc::new(client::spawn(ws, t.dialect.wire, stats.clone(), coalesce));
            sender_conn = Some(sender.clone());
            if closed {
                tasks.push(tokio::spawn(fanout_closed(stats.clone(), 0, sender, d, case.window as u64)));
            } else {
                let (st, rate) = (stats.clone(), case.rate);
                tasks.push(tokio::spawn(async move {
                    pace(&st, rate, |i, ts| {
                        if sender.send(d.group_frame(ROOM, i, &payload(ts, i as u32, 0)), &st) {
                            st.on_sent(ts);
                        }
                    })
                    .await
                }));
            }
        }
    } else if closed {
        for (me, conn) in conns.iter().enumerate() {
            let partner = users[me ^ 1].clone();
            tasks.push(tokio::spawn(pairs_closed(
                stats.clone(),
                me,
                conn.clone(),
                partner,
                t.dialect.clone(),
                case.window as u32,
            )));
        }
    } else {
        let (st, rate, d, cs, us) = (stats.clone(), case.rate, t.dialect.clone(), conns.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let n = cs.len() as u64;
            pace(&st, rate, |i, ts| {
                let me = (i % n) as usize;
                if cs[me].send(d.direct_frame(&us[me ^ 1], i, &payload(ts, i as u32, me as u32)), &st) {
                    st.on_sent(ts);
                }
            })
            .await
        }));
    }
    let setup_s = t_connect.elapsed().as_secs_f64();
    let w = measure(case, t.pids, &stats).await;
    for task in &tasks {
        task.abort();
    }
    for c in conns.iter().chain(&sender_conn) {
        c.task.abort();
    }

    let s = &stats;
    let delivered_win = s.delivered_win.load(Relaxed);
    let sent_total = s.sent_total.load(Relaxed);
    let lost = (sent_total * case.recipients() as u64).saturating_sub(s.delivered_total.load(Relaxed));
    let dps = delivered_win as f64 / w.wall_s;
    let first_error = s.first_error.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(json!({
        "window": closed.then_some(case.window),
        "rate_msgs_per_s": (!closed).then_some(round(case.rate, 1)),
        "target_deliveries_per_s": (!closed).then_some(round(case.rate * case.recipients() as f64, 0)),
        "senders": (case.mode == Mode::Senders).then_some(case.senders),
        "one_message_per_write": !coalesce,
        "conns": conns.len() + usize::from(sender_conn.is_some()),
        "setup_s": round(setup_s, 2),
        "duration_s": round(w.wall_s, 3),
        "sent": s.sent_win.load(Relaxed),
        "deliveries": delivered_win,
        "deliveries_per_s": round(dps, 0),
        "messages_per_s": round(s.sent_win.load(Relaxed) as f64 / w.wall_s, 0),
        "p50_ms": opt(s.hist.quantile_ms(0.50), 3),
        "p99_ms": opt(s.hist.quantile_ms(0.99), 3),
        "p999_ms": opt(s.hist.quantile_ms(0.999), 3),
        "max_ms": opt(s.hist.max_ms(), 3),
        "mean_ms": opt(s.hist.mean_ms(), 3),
        "server_cpu_s": round(w.cpu.server_s, 3),
        "server_cores": round(w.cpu.server_s / w.wall_s, 3),
        "deliveries_per_cpu_s": opt((w.cpu.server_s > 0.0).then(|| delivered_win as f64 / w.cpu.server_s), 0),
        "rss_kib": w.rss_kib,
        "peak_rss_kib": w.peak_rss_kib,
        "kib_per_conn": Value::Null,
        "generator_cores": round(w.cpu.generator_s / w.wall_s, 3),
        "others_cores": round(w.cpu.others_cores, 3),
        // Every message handed to a connection, warm-up and drain included: with `acks` (confab
        // acknowledges each send, and the group's creation once) it tells a message never
        // acknowledged from one acknowledged and not delivered.
        "sent_total": sent_total,
        "lost": lost,
        "drained": w.drained,
        "acks": s.acks.load(Relaxed),
        "errors": s.errors.load(Relaxed),
        "first_error": first_error,
        "disconnects": s.disconnects.load(Relaxed),
        "gen_dropped": s.gen_dropped.load(Relaxed),
        "stalled": s.stalled.load(Relaxed),
    }))
}

/// Runs an idle case: memory per connection and the CPU idle connections cost.
async fn idle(case: &Case, t: &Target<'_>) -> anyhow::Result<Value> {
    let stats = Arc::new(Stats::new(Track::None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = procfs::mem_sum_kib(t.pids);
    let users: Vec<String> = (0..case.size).map(|i| format!("i{i}")).collect();
    let t_connect = Instant::now();
    let Connected { conns, failed, first_err } = connect(t, &users, None, case.conns_per_ip, &stats, false).await?;
    let connect_s = t_connect.elapsed().as_secs_f64();
    let ok = conns.iter().flatten().count();
    // Let allocators and garbage collectors settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2).min(case.duration * 2)).await;
    let (rss1, _) = procfs::mem_sum_kib(t.pids);
    let a = CpuSnap::take(t.pids);
    let t0 = Instant::now();
    tokio::time::sleep(case.duration).await;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu = CpuDelta::between(&a, &CpuSnap::take(t.pids), wall_s);
    let (rss_kib, peak_rss_kib) = procfs::mem_sum_kib(t.pids);
    let still_open = conns.iter().flatten().filter(|c| !c.task.is_finished()).count();
    stats.stop();
    for c in conns.iter().flatten() {
        c.task.abort();
    }
    let per_conn = (ok > 0).then(|| rss1.saturating_sub(rss0) as f64 / ok as f64);
    Ok(json!({
        "conns": ok,
        "conns_failed": failed,
        "first_error": first_err,
        "conns_open_at_end": still_open,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(ok as f64 / connect_s.max(1e-9), 0),
        "duration_s": round(wall_s, 3),
        "deliveries_per_s": Value::Null,
        "deliveries_per_cpu_s": Value::Null,
        "p50_ms": Value::Null,
        "p99_ms": Value::Null,
        "server_cpu_s": round(cpu.server_s, 3),
        "server_cores": round(cpu.server_s / wall_s, 4),
        "rss_before_kib": rss0,
        "rss_kib": rss_kib,
        "peak_rss_kib": peak_rss_kib,
        "kib_per_conn": opt(per_conn, 2),
        "generator_cores": round(cpu.generator_s / wall_s, 3),
        "others_cores": round(cpu.others_cores, 3),
        "disconnects": stats.disconnects.load(Relaxed),
    }))
}

/// Runs `case` against a started system and returns its measurements (without the identifying
/// fields the suite adds).
pub async fn run_case(case: &Case, t: &Target<'_>) -> anyhow::Result<Value> {
    let budget = CONNECT_BUDGET + case.warmup + case.duration + case.drain + Duration::from_secs(90);
    let fut = async {
        match case.scenario {
            Scenario::Idle => idle(case, t).await,
            _ => messaging(case, t).await,
        }
    };
    tokio::time::timeout(budget, fut).await.context("the run exceeded its time budget")?
}
