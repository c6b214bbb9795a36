//! The cluster layer (src/cluster) against a real redis-server: presence across nodes, a dead
//! node's entries vanishing within the TTL, one publish per destination node per batch, presence
//! changes seen at once by the fan-out sender's cache, the broadcast channel, and a Redis restart
//! (presence re-asserted, subscriber back, fast failures meanwhile). Several "nodes" run in one process: each `Cluster` is one node.
//!
//! They need `CONFAB_TEST_REDIS_URL` (set by `scripts/test`, which starts redis-server). Without it
//! each test prints "skipped: CONFAB_TEST_REDIS_URL is not set" and passes, unless
//! `CONFAB_REQUIRE_SERVICES=1`, which makes it fail. The restart test starts a redis-server of
//! its own on a spare port. Node ids and user ids are unique per test, so tests share one Redis.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use confab::cluster::{Batch, Broadcast, Cluster, ClusterOptions, Incoming, Located};
use tokio::sync::mpsc;

/// The Redis to test against, or `None` (after saying so) when there is none.
fn test_url() -> Option<String> {
    crate::common::service("CONFAB_TEST_REDIS_URL")
}

/// A prefix no other test (or earlier run) uses.
fn fresh(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("t{}-{}-{}-{tag}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Relaxed))
}

fn options(url: &str, node_id: &str, heartbeat_ms: u64, ttl_ms: u64) -> ClusterOptions {
    ClusterOptions {
        node_id: node_id.to_owned(),
        redis_url: url.to_owned(),
        pool_size: 2,
        timeout: Duration::from_millis(300),
        heartbeat: Duration::from_millis(heartbeat_ms),
        node_ttl: Duration::from_millis(ttl_ms),
        inbox: 1024,
    }
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Waits until `cond` holds, or panics after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a node and waits until it has heartbeated and subscribed.
async fn node(url: &str, id: &str, heartbeat_ms: u64, ttl_ms: u64) -> (Cluster, mpsc::Receiver<Incoming>) {
    let (c, rx) = Cluster::start(options(url, id, heartbeat_ms, ttl_ms)).unwrap();
    let mut conn = redis_conn(url).await;
    let key = format!("confab:alive:{id}");
    eventually(Duration::from_secs(5), "the node's first heartbeat", || {
        let key = key.clone();
        let mut conn = conn.clone();
        async move { redis::cmd("EXISTS").arg(&key).query_async::<bool>(&mut conn).await.unwrap_or(false) }
    })
    .await;
    eventually(Duration::from_secs(5), "the node's subscription", || async { c.subscribed() }).await;
    // The heartbeat's key can be seen before the node has processed Redis's answer to it; until
    // then the node still takes Redis for down and fails writes at once.
    eventually(Duration::from_secs(5), "the node seeing Redis up", || async { c.redis_up() }).await;
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    (c, rx)
}

fn arcs(v: &[&str]) -> Vec<Arc<str>> {
    v.iter().map(|s| Arc::from(*s)).collect()
}

fn users_of(l: &Located) -> BTreeMap<String, BTreeSet<String>> {
    l.nodes.iter().map(|(n, us)| (n.clone(), us.iter().map(|u| u.to_string()).collect())).collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_and_locate_across_two_nodes() {
    let Some(url) = test_url() else { return };
    let (a_id, b_id) = (fresh("a"), fresh("b"));
    let (a, _arx) = node(&url, &a_id, 200, 2000).await;
    let (b, _brx) = node(&url, &b_id, 200, 2000).await;
    let p = fresh("u");
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(|u| Arc::<str>::from(format!("{p}-{u}")));
    let (laptop, phone) = (Arc::<str>::from("laptop"), Arc::<str>::from("phone"));
    a.register(&alice, &laptop, 1, true);
    a.register(&bob, &laptop, 2, true);
    a.register(&bob, &phone, 3, true);
    b.register(&bob, &phone, 1, true);
    b.register(&carol, &laptop, 7, true);
    a.flush().await.unwrap();
    b.flush().await.unwrap();

    // The key layout: one hash per user, a field per connection.
    let mut conn = redis_conn(&url).await;
    let h: BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(format!("confab:presence:{bob}")).query_async(&mut conn).await.unwrap();
    let want: BTreeMap<String, String> = [
        (format!("{a_id}/2"), "laptop".to_owned()),
        (format!("{a_id}/3"), "phone".to_owned()),
        (format!("{b_id}/1"), "phone".to_owned()),
    ]
    .into();
    assert_eq!(h, want);

    let chunk = vec![alice.clone(), bob.clone(), carol.clone(), dave.clone()];
    let l = a.locate(&chunk).await.unwrap();
    let want: BTreeMap<String, BTreeSet<String>> =
        [(a_id.clone(), set(&[&alice, &bob])), (b_id.clone(), set(&[&bob, &carol]))].into();
    assert_eq!(users_of(&l), want);
    assert_eq!(l.nodes[&a_id].len(), 2, "a user is listed once per node, whatever its connections");
    assert_eq!(l.remote(&a_id).map(|(n, _)| n.to_owned()).collect::<Vec<_>>(), [b_id.as_str()]);
    assert_eq!(users_of(&b.locate(&chunk).await.unwrap()), want, "every node sees the same");

    b.unregister(&bob, 1, true);
    a.unregister(&bob, 2, true);
    b.flush().await.unwrap();
    a.flush().await.unwrap();
    let want: BTreeMap<String, BTreeSet<String>> =
        [(a_id.clone(), set(&[&alice, &bob])), (b_id.clone(), set(&[&carol]))].into();
    assert_eq!(users_of(&a.locate(&chunk).await.unwrap()), want);
    assert!(a.locate(&[]).await.unwrap().nodes.is_empty());
    assert_eq!(a.local_connections(), 2);

    // A graceful shutdown withdraws the node's entries at once.
    b.shutdown().await;
    let want: BTreeMap<String, BTreeSet<String>> = [(a_id.clone(), set(&[&alice, &bob]))].into();
    assert_eq!(users_of(&a.locate(&chunk).await.unwrap()), want);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_entries_vanish_within_the_ttl() {
    let Some(url) = test_url() else { return };
    let (a_id, b_id) = (fresh("a"), fresh("b"));
    let ttl = Duration::from_millis(800);
    let (a, _arx) = node(&url, &a_id, 100, ttl.as_millis() as u64).await;
    let (b, _brx) = node(&url, &b_id, 100, ttl.as_millis() as u64).await;
    let carol = Arc::<str>::from(fresh("carol"));
    b.register(&carol, &Arc::from("phone"), 5, true);
    b.flush().await.unwrap();
    let chunk = vec![carol.clone()];
    assert_eq!(users_of(&a.locate(&chunk).await.unwrap()), [(b_id.clone(), set(&[&carol]))].into());

    // The node dies without a word: its heartbeats stop.
    let died = Instant::now();
    drop(b);
    loop {
        let l = a.locate(&chunk).await.unwrap();
        if l.nodes.is_empty() {
            break;
        }
        assert!(
            died.elapsed() < ttl + Duration::from_millis(400),
            "a dead node still located after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gone = died.elapsed();
    assert!(gone > Duration::from_millis(300), "entries vanished before the TTL could expire ({gone:?})");

    // ... and its entries are deleted lazily.
    let conn = redis_conn(&url).await;
    let key = format!("confab:presence:{carol}");
    eventually(Duration::from_secs(3), "the lazy cleanup", || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move { redis::cmd("HLEN").arg(&key).query_async::<u64>(&mut conn).await.unwrap_or(1) == 0 }
    })
    .await;
    eventually(Duration::from_secs(3), "the dead node's sweep", || {
        let (mut conn, b_id) = (conn.clone(), b_id.clone());
        async move {
            let member: bool =
                redis::cmd("SISMEMBER").arg("confab:nodes").arg(&b_id).query_async(&mut conn).await.unwrap_or(true);
            !member
        }
    })
    .await;
    // The cleanup's reply may still be on its way back when its effects are visible.
    eventually(Duration::from_secs(3), "the cleanup counted", || async {
        a.metrics().presence_cleaned.load(Relaxed) >= 1
    })
    .await;
    a.shutdown().await;
}

/// The fan-out sender keeps the presence it read (see `presence::LocateCache`) but must see every
/// change at once: a device that connects on another node gets the very next delivery, and a
/// node whose last device left gets none, well within a heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fan_out_sender_sees_presence_changes_at_once() {
    let Some(url) = test_url() else { return };
    let ids = [fresh("a"), fresh("b"), fresh("c")];
    // Long heartbeats: the cache is refreshed at least every heartbeat, which must not be what
    // makes this pass.
    let (a, _arx) = node(&url, &ids[0], 10_000, 30_000).await;
    let (b, mut brx) = node(&url, &ids[1], 10_000, 30_000).await;
    let (c, mut crx) = node(&url, &ids[2], 10_000, 30_000).await;
    let carol = Arc::<str>::from(fresh("carol"));
    let users = vec![carol.clone()];
    let frame = ByteString::from_static(r#"{"event":"message","data":{"seq":1}}"#);
    let quiet = Duration::from_millis(300);
    let deliver_and_see = |n: u64| {
        let batch =
            Batch { users: users.clone(), ordered: Some((Arc::from("g_x"), n)), ..Batch::new(frame.clone(), vec![]) };
        assert!(a.deliver(batch));
    };
    let got_seq =
        |batches: &[Batch]| -> Vec<u64> { batches.iter().filter_map(|b| b.ordered.as_ref().map(|o| o.1)).collect() };

    b.register(&carol, &Arc::from("phone"), 1, true);
    b.flush().await.unwrap();
    deliver_and_see(1);
    assert_eq!(got_seq(&drain(&mut brx, quiet).await), vec![1]);
    assert!(drain(&mut crx, Duration::from_millis(50)).await.is_empty());

    // A second device on another node: the next delivery reaches both nodes.
    c.register(&carol, &Arc::from("laptop"), 2, true);
    c.flush().await.unwrap();
    deliver_and_see(2);
    assert_eq!(got_seq(&drain(&mut brx, quiet).await), vec![2]);
    assert_eq!(got_seq(&drain(&mut crx, quiet).await), vec![2]);

    // The first device leaves: that node gets nothing more.
    b.unregister(&carol, 1, true);
    b.flush().await.unwrap();
    deliver_and_see(3);
    assert_eq!(got_seq(&drain(&mut crx, quiet).await), vec![3]);
    assert!(
        drain(&mut brx, Duration::from_millis(100)).await.is_empty(),
        "a node without carol's devices got her batch"
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// The presence transitions of `users` (came online: true) on `rx` until none came for `quiet`.
async fn presence_events(
    rx: &mut mpsc::Receiver<Incoming>,
    users: &[&Arc<str>],
    quiet: Duration,
) -> Vec<(Arc<str>, bool)> {
    let mut out = Vec::new();
    while let Ok(Some(i)) = tokio::time::timeout(quiet, rx.recv()).await {
        if let Incoming::Presence { user, online } = i {
            if users.contains(&&user) {
                out.push((user, online));
            }
        }
    }
    out
}

/// `user.online` / `user.offline` are decided for the whole cluster: a user with connections on
/// two nodes comes online once (where her first connection registered) and goes offline once
/// (where her last one left), whatever each node's own view; the users of a node that dies go
/// offline through the node that sweeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_are_decided_for_the_whole_cluster() {
    let Some(url) = test_url() else { return };
    let (a_id, b_id) = (fresh("a"), fresh("b"));
    let ttl = Duration::from_millis(800);
    let (a, mut arx) = node(&url, &a_id, 100, ttl.as_millis() as u64).await;
    let (b, mut brx) = node(&url, &b_id, 100, ttl.as_millis() as u64).await;
    let (carol, dave) = (Arc::<str>::from(fresh("carol")), Arc::<str>::from(fresh("dave")));
    let who = [&carol, &dave];
    let (phone, laptop) = (Arc::<str>::from("phone"), Arc::<str>::from("laptop"));
    let quiet = Duration::from_millis(250);

    a.register(&carol, &phone, 1, true);
    a.flush().await.unwrap();
    assert_eq!(presence_events(&mut arx, &who, quiet).await, [(carol.clone(), true)]);
    // Her first connection on b, not in the cluster; then a second one on a.
    b.register(&carol, &laptop, 1, true);
    b.flush().await.unwrap();
    a.register(&carol, &laptop, 2, false);
    a.flush().await.unwrap();
    assert_eq!(presence_events(&mut brx, &who, quiet).await, []);
    // Her last connections on a leave; b still holds one.
    a.unregister(&carol, 1, false);
    a.unregister(&carol, 2, true);
    a.flush().await.unwrap();
    assert_eq!(presence_events(&mut arx, &who, quiet).await, []);
    b.unregister(&carol, 1, true);
    b.flush().await.unwrap();
    assert_eq!(presence_events(&mut brx, &who, quiet).await, [(carol.clone(), false)]);
    assert_eq!(presence_events(&mut arx, &who, Duration::from_millis(50)).await, []);

    // b dies without a word while dave's only connection is there: a sweeps b.
    b.register(&dave, &phone, 9, true);
    b.flush().await.unwrap();
    assert_eq!(presence_events(&mut brx, &who, quiet).await, [(dave.clone(), true)]);
    let died = Instant::now();
    drop((b, brx));
    let deadline = died + ttl + Duration::from_secs(3);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = presence_events(&mut arx, &who, Duration::from_millis(50)).await;
    }
    assert_eq!(got, [(dave.clone(), false)], "dave went offline with the dead node");
    assert!(died.elapsed() > Duration::from_millis(300), "swept before the TTL could expire");
    let mut conn = redis_conn(&url).await;
    eventually(Duration::from_secs(3), "the sweep's end", || {
        let (mut conn, b_id) = (conn.clone(), b_id.clone());
        async move {
            let member: bool =
                redis::cmd("SISMEMBER").arg("confab:nodes").arg(&b_id).query_async(&mut conn).await.unwrap_or(true);
            let conns: u64 =
                redis::cmd("HLEN").arg(format!("confab:node-conns:{b_id}")).query_async(&mut conn).await.unwrap_or(1);
            !member && conns == 0
        }
    })
    .await;
    let left: u64 = redis::cmd("HLEN").arg(format!("confab:presence:{dave}")).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);
    assert_eq!(presence_events(&mut arx, &who, quiet).await, [], "announced once");
    assert!(a.metrics().users_offline.load(Relaxed) >= 1, "the sweep's announcement is counted");
    a.shutdown().await;
}

/// A node that crashes and comes back under the same id before its liveness key expired is
/// never swept by the others: its new process removes what the previous one left, and the users
/// left without a connection go offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_removes_what_its_previous_process_left() {
    let Some(url) = test_url() else { return };
    let id = fresh("r");
    let (a, _arx) = node(&url, &id, 100, 10_000).await;
    let (dave, erin) = (Arc::<str>::from(fresh("dave")), Arc::<str>::from(fresh("erin")));
    a.register(&dave, &Arc::from("phone"), 1, true);
    a.register(&erin, &Arc::from("phone"), 2, true);
    a.flush().await.unwrap();
    drop(a);
    // The new process: erin is back on it at once (another connection id), dave is not.
    let (b, mut brx) = Cluster::start(options(&url, &id, 100, 10_000)).unwrap();
    b.register(&erin, &Arc::from("phone"), 3, true);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.contains(&(dave.clone(), false)) && Instant::now() < deadline {
        got.extend(presence_events(&mut brx, &[&dave, &erin], Duration::from_millis(100)).await);
    }
    assert!(got.contains(&(dave.clone(), false)), "dave's entry of the previous process was removed: {got:?}");
    assert!(!got.contains(&(erin.clone(), false)), "erin kept a connection: {got:?}");
    let mut conn = redis_conn(&url).await;
    let fields: Vec<String> =
        redis::cmd("HKEYS").arg(format!("confab:presence:{erin}")).query_async(&mut conn).await.unwrap();
    assert_eq!(fields, [format!("{id}/3")], "only the new process's entry is left");
    let left: u64 = redis::cmd("HLEN").arg(format!("confab:presence:{dave}")).query_async(&mut conn).await.unwrap();
    assert_eq!(left, 0);
    b.shutdown().await;
}

/// Receives batches until none came for `quiet`.
async fn drain(rx: &mut mpsc::Receiver<Incoming>, quiet: Duration) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Ok(Some(i)) = tokio::time::timeout(quiet, rx.recv()).await {
        match i {
            Incoming::Batch(b) => out.push(b),
            Incoming::Broadcast { .. } | Incoming::Presence { .. } | Incoming::Resubscribed => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_sends_one_publish_per_node_per_chunk() {
    let Some(url) = test_url() else { return };
    let ids = [fresh("a"), fresh("b"), fresh("c")];
    let (a, mut arx) = node(&url, &ids[0], 200, 2000).await;
    let (b, mut brx) = node(&url, &ids[1], 200, 2000).await;
    let (c, mut crx) = node(&url, &ids[2], 200, 2000).await;
    // 1200 members: every third on each node, some with two devices, and 30 offline.
    let p = fresh("m");
    let members: Vec<Arc<str>> = (0..1200).map(|i| Arc::from(format!("{p}-{i}"))).collect();
    let nodes = [&a, &b, &c];
    for (i, m) in members.iter().enumerate() {
        if i % 40 == 39 {
            continue;
        }
        nodes[i % 3].register(m, &Arc::from("phone"), i as u64, true);
        if i % 7 == 0 {
            nodes[i % 3].register(m, &Arc::from("laptop"), 10_000 + i as u64, false);
        }
    }
    for n in nodes {
        n.flush().await.unwrap();
    }

    // The group actor's fan-out: chunks of 500, each located and published per node.
    let frame = ByteString::from_static(r#"{"event":"message","data":{"seq":1}}"#);
    let sender = members[3].clone();
    let template = Batch {
        frames: vec![frame.clone()],
        skip: Some((sender.clone(), 3)),
        ordered: Some((Arc::from("g_team"), 1)),
        ..Batch::default()
    };
    let published_before = a.metrics().publishes.load(Relaxed);
    let mut published = 0;
    let mut want_b = BTreeSet::new();
    let mut want_c = BTreeSet::new();
    for chunk in members.chunks(500) {
        let l = a.locate(chunk).await.unwrap();
        published += a.publish_located(&l, &template).await.unwrap();
        want_b.extend(l.nodes[&ids[1]].iter().map(|u| u.to_string()));
        want_c.extend(l.nodes[&ids[2]].iter().map(|u| u.to_string()));
    }
    assert_eq!(published, 6, "3 chunks x 2 other nodes");
    assert_eq!(a.metrics().publishes.load(Relaxed) - published_before, 6);

    let quiet = Duration::from_millis(300);
    for (rx, want, n) in [(&mut brx, &want_b, &b), (&mut crx, &want_c, &c)] {
        let got = drain(rx, quiet).await;
        assert_eq!(got.len(), 3, "one batch per chunk");
        let mut users = BTreeSet::new();
        for batch in &got {
            assert_eq!((batch.from.as_str(), &batch.frames), (ids[0].as_str(), &template.frames));
            assert_eq!((&batch.skip, &batch.ordered), (&template.skip, &template.ordered));
            for u in &batch.users {
                assert!(users.insert(u.to_string()), "{u} received twice");
            }
        }
        assert_eq!(&users, want);
        assert_eq!(users.len(), 1200 / 3 - 10, "every online member of the node, no offline one");
        assert_eq!(n.metrics().batches_received.load(Relaxed), 3);
    }
    assert!(drain(&mut arx, Duration::from_millis(50)).await.is_empty(), "nothing is published to oneself");

    // A single batch to one node.
    let batch = Batch::new(frame.clone(), arcs(&["x", "y"]));
    assert_eq!(a.publish(&ids[1], &batch).await.unwrap(), 1, "one subscriber: the node");
    let got = drain(&mut brx, quiet).await;
    assert_eq!(got, vec![Batch { from: ids[0].clone(), ..batch }]);

    // The same fan-out, fire-and-forget (as an actor does it): deliver() locates and publishes.
    let before = a.metrics().publishes.load(Relaxed);
    for chunk in members.chunks(500) {
        assert!(a.deliver(Batch { users: chunk.to_vec(), ..template.clone() }));
    }
    for (rx, want) in [(&mut brx, &want_b), (&mut crx, &want_c)] {
        let got = drain(rx, quiet).await;
        assert_eq!(got.len(), 3, "one batch per chunk");
        let users: BTreeSet<String> = got.iter().flat_map(|b| b.users.iter().map(|u| u.to_string())).collect();
        assert_eq!(&users, want);
    }
    assert_eq!(a.metrics().publishes.load(Relaxed) - before, 6);
    assert_eq!(a.metrics().outgoing_dropped.load(Relaxed), 0);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_other_node() {
    let Some(url) = test_url() else { return };
    let (a, mut arx) = node(&url, &fresh("a"), 200, 2000).await;
    let (b, mut brx) = node(&url, &fresh("b"), 200, 2000).await;
    let ev = Broadcast::MembershipChanged { conv_id: fresh("g"), seq: 7 };
    a.broadcast(&ev).await.unwrap();
    // Other tests broadcast too: look for ours.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, brx.recv()).await {
            Ok(Some(Incoming::Broadcast { from, event })) if event == ev => {
                assert_eq!(from, a.node_id());
                break;
            }
            Ok(Some(_)) => continue,
            other => panic!("no broadcast received: {other:?}"),
        }
    }
    while let Ok(i) = arx.try_recv() {
        assert!(!matches!(&i, Incoming::Broadcast { event, .. } if *event == ev), "a node ignores its own broadcasts");
    }
    assert!(b.metrics().broadcasts_received.load(Relaxed) >= 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// A redis-server of the test's own, on a spare port, that it can kill and restart.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = OwnRedis { port, dir: tempfile::tempdir().unwrap(), child: None };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(Duration::from_secs(5), "redis-server to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        })
        .await;
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived() {
    if test_url().is_none() {
        return;
    }
    let mut server = OwnRedis::start().await;
    let url = server.url();
    let (a_id, b_id) = ("node-a", "node-b");
    let (a, mut arx) = node(&url, a_id, 100, 1000).await;
    let (b, mut brx) = node(&url, b_id, 100, 1000).await;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(Arc::<str>::from);
    let phone = Arc::<str>::from("phone");
    a.register(&alice, &phone, 1, true);
    b.register(&bob, &phone, 1, true);
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    let chunk = vec![alice.clone(), bob.clone(), carol.clone()];
    let before = users_of(&a.locate(&chunk).await.unwrap());
    assert_eq!(before, [(a_id.to_owned(), set(&["alice"])), (b_id.to_owned(), set(&["bob"]))].into());

    server.kill().await;
    // Calls fail, quickly: the first within the timeout, the next ones at once.
    let t = Instant::now();
    assert!(a.locate(&chunk).await.is_err());
    assert!(t.elapsed() < Duration::from_millis(700), "first failure took {:?}", t.elapsed());
    let t = Instant::now();
    for _ in 0..10 {
        assert!(a.locate(&chunk).await.is_err());
        let batch = Batch::new(ByteString::from_static("{}"), vec![]);
        assert!(a.publish(b_id, &batch).await.is_err());
    }
    assert!(t.elapsed() < Duration::from_millis(200), "failures while down took {:?}", t.elapsed());
    assert!(!a.redis_up());
    // Fire-and-forget deliveries are dropped (and counted), never queued up.
    assert!(a.deliver(Batch::new(ByteString::from_static("{}"), vec![bob.clone()])));
    eventually(Duration::from_secs(2), "the delivery dropped", || async {
        a.metrics().outgoing_dropped.load(Relaxed) == 1
    })
    .await;
    // Connections come and go during the outage: only the local table knows.
    a.register(&carol, &phone, 2, true);
    a.unregister(&alice, 1, true);
    assert!(a.flush().await.is_err(), "Redis did not take the writes");
    // Alice came online before the outage (in Redis); whether carol came and alice went
    // cluster-wide is unknown during it: this node's view decides.
    assert_eq!(
        presence_events(&mut arx, &[&alice, &carol], Duration::from_millis(300)).await,
        [(alice.clone(), true), (carol.clone(), true), (alice.clone(), false)]
    );

    // Redis comes back empty.
    server.restart().await;
    let want: BTreeMap<String, BTreeSet<String>> =
        [(a_id.to_owned(), set(&["carol"])), (b_id.to_owned(), set(&["bob"]))].into();
    let t = Instant::now();
    eventually(Duration::from_secs(10), "presence re-asserted after the restart", || {
        let (a, chunk, want) = (a.clone(), chunk.clone(), want.clone());
        async move { a.locate(&chunk).await.map(|l| users_of(&l) == want).unwrap_or(false) }
    })
    .await;
    eprintln!("presence back {:?} after the restart", t.elapsed());
    assert!(a.redis_up());
    assert!(a.metrics().presence_reasserts.load(Relaxed) >= 1);
    eventually(Duration::from_secs(10), "the subscriber back", || async { b.subscribed() }).await;
    assert!(b.metrics().subscriptions.load(Relaxed) >= 2);
    let mut resubscribed = false;
    let l = a.locate(&chunk).await.unwrap();
    let frame = ByteString::from_static(r#"{"event":"message"}"#);
    assert_eq!(a.publish_located(&l, &Batch::new(frame.clone(), vec![])).await.unwrap(), 1);
    loop {
        match tokio::time::timeout(Duration::from_secs(3), brx.recv()).await {
            Ok(Some(Incoming::Batch(batch))) => {
                assert_eq!((batch.users, batch.frames), (arcs(&["bob"]), vec![frame]));
                break;
            }
            // Presence re-announced by the re-assertion (Redis came back empty), and the notice that
            // the subscription is back (the node re-checks its sessions' access).
            Ok(Some(Incoming::Presence { .. })) => continue,
            Ok(Some(Incoming::Resubscribed)) => resubscribed = true,
            other => panic!("no batch after the restart: {other:?}"),
        }
    }
    assert!(resubscribed, "the node is told its subscription is back (before the batch that came through it)");
    a.shutdown().await;
    b.shutdown().await;
    server.kill().await;
}

/// A disable or revocation broadcast that Redis does not take (this node is cut off from it,
/// other nodes are not) is sent again until it does: it must not be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_broadcast_redis_refused_is_sent_again() {
    let Some(url) = test_url() else { return };
    let target = {
        let hostport = url.trim_start_matches("redis://").split('/').next().unwrap();
        std::net::ToSocketAddrs::to_socket_addrs(hostport).unwrap().next().unwrap()
    };
    let proxy = crate::store_mongo::Proxy::start(target, true).await;
    let via_proxy = format!("redis://{}", proxy.addr);
    let (a, _arx) = node(&via_proxy, &fresh("a"), 100, 10_000).await;
    let (b, mut brx) = node(&url, &fresh("b"), 100, 10_000).await;
    proxy.cut();
    eventually(Duration::from_secs(5), "node a seeing Redis down", || async { !a.redis_up() }).await;
    let user = fresh("mallory");
    let event = Broadcast::CloseUser { user: user.clone(), disabled: true, tokens_before_ms: None, device: None };
    a.announce(event.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, brx.recv()).await {
            Ok(Some(Incoming::Broadcast { event: got, .. })) if got == event => break,
            Ok(Some(_)) => continue,
            other => panic!("the broadcast refused by Redis never arrived: {other:?}"),
        }
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn metrics_render_as_prometheus_text() {
    let m = confab::cluster::ClusterMetrics::default();
    m.publishes.fetch_add(3, Relaxed);
    let text = m.render();
    assert!(
        text.contains("# TYPE confab_cluster_publishes_total counter\nconfab_cluster_publishes_total 3\n"),
        "{text}"
    );
    assert!(text.contains("confab_cluster_redis_up 0\n"), "{text}");
}

/// A tool the deployment checks need is missing: says so, or fails when services are required
/// (`CONFAB_REQUIRE_SERVICES=1`, as in `scripts/test`, which installs them).
fn missing(what: &str) {
    crate::common::skip_without(&format!("{what} is not available"));
}

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// docker-compose.yml as JSON, parsed by PyYAML (`CONFAB_TEST_PYTHON`, else `python3`).
fn compose_file() -> Option<serde_json::Value> {
    let python = std::env::var("CONFAB_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(format!("{ROOT}/docker-compose.yml"))
        .output();
    match out {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            missing(&format!("PyYAML (for {python})"));
            None
        }
        Ok(o) => panic!("docker-compose.yml does not parse: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => {
            missing(&python);
            None
        }
    }
}

/// `${NAME:-default}` as docker compose expands it when NAME is unset.
fn compose_default(v: &str) -> String {
    match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')).and_then(|r| r.split_once(":-")) {
        Some((_, default)) => default.to_owned(),
        None => v.to_owned(),
    }
}

#[test]
fn the_compose_file_describes_a_three_node_cluster() {
    let Some(compose) = compose_file() else { return };
    let services = compose["services"].as_object().expect("services");
    let nodes: Vec<(&String, &serde_json::Value)> =
        services.iter().filter(|(_, s)| s["environment"]["CONFAB__CLUSTER__ENABLED"] == "true").collect();
    assert_eq!(nodes.len(), 3, "three confab nodes");
    let mut ids = BTreeSet::new();
    for (name, s) in &nodes {
        assert_eq!(s["build"], ".", "{name} is built from the Dockerfile");
        let env = s["environment"].as_object().unwrap();
        for key in ["CONFAB__CLUSTER__NODE_ID", "CONFAB__CLUSTER__REDIS_URL", "CONFAB__CLUSTER__REDIS_POOL_SIZE"] {
            assert!(env.contains_key(key), "{name} lacks {key}");
        }
        ids.insert(env["CONFAB__CLUSTER__NODE_ID"].as_str().unwrap().to_owned());
        let deps = s["depends_on"].as_object().expect("depends_on with conditions");
        assert_eq!(deps["mongo-init"]["condition"], "service_completed_successfully", "{name}");
        assert_eq!(deps["redis"]["condition"], "service_healthy", "{name}");
        assert!(s["healthcheck"]["test"].to_string().contains("/readyz"), "{name} is checked on /readyz");

        // The node's configuration: config/cluster.toml (the image's /etc/confab/cluster.toml)
        // under the service's environment, as the node would load it.
        let cmd: Vec<&str> = s["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(cmd, ["--config", "/etc/confab/cluster.toml", "serve"]);
        let vars: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), compose_default(v.as_str().unwrap()))).collect();
        let cfg =
            confab::config::Config::load_with_env(Some(&std::path::Path::new(ROOT).join("config/cluster.toml")), vars)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(cfg.cluster.enabled);
        assert_eq!(cfg.storage.backend, "mongodb");
        assert_eq!(
            (cfg.files.backend.as_str(), cfg.files.s3.bucket.as_str()),
            ("s3", "confab-files"),
            "{name}: files on MinIO"
        );
        let deps = s["depends_on"].as_object().unwrap();
        assert_eq!(deps["minio-init"]["condition"], "service_completed_successfully", "{name}");
        assert_eq!(cfg.cluster.node_id, env["CONFAB__CLUSTER__NODE_ID"].as_str().unwrap());
    }
    assert_eq!(ids.len(), 3, "node ids are unique");
    let mongo = &services["mongo"];
    assert!(mongo["image"].as_str().unwrap().starts_with("mongo:7"));
    assert!(mongo["command"].to_string().contains("--replSet"));
    assert!(services["mongo-init"]["entrypoint"].to_string().contains("rs.initiate"));
    assert!(services["redis"]["image"].as_str().unwrap().starts_with("redis:7"));
    let lb = &services["haproxy"];
    assert!(lb["volumes"].to_string().contains("./deploy/haproxy.cfg:"), "the balancer uses deploy/haproxy.cfg");
    let deps = lb["depends_on"].to_string();
    for (name, _) in &nodes {
        assert!(deps.contains(name.as_str()), "the balancer depends on {name}");
    }
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release"), "a release build");
    assert!(dockerfile.lines().any(|l| l.starts_with("USER ") && !l.contains("root")), "runs as a non-root user");
}

#[test]
fn the_balancer_configuration_is_valid() {
    let path = format!("{ROOT}/deploy/haproxy.cfg");
    let text = std::fs::read_to_string(&path).unwrap();
    for needle in ["option httpchk GET /readyz", "timeout tunnel", "server confab1 confab1:8080", "init-addr"] {
        assert!(text.contains(needle), "deploy/haproxy.cfg lacks {needle:?}");
    }
    let haproxy = ["haproxy", "/usr/sbin/haproxy"]
        .into_iter()
        .find(|b| std::process::Command::new(b).arg("-v").output().is_ok_and(|o| o.status.success()));
    let Some(haproxy) = haproxy else {
        missing("haproxy");
        return;
    };
    let out = std::process::Command::new(haproxy).args(["-c", "-f", &path]).output().unwrap();
    assert!(
        out.status.success(),
        "haproxy -c rejects deploy/haproxy.cfg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_node_reports_redis_and_delivers_what_other_nodes_send() {
    let Some(url) = test_url() else { return };
    let Some(mongo) = crate::store_mongo::test_uri() else { return };
    let id = fresh("n");
    let db = crate::store_mongo::fresh_db();
    let node = crate::common::TestNode::with(&[
        ("CONFAB__STORAGE__BACKEND", "mongodb"),
        ("CONFAB__STORAGE__MONGODB__URI", &mongo),
        ("CONFAB__STORAGE__MONGODB__DATABASE", &db),
        ("CONFAB__CLUSTER__ENABLED", "true"),
        ("CONFAB__CLUSTER__NODE_ID", &id),
        ("CONFAB__CLUSTER__REDIS_URL", &url),
        ("CONFAB__CLUSTER__HEARTBEAT_MS", "100"),
        ("CONFAB__CLUSTER__NODE_TTL_MS", "1000"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = node.get("/readyz").await;
        let subscribed = node.metric("confab_cluster_subscriptions_total").await >= 1.0;
        if status == 200 && body.contains(r#""redis":"up""#) && subscribed {
            assert!(body.contains(&format!(r#""node_id":"{id}""#)), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the node never reported redis up: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = fresh("bob");
    let mut client = node.connect(&bob, "phone").await;
    // Another node publishes a batch for bob to this node's channel.
    let (other, _rx) = node_of(&url, &fresh("o")).await;
    let frame = ByteString::from(format!(r#"{{"event":"message","data":{{"from":"x","to":"{bob}","seq":1}}}}"#));
    let batch = Batch::new(frame, vec![Arc::from(bob.as_str())]);
    assert_eq!(other.publish(&id, &batch).await.unwrap(), 1);
    let ev = client.next_event("message").await;
    assert_eq!(ev["seq"], 1);
    assert!(node.metric("confab_cluster_batches_received_total").await >= 1.0);
    other.shutdown().await;
}

async fn node_of(url: &str, id: &str) -> (Cluster, mpsc::Receiver<Incoming>) {
    node(url, id, 200, 2000).await
}
