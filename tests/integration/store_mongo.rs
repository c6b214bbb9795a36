//! The MongoDB store beyond the conformance suite (which `store.rs` runs on it too): persistence
//! across a reopen, several nodes on one database, group-commit cost in driver commands, an
//! unreachable MongoDB (fast `unavailable`, `ping` and `/readyz` failing, recovery on its own),
//! and `confab migrate` (including users and the webhook outbox).
//!
//! They need `CONFAB_TEST_MONGODB_URI` (set by `scripts/test`, which starts nx-27017). Without it
//! each test prints "skipped: CONFAB_TEST_MONGODB_URI is not set" and passes, unless
//! `CONFAB_REQUIRE_SERVICES=1`, which makes it fail. Every test uses a fresh database.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::store::{EmbeddedStore, MongoOptions, MongoStore};
use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::model::{direct_conv_id, group_conv_id, ContactOp, Role, UserPatch};
use confab_actors::outbox::{Attempt, Delivery, DeliveryQuery, DeliveryState, NewEvent, Outbox, USER_ONLINE};
use confab_actors::store::{ContactChange, HistoryQuery, NewMessage, Store};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{text, TestNode};
use crate::store::{
    change, check_close_stops_writes_but_not_reads, check_persisted_read, check_persisted_write, direct, new_group,
    to_group, DynStore, TS,
};

/// The MongoDB to test against, or `None` (after saying so) when there is none.
pub fn test_uri() -> Option<String> {
    crate::common::service("CONFAB_TEST_MONGODB_URI")
}

/// A database name no other test uses.
pub fn fresh_db() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("confab_test_{}_{}_{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Relaxed))
}

pub fn options(uri: &str, db: &str) -> MongoOptions {
    let mut o = MongoOptions::new(uri, db);
    o.server_selection_timeout = Duration::from_millis(1500);
    o.connect_timeout = Duration::from_millis(1500);
    o.op_timeout = Duration::from_secs(20);
    o
}

pub async fn open(uri: &str, db: &str, metrics: Arc<Metrics>) -> MongoStore {
    MongoStore::open(options(uri, db), metrics).await.expect("open the MongoDB store")
}

/// A fresh store on a fresh database, or `None` when there is no MongoDB to test against.
pub async fn fresh() -> Option<Arc<MongoStore>> {
    let uri = test_uri()?;
    Some(Arc::new(open(&uri, &fresh_db(), Arc::new(Metrics::default())).await))
}

fn seqs_of(store: &DynStore, conv: &str) -> impl std::future::Future<Output = Vec<u64>> {
    let store = store.clone();
    let conv = conv.to_owned();
    async move {
        let h = store.history(&conv, None, HistoryQuery::After { seq: 0, limit: 100 }).await.expect("history");
        let mut out: Vec<u64> = h.iter().map(|m| m.seq).collect();
        let mut after = out.last().copied().unwrap_or(0);
        loop {
            let page =
                store.history(&conv, None, HistoryQuery::After { seq: after, limit: 100 }).await.expect("history");
            let Some(last) = page.last() else { break };
            after = last.seq;
            out.extend(page.iter().map(|m| m.seq));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistence_across_reopen() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let first = open(&uri, &db, Arc::new(Metrics::default())).await;
    first.ping().await.expect("ping");
    let first: DynStore = Arc::new(first);
    check_persisted_write(first.clone()).await;
    drop(first);
    let reopened: DynStore = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    check_persisted_read(reopened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stops_writes_but_not_reads() {
    let Some(store) = fresh().await else { return };
    check_close_stops_writes_but_not_reads(store.clone(), async || store.close().await).await;
}

/// Appends submitted one after another (without waiting) get seqs in submission order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_appends_keep_submission_order() {
    let Some(store) = fresh().await else { return };
    let futs = (0..20).map(|i| store.append(direct("alice", "bob", None, &format!("m{i}"))));
    for (i, r) in futures_util::future::join_all(futs).await.into_iter().enumerate() {
        let m = r.expect("append").message;
        assert_eq!(m.seq, i as u64 + 1);
    }
}

/// Two nodes (two stores) on one database writing to the same conversations: each node's cached
/// `last_seq` goes stale, is detected, and seqs stay contiguous with no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_conversations() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let a: DynStore = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    let b: DynStore = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    let conv = direct_conv_id("alice", "bob");

    // Strictly alternating: every append after the first finds the other node moved the seq.
    let mut vers = Vec::new();
    for i in 0..10 {
        let (node, from, to) = if i % 2 == 0 { (&a, "alice", "bob") } else { (&b, "bob", "alice") };
        let m = node.append(direct(from, to, Some(&format!("alt{i}")), "x")).await.expect("append").message;
        assert_eq!(m.seq, i + 1, "alternating append {i}");
        vers.push(m.ver);
    }
    assert!(vers.windows(2).all(|w| w[0] < w[1]), "ver grows across nodes: {vers:?}");

    // A group created on one node and written from both.
    let (_, first) = b.create_group(new_group("g", "alice", &["bob"])).await.expect("create");
    assert_eq!(first.seq, 1);
    assert_eq!(a.append(to_group("g", "alice", "1")).await.expect("append").message.seq, 2);
    assert_eq!(b.append(to_group("g", "bob", "2")).await.expect("append").message.seq, 3);
    assert_eq!(a.append(to_group("g", "alice", "3")).await.expect("append").message.seq, 4);

    // Bursts of pipelined appends, each node in turn: every burst starts on a stale cache.
    // (Both nodes committing at the same instant is a real replica set's business: nx-27017 runs
    // transactions as SQLite savepoints on one connection and cannot interleave two of them.)
    for burst in 0..4 {
        let node = if burst % 2 == 0 { &a } else { &b };
        let futs = (0..10).map(|i| node.append(direct("alice", "bob", Some(&format!("b{burst}-{i}")), "p")));
        let results = futures_util::future::join_all(futs).await;
        let got: Vec<u64> = results.into_iter().map(|r| r.expect("append").message.seq).collect();
        let first = 11 + burst * 10;
        assert_eq!(got, (first..first + 10).collect::<Vec<u64>>(), "burst {burst}");
    }
    assert_eq!(seqs_of(&a, &conv).await, (1..=50).collect::<Vec<u64>>());
    let c = b.conversation(&conv).await.expect("conversation").expect("exists");
    assert_eq!(c.last_seq, 50);
    // The dedupe index is shared: a re-send through the other node is recognised.
    let again = b.append(direct("alice", "bob", Some("alt0"), "x")).await.expect("append");
    assert!(again.duplicate);
    assert_eq!(again.message.seq, 1);
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    writes: u64,
    reads: u64,
    other: u64,
    sent: u64,
    received: u64,
}

/// The store's metrics, and the reads of the clock's node documents (one per heartbeat, however
/// many messages: see `clock`), which are left out of the reads counted per message.
struct Probe {
    metrics: Arc<Metrics>,
    clock_reads: Arc<AtomicU64>,
}

impl Probe {
    fn options(&self, uri: &str, db: &str) -> MongoOptions {
        let mut o = options(uri, db);
        let reads = self.clock_reads.clone();
        o.monitor = Some(confab::store::CommandMonitor(Arc::new(move |ev| {
            if let mongodb::event::command::CommandEvent::Started(e) = ev {
                if e.command_name == "find" && e.command.get_str("find") == Ok("nodes") {
                    reads.fetch_add(1, Relaxed);
                }
            }
        })));
        o
    }
}

fn counts(p: &Probe) -> Counts {
    let m = &p.metrics;
    Counts {
        writes: m.db_commands_write.load(Relaxed),
        reads: m.db_commands_read.load(Relaxed) - p.clock_reads.load(Relaxed),
        other: m.db_commands_other.load(Relaxed),
        sent: m.db_bytes_sent.load(Relaxed),
        received: m.db_bytes_received.load(Relaxed),
    }
}

/// Bytes to and from the database per message between two counts: printed for BENCHMARKS.md,
/// and bounded: a message of a few bytes of text costs its document, its conversation's and
/// sender's updates and the batch's share of the transaction, not kilobytes more.
fn bytes_per_message(label: &str, before: &Counts, after: &Counts, n: usize) {
    let (sent, received) =
        ((after.sent - before.sent) as f64 / n as f64, (after.received - before.received) as f64 / n as f64);
    eprintln!("{label}: {sent:.0} bytes sent and {received:.0} received per message");
    assert!(sent > 100.0, "a stored message is counted: {sent}");
    assert!(sent < 4096.0 && received < 4096.0, "{label}: {sent} / {received} bytes per message");
}

async fn measure(store: &DynStore, probe: &Probe, label: &str, msgs: Vec<NewMessage>) -> (f64, f64, u64) {
    let before = counts(probe);
    let n = msgs.len();
    let mut handles = Vec::new();
    for m in msgs {
        let s = store.clone();
        handles.push(tokio::spawn(async move { s.append(m).await }));
    }
    for h in handles {
        let a = h.await.expect("join").expect("append");
        assert!(!a.duplicate);
    }
    let after = counts(probe);
    bytes_per_message(label, &before, &after, n);
    let per = |a: u64, b: u64| (a - b) as f64 / n as f64;
    (per(after.writes, before.writes), per(after.reads, before.reads), after.other - before.other)
}

/// `senders` clients each sending `each` messages one after another (waiting for each answer):
/// a steady closed-loop load, where a batch holds about one message per sender.
async fn measure_closed(
    store: &DynStore,
    probe: &Probe,
    label: &str,
    senders: usize,
    each: usize,
    make: impl Fn(usize, usize) -> NewMessage,
) -> (f64, f64) {
    let before = counts(probe);
    let mut handles = Vec::new();
    for s in 0..senders {
        let store = store.clone();
        let msgs: Vec<NewMessage> = (0..each).map(|i| make(s, i)).collect();
        handles.push(tokio::spawn(async move {
            for m in msgs {
                assert!(!store.append(m).await.expect("append").duplicate);
            }
        }));
    }
    for h in handles {
        h.await.expect("join");
    }
    let after = counts(probe);
    bytes_per_message(label, &before, &after, senders * each);
    let n = (senders * each) as f64;
    ((after.writes - before.writes) as f64 / n, (after.reads - before.reads) as f64 / n)
}

/// Group commit under load costs at most one write command per message and no read, for
/// one-to-one conversations and for a 500-member group (counted by command monitoring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_per_message_under_load() {
    let Some(uri) = test_uri() else { return };
    let probe = Probe { metrics: Arc::new(Metrics::default()), clock_reads: Arc::new(AtomicU64::new(0)) };
    let store = MongoStore::open(probe.options(&uri, &fresh_db()), probe.metrics.clone()).await.expect("open");
    let store: DynStore = Arc::new(store);
    let metrics = &probe.metrics;

    // Unloaded: one message at a time is one whole transaction.
    store.append(direct("alice", "bob", None, "warm")).await.expect("append");
    let before = counts(&probe);
    for i in 0..5 {
        store.append(direct("alice", "bob", None, &format!("seq{i}"))).await.expect("append");
    }
    let after = counts(&probe);
    bytes_per_message("one-to-one, one at a time", &before, &after, 5);
    let (w1, r1) = ((after.writes - before.writes) as f64 / 5.0, (after.reads - before.reads) as f64 / 5.0);
    eprintln!("one-to-one, one at a time: {w1:.2} writes and {r1:.2} reads per message");
    assert_eq!(r1, 0.0, "no reads in steady state");

    // One-to-one under load: 400 concurrent sends in one conversation.
    let msgs = (0..400)
        .map(|i| {
            direct(
                if i % 2 == 0 { "alice" } else { "bob" },
                if i % 2 == 0 { "bob" } else { "alice" },
                Some(&format!("l{i}")),
                "x",
            )
        })
        .collect();
    let (w, r, other) = measure(&store, &probe, "one-to-one, 400 concurrent", msgs).await;
    eprintln!("one-to-one, 400 concurrent: {w:.3} writes and {r:.3} reads per message ({other} other)");
    assert!(w <= 1.0, "at most one write per message amortised: {w}");
    assert_eq!(r, 0.0, "no reads in steady state");

    // Steady load: 16 clients in 16 conversations, each waiting for every answer.
    for p in 0..16 {
        store.append(direct("dan", &format!("friend{p}"), None, "warm")).await.expect("append");
    }
    let (w, r) = measure_closed(&store, &probe, "one-to-one, 16 closed-loop senders", 16, 25, |s, _| {
        direct("dan", &format!("friend{s}"), None, "x")
    })
    .await;
    eprintln!("one-to-one, 16 closed-loop senders: {w:.3} writes and {r:.3} reads per message");
    assert!(w <= 1.0, "at most one write per message amortised: {w}");
    assert_eq!(r, 0.0, "no reads in steady state");

    // Many one-to-one conversations at once (each warmed up by its first message).
    for p in 0..50 {
        store.append(direct("carol", &format!("peer{p}"), None, "warm")).await.expect("append");
    }
    let msgs = (0..400).map(|i| direct("carol", &format!("peer{}", i % 50), None, "x")).collect();
    let (w, r, _) = measure(&store, &probe, "50 one-to-one conversations, 400 concurrent", msgs).await;
    eprintln!("50 one-to-one conversations, 400 concurrent: {w:.3} writes and {r:.3} reads per message");
    assert!(w <= 1.0, "at most one write per message amortised: {w}");
    assert_eq!(r, 0.0, "no reads in steady state");

    // A 500-member group.
    let members: Vec<String> = (1..500).map(|i| format!("member{i}")).collect();
    let member_ids: Vec<&str> = members.iter().map(String::as_str).collect();
    store.create_group(new_group("big", "owner", &member_ids)).await.expect("create");
    store.append(to_group("big", "owner", "warm")).await.expect("append");
    let msgs = (0..400).map(|i| to_group("big", &members[i % members.len()], "x")).collect();
    let (w, r, _) = measure(&store, &probe, "500-member group, 400 concurrent", msgs).await;
    eprintln!("500-member group, 400 concurrent: {w:.3} writes and {r:.3} reads per message");
    assert!(w <= 1.0, "at most one write per message amortised: {w}");
    assert_eq!(r, 0.0, "no reads in steady state");
    assert_eq!(seqs_of(&store, &group_conv_id("big")).await.len(), 402);
    let (w, r) = measure_closed(&store, &probe, "500-member group, 16 closed-loop senders", 16, 25, |s, _| {
        to_group("big", &members[s], "x")
    })
    .await;
    eprintln!("500-member group, 16 closed-loop senders: {w:.3} writes and {r:.3} reads per message");
    assert!(w <= 1.0, "at most one write per message amortised: {w}");
    assert_eq!(r, 0.0, "no reads in steady state");

    let text = metrics.render();
    assert!(text.contains("confab_store_db_commands_total{kind=\"write\"}"), "{text}");
    assert!(text.contains("confab_store_db_bytes_total{direction=\"sent\"}"), "{text}");
    eprintln!(
        "commits {} for {} write operations",
        metrics.store_commits.load(Relaxed),
        metrics.store_batch_ops.load(Relaxed)
    );
}

/// A TCP forwarder in front of MongoDB that can be cut (every connection dropped, new ones
/// refused) and restored: an outage without touching the server.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// While set, bytes are read but not passed on, either way, as on a host that stopped
    /// answering (no reset, no refusal): clients wait for their own timeouts.
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = Arc::new(AtomicBool::new(up));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let (up2, conns2, paused2) = (up.clone(), conns.clone(), paused.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Relaxed) {
                    drop(inbound);
                    continue;
                }
                let paused = paused2.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(pump(ri, wo, paused.clone()), pump(ro, wi, paused));
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy { addr, up, paused, conns, accept }
    }

    /// Stops passing anything on, keeping every connection open (see [`Proxy::paused`]).
    fn stall(&self) {
        self.paused.store(true, Relaxed);
    }

    fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    pub(crate) fn cut(&self) {
        self.up.store(false, Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub(crate) fn restore(&self) {
        self.paused.store(false, Relaxed);
        self.up.store(true, Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding what it read while `paused`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while paused.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn target_of(uri: &str) -> SocketAddr {
    let rest = uri.strip_prefix("mongodb://").expect("a mongodb:// URI");
    let host = rest.split(['/', '?', ',']).next().expect("host");
    std::net::ToSocketAddrs::to_socket_addrs(host).expect("resolve").next().expect("an address")
}

/// Waits until the node answers `/readyz` with 200 again.
async fn wait_node_ready(node: &TestNode, within: Duration) {
    let deadline = Instant::now() + within;
    while node.get("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "the node did not become ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_ready(store: &MongoStore, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if store.ping().await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "the store did not recover within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// MongoDB unreachable at start-up and later: operations fail quickly with `Unavailable`, nothing
/// is half-written, `ping` fails, and the store recovers by itself when MongoDB is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_mongodb_fails_fast_and_recovers() {
    let Some(uri) = test_uri() else { return };
    let proxy = Proxy::start(target_of(&uri), false).await;
    let mut opts = MongoOptions::new(proxy.uri(), fresh_db());
    opts.server_selection_timeout = Duration::from_millis(400);
    opts.connect_timeout = Duration::from_millis(400);
    opts.op_timeout = Duration::from_secs(5);

    // Down from the start: the store opens anyway, but is not ready.
    let t = Instant::now();
    let store = MongoStore::open(opts, Arc::new(Metrics::default())).await.expect("opens without MongoDB");
    assert!(t.elapsed() < Duration::from_secs(4), "open took {:?}", t.elapsed());
    assert!(store.ping().await.is_err(), "not ready without MongoDB");
    let t = Instant::now();
    let err = store.append(direct("alice", "bob", Some("m1"), "lost?")).await.expect_err("no MongoDB");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "failing took {:?}", t.elapsed());

    // Back: ready again by itself, and the failed send was not stored.
    proxy.restore();
    wait_ready(&store, Duration::from_secs(15)).await;
    let a = store.append(direct("alice", "bob", Some("m1"), "hello")).await.expect("append");
    assert!(!a.duplicate, "the failed send stored nothing");
    assert_eq!(a.message.seq, 1);

    // Down again while running: quick failures, and a moment later immediate ones (breaker).
    proxy.cut();
    let t = Instant::now();
    let err = store.append(direct("alice", "bob", Some("m2"), "during")).await.expect_err("down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "failing took {:?}", t.elapsed());
    let t = Instant::now();
    assert!(store.append(direct("alice", "bob", Some("m3"), "during")).await.is_err());
    assert!(store.history(&direct_conv_id("alice", "bob"), None, HistoryQuery::Latest { limit: 5 }).await.is_err());
    assert!(store.ping().await.is_err());
    assert!(t.elapsed() < Duration::from_secs(3), "repeated failures took {:?}", t.elapsed());

    proxy.restore();
    wait_ready(&store, Duration::from_secs(15)).await;
    let b = store.append(direct("bob", "alice", Some("m2"), "after")).await.expect("append");
    assert_eq!(b.message.seq, 2, "no hole, nothing of the failed sends stored");
    let hist = store
        .history(&direct_conv_id("alice", "bob"), None, HistoryQuery::Latest { limit: 10 })
        .await
        .expect("history");
    assert_eq!(hist.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
}

/// A node on a fresh database reached through a [`Proxy`], with `timeout_ms` for server selection
/// and connecting.
async fn node_behind_proxy(uri: &str, timeout_ms: &str, extra: &[(&str, &str)]) -> (Proxy, TestNode) {
    let proxy = Proxy::start(target_of(uri), true).await;
    let db = fresh_db();
    let proxied = proxy.uri();
    let mut env = vec![
        ("CONFAB__STORAGE__BACKEND", "mongodb"),
        ("CONFAB__STORAGE__MONGODB__URI", proxied.as_str()),
        ("CONFAB__STORAGE__MONGODB__DATABASE", db.as_str()),
        ("CONFAB__STORAGE__MONGODB__SERVER_SELECTION_TIMEOUT_MS", timeout_ms),
        ("CONFAB__STORAGE__MONGODB__CONNECT_TIMEOUT_MS", timeout_ms),
    ];
    env.extend_from_slice(extra);
    let node = TestNode::with(&env);
    (proxy, node)
}

/// A node on MongoDB: `/readyz` is 503 while MongoDB is unreachable and sends fail
/// `unavailable`; it turns ready by itself when MongoDB is back, and messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_on_mongodb_readiness_and_recovery() {
    let Some(uri) = test_uri() else { return };
    let (proxy, node) = node_behind_proxy(&uri, "400", &[]).await;
    assert_eq!(node.get("/readyz").await.0, 200);
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let m = alice.send_msg(json!({"to": "bob"}), "c1", text("hi")).await;
    assert_eq!(m["seq"], 1);
    assert_eq!(bob.next_event("message").await["seq"], 1);

    proxy.cut();
    let err = alice
        .expect_err("send", json!({"to": "bob", "client_msg_id": "c2", "body": text("lost")}), "unavailable")
        .await;
    assert!(err["message"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(node.get("/readyz").await.0, 503);
    bob.no_event_within(200).await;

    proxy.restore();
    wait_node_ready(&node, Duration::from_secs(15)).await;
    let m = alice.send_msg(json!({"to": "bob"}), "c2", text("again")).await;
    assert_eq!(m["seq"], 2, "the failed send was not stored");
    assert_eq!(bob.next_event("message").await["seq"], 2);
    assert!(node.metric("confab_store_db_command_failures_total").await >= 0.0);
}

/// With MongoDB unreachable (a host that answers nothing) and a long server selection timeout,
/// `/readyz` still answers (503) within `server.ready_timeout_ms`, and a user can reconnect: the access check gives up after
/// `auth.access_check_timeout_ms`, lets the connection in and checks again once MongoDB is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_neither_blocks_reconnects_nor_readiness() {
    let Some(uri) = test_uri() else { return };
    let extra = [("CONFAB__SERVER__READY_TIMEOUT_MS", "700"), ("CONFAB__AUTH__ACCESS_CHECK_TIMEOUT_MS", "500")];
    let (proxy, node) = node_behind_proxy(&uri, "10000", &extra).await;
    assert_eq!(node.get("/readyz").await.0, 200);
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "c1", text("hi")).await;
    proxy.stall();
    let t = Instant::now();
    assert_eq!(node.get("/readyz").await.0, 503);
    assert!(t.elapsed() < Duration::from_secs(2), "/readyz took {:?}", t.elapsed());
    let t = Instant::now();
    let mut bob = node.connect("bob", "phone").await;
    assert!(t.elapsed() < Duration::from_secs(3), "reconnecting took {:?}", t.elapsed());
    bob.expect_ok("ping", json!({})).await;
    proxy.restore();
    wait_node_ready(&node, Duration::from_secs(20)).await;
    let m = bob.send_msg(json!({"to": "alice"}), "b1", text("back")).await;
    assert_eq!(m["seq"], 2);
}

/// `confab migrate`: an embedded store copied into MongoDB reads back the same, keeps its
/// counters, and a second run changes nothing (even after writes on MongoDB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_from_embedded_is_complete_and_idempotent() {
    let Some(uri) = test_uri() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let embedded: DynStore = Arc::new(EmbeddedStore::open(dir.path(), Arc::new(Metrics::default())).expect("open"));
        check_persisted_write(embedded.clone()).await;
        // Someone removed from a group stays removed after a second migration.
        embedded.change_members(change("gp", &[("dave", Role::Member)], &[], TS)).await.expect("add dave");
    }
    let db = fresh_db();
    let report = confab::store::mongo::migrate_from_embedded(dir.path(), options(&uri, &db)).await.expect("migrate");
    eprintln!("{report}");
    assert_eq!(report.refused(), 0);
    let store: DynStore = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    // check_persisted_read expects the group before dave joined; remove him on MongoDB.
    store.change_members(change("gp", &[], &["dave"], TS)).await.expect("remove dave");
    let gp = store.conversation(&group_conv_id("gp")).await.expect("conversation").expect("migrated");
    assert_eq!(gp.last_seq, 4, "2 migrated changes + seq 3 (dave added) + seq 4 (removed)");

    // A second run adds nothing and overwrites nothing.
    let again =
        confab::store::mongo::migrate_from_embedded(dir.path(), options(&uri, &db)).await.expect("migrate again");
    eprintln!("{again}");
    assert!(again.collections.iter().all(|(_, inserted, _, refused)| *inserted == 0 && *refused == 0), "{again}");
    assert!(store.members("gp").await.expect("members").iter().all(|m| m.user_id != "dave"), "removed stays removed");
    assert_eq!(store.conversation(&group_conv_id("gp")).await.expect("conversation").expect("exists").last_seq, 4);

    // The direct conversation reads back as written.
    let conv = direct_conv_id("alice", "bob");
    assert_eq!(store.conversation(&conv).await.expect("conversation").expect("migrated").last_seq, 3);
    let bob = store.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    assert!(bob.pinned);
    assert_eq!(bob.read_seq, 1);
    let ch = store.changes("bob", &conv, 0).await.expect("changes");
    assert_eq!((ch.recalled, ch.deleted), (vec![2], vec![3]));
    let bob_hist = store.history(&conv, Some("bob"), HistoryQuery::Latest { limit: 10 }).await.expect("history");
    assert_eq!(bob_hist.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2]);
    let dup = store.append(direct("alice", "bob", Some("p1"), "again")).await.expect("append");
    assert!(dup.duplicate, "the dedupe keys were migrated");
    let next = store.append(direct("bob", "alice", None, "after migration")).await.expect("append");
    assert_eq!(next.message.seq, 4);
    assert!(next.message.ver > gp.ver, "ver continues above everything migrated");
}

fn online(n: i64) -> NewEvent {
    NewEvent { kind: USER_ONLINE, conv_id: None, seq: None, ts: TS + n, data: json!({ "user": format!("u{n}") }) }
}

fn all_deliveries() -> DeliveryQuery {
    DeliveryQuery { endpoint: None, state: None, after_id: 0, limit: 100 }
}

/// `confab migrate` carries the users (profiles; `disabled` and `tokens_valid_after` merged with
/// what MongoDB has towards the more restrictive value) and the webhook outbox (events, deliveries
/// with their attempt log, cursors and the event id counter, but no lease); a second run changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_carries_users_and_the_webhook_outbox() {
    let Some(uri) = test_uri() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = "hook";
    let (events, deliveries) = {
        let embedded = EmbeddedStore::open(dir.path(), Arc::new(Metrics::default())).expect("open");
        let profile = UserPatch {
            id: "alice".into(),
            nickname: Some("Alice".into()),
            avatar: Some("https://example.com/alice.png".into()),
            ext: Some(json!({ "team": "blue", "$odd.key": [1, 2] })),
            ts: TS,
        };
        embedded.upsert_user(profile).await.expect("alice");
        embedded.set_user_disabled("carol", true, TS + 1).await.expect("disable carol");
        embedded.revoke_tokens("bob", 1_700_000_500_000, TS + 2).await.expect("revoke bob");
        embedded.revoke_device("bob", "pad.1", 1_700_000_600_000).await.expect("revoke bob's pad");
        let reg = |user: &str, device: &str, token: &str| confab_actors::push::PushRegistration {
            user: user.into(),
            device: device.into(),
            provider: "fcm".into(),
            token: token.into(),
            updated_at: TS,
        };
        embedded.set_push_token(&reg("alice", "phone", "tok-a")).await.expect("alice's token");
        embedded.set_push_token(&reg("bob", "phone", "tok-b")).await.expect("bob's token");
        let day = confab_actors::store::day_of(TS);
        embedded.record_active(day, &["alice".into(), "bob".into()]).await.expect("active");
        embedded.append(crate::store::direct("alice", "bob", Some("m1"), "hi")).await.expect("a message");
        embedded.create_group(crate::store::new_group("club", "alice", &["bob"])).await.expect("group");
        let mut ban = crate::store::change("club", &[], &["bob"], TS + 3);
        ban.ban = vec![confab_actors::model::GroupBan { user_id: "bob".into(), by: "alice".into(), ts: TS + 3 }];
        embedded.change_members(ban).await.expect("ban");
        for (user, peer, op) in [("alice", "bob", ContactOp::Befriend), ("carol", "alice", ContactOp::Block)] {
            let c = ContactChange { user: user.into(), peer: peer.into(), op, ts: TS + 3 };
            embedded.change_contact(c).await.expect("contact");
        }
        let mut ids = Vec::new();
        for n in 0..4 {
            ids.push(embedded.push_event(online(n)).await.expect("push"));
        }
        assert_eq!(ids, [1, 2, 3, 4]);
        // Events 1 to 3 queued for the endpoint (4 not yet): 1 delivered, 2 failed once and waits
        // for its retry, 3 not tried yet.
        embedded.enqueue(hook, &ids[..3], 3).await.expect("enqueue");
        let mut d = Delivery::new(hook, 1);
        d.record(Attempt { at: TS, status: Some(200), error: None, ms: 12 }, DeliveryState::Delivered, 0);
        embedded.save_delivery(&d).await.expect("delivered");
        let mut d = Delivery::new(hook, 2);
        let failed = Attempt { at: TS, status: Some(503), error: Some("503 Service Unavailable".into()), ms: 40 };
        d.record(failed, DeliveryState::Pending, TS + 5000);
        embedded.save_delivery(&d).await.expect("retry later");
        assert!(embedded.lease("webhooks", "node-a", TS, 3_600_000).await.expect("lease"));
        let events = embedded.events_after(0, 100).await.expect("events");
        let deliveries = embedded.deliveries(&all_deliveries()).await.expect("deliveries");
        assert_eq!((events.len(), deliveries.len()), (4, 3));
        (events, deliveries)
    };

    // MongoDB knows carol already (enabled, another profile) and bob's tokens revoked earlier.
    let db = fresh_db();
    let store = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    let cluster_carol =
        UserPatch { id: "carol".into(), nickname: Some("Carol (cluster)".into()), avatar: None, ext: None, ts: TS };
    store.upsert_user(cluster_carol).await.expect("carol");
    store.revoke_tokens("bob", 1_700_000_100_000, TS).await.expect("revoke bob");
    store.revoke_device("bob", "pad.1", 1_700_000_900_000).await.expect("a later bound on MongoDB");
    // Bob's phone registered another token on MongoDB since: it stays.
    let newer = confab_actors::push::PushRegistration {
        user: "bob".into(),
        device: "phone".into(),
        provider: "fcm".into(),
        token: "tok-b2".into(),
        updated_at: TS + 1,
    };
    store.set_push_token(&newer).await.expect("bob's newer token");

    let report = confab::store::mongo::migrate_from_embedded(dir.path(), options(&uri, &db)).await.expect("migrate");
    eprintln!("{report}");
    assert_eq!(report.refused(), 0);
    let line = |name: &str| report.collections.iter().find(|c| c.0 == name).map(|c| (c.1, c.2));
    assert_eq!(line("users"), Some((1, 2)), "alice copied; bob and carol merged");
    assert_eq!(line("outbox"), Some((4, 0)));
    assert_eq!(line("webhook_deliveries"), Some((3, 0)));
    assert_eq!(line("webhook_meta"), Some((1, 0)), "the cursor; not the lease");
    assert_eq!(line("contacts"), Some((3, 0)), "alice's and bob's rows, carol's block");
    assert_eq!(line("group_bans"), Some((1, 0)));
    assert_eq!(line("push_tokens"), Some((1, 1)), "alice's copied, bob's newer one kept");
    let tokens: Vec<String> = store
        .push_tokens(&["alice".into(), "bob".into()])
        .await
        .expect("tokens")
        .into_iter()
        .map(|r| r.token)
        .collect();
    assert_eq!(tokens, ["tok-a", "tok-b2"]);
    let day = confab_actors::store::day_of(TS);
    let stats = store.stats(day, day).await.expect("stats");
    assert_eq!((stats.days[0].messages, stats.days[0].active_users), (1, 2), "the day's counts came along");
    let devices = store.device_revocations(&["bob".into()]).await.expect("devices");
    assert_eq!(devices, [("bob".into(), "pad.1".into(), 1_700_000_900_000)], "the later bound stays");
    assert_eq!(store.bans("club").await.expect("bans")[0].user_id, "bob");
    let alice_bob = store.contact("alice", "bob").await.expect("contact").expect("migrated");
    assert!(alice_bob.friend && alice_bob.friend_since == Some(TS + 3));
    assert!(store.contact("carol", "alice").await.expect("contact").expect("migrated").blocked);
    let rows = store.list_contacts("bob", 0, 10).await.expect("list");
    assert_eq!(rows.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(), ["alice"], "synced by ver");

    // Users: profiles survive, nobody is enabled again, no revoked token comes back.
    let alice = store.user("alice").await.expect("user").expect("migrated");
    assert_eq!(alice.nickname.as_deref(), Some("Alice"));
    assert_eq!(alice.avatar.as_deref(), Some("https://example.com/alice.png"));
    assert_eq!(alice.ext, json!({ "team": "blue", "$odd.key": [1, 2] }));
    assert!(!alice.disabled);
    assert_eq!((alice.created_at, alice.updated_at), (TS, TS));
    let carol = store.user("carol").await.expect("user").expect("exists");
    assert!(carol.disabled, "disabled in the embedded store: disabled on MongoDB");
    assert_eq!(carol.nickname.as_deref(), Some("Carol (cluster)"), "an existing profile is not overwritten");
    let bob = store.user("bob").await.expect("user").expect("exists");
    assert_eq!(bob.tokens_valid_after, 1_700_000_500, "the later revocation wins");
    assert_eq!(bob.tokens_valid_after_ms, 1_700_000_500_000);
    assert!(!bob.disabled);

    // The outbox: same events and ids, same deliveries and log, the cursor; the lease is free.
    assert_eq!(store.events_after(0, 100).await.expect("events"), events);
    assert_eq!(store.deliveries(&all_deliveries()).await.expect("deliveries"), deliveries);
    let pending = store.pending(hook, 10).await.expect("pending");
    assert_eq!(pending.iter().map(|(d, e)| (d.event_id, e.id)).collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
    assert_eq!((pending[0].0.attempts, pending[0].0.next_at), (1, TS + 5000));
    assert_eq!(pending[0].0.log[0].error.as_deref(), Some("503 Service Unavailable"));
    assert_eq!(store.cursor(hook).await.expect("cursor"), 3);
    assert!(store.lease("webhooks", "node-b", TS + 1, 60_000).await.expect("lease"), "leases are not copied");
    let new_id = store.push_event(online(10)).await.expect("push on MongoDB");
    assert!(new_id > 4, "event ids continue above the migrated ones: {new_id}");

    // A second run adds nothing and changes nothing.
    let users_before = store.users(&["alice".into(), "bob".into(), "carol".into()]).await.expect("users");
    let again =
        confab::store::mongo::migrate_from_embedded(dir.path(), options(&uri, &db)).await.expect("migrate again");
    eprintln!("{again}");
    assert!(again.collections.iter().all(|(_, inserted, _, refused)| *inserted == 0 && *refused == 0), "{again}");
    let mut users_after = store.users(&["alice".into(), "bob".into(), "carol".into()]).await.expect("users");
    users_after.sort_by(|a, b| a.id.cmp(&b.id));
    let mut users_before = users_before;
    users_before.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(users_after, users_before);
    let after = store.events_after(0, 100).await.expect("events");
    assert_eq!(after.len(), 5);
    assert_eq!(after[..4], events[..]);
    assert_eq!(store.deliveries(&all_deliveries()).await.expect("deliveries"), deliveries);
    assert_eq!(store.cursor(hook).await.expect("cursor"), 3);
    assert!(store.push_event(online(11)).await.expect("push on MongoDB") > new_id, "ids never move back");
}

/// Webhook events of a database that has events of its own under the same ids (another node's
/// data directory migrated before) are refused, and so are their deliveries (they would deliver
/// the other event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_refuses_webhook_events_that_collide() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let (first, second) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    {
        let embedded = EmbeddedStore::open(first.path(), Arc::new(Metrics::default())).expect("open");
        embedded.push_event(online(100)).await.expect("push");
    }
    let report = confab::store::mongo::migrate_from_embedded(first.path(), options(&uri, &db)).await.expect("migrate");
    assert_eq!(report.refused(), 0);
    {
        let embedded = EmbeddedStore::open(second.path(), Arc::new(Metrics::default())).expect("open");
        for n in 0..2 {
            embedded.push_event(online(n)).await.expect("push");
        }
        embedded.enqueue("hook", &[1, 2], 2).await.expect("enqueue");
    }
    let store = Arc::new(open(&uri, &db, Arc::new(Metrics::default())).await);
    let report = confab::store::mongo::migrate_from_embedded(second.path(), options(&uri, &db)).await.expect("migrate");
    eprintln!("{report}");
    let line = |name: &str| report.collections.iter().find(|c| c.0 == name).map(|c| (c.1, c.2, c.3));
    assert_eq!(line("outbox"), Some((1, 0, 1)));
    assert_eq!(line("webhook_deliveries"), Some((1, 0, 1)));
    assert_eq!(report.refused(), 2);
    assert_eq!(store.event(1).await.expect("event").expect("kept").ts, TS + 100, "not overwritten");
    assert!(store.event_deliveries(1).await.expect("deliveries").is_empty());
    assert_eq!(store.event_deliveries(2).await.expect("deliveries").len(), 1);
    assert!(store.push_event(online(101)).await.expect("push on MongoDB") > 2);
}

/// Users and groups written before name keys existed get theirs when a node starts, once: search
/// finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_written_before_the_keys_are_found_after_a_start() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let raw = mongodb::Client::with_uri_str(&uri).await.expect("client").database(&db);
    let users = raw.collection::<mongodb::bson::Document>("users");
    users
        .insert_one(mongodb::bson::doc! { "_id": "old", "nickname": "Legacy Lee", "ext": "{}", "created_at": TS, "updated_at": TS })
        .await
        .expect("an old user");
    let store = open(&uri, &db, Arc::new(Metrics::default())).await;
    let found = store.search_users("legacy", 10).await.expect("search");
    assert_eq!(found.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["old"]);
}
