//! Three `confab` node processes on one MongoDB and one Redis, as behind a load balancer: users
//! on different nodes, one user's devices on different nodes, membership changes racing with
//! sends, `kill -9` of a node and a Redis restart during sends.
//!
//! After each: every acknowledged message is in history, and every device received the
//! conversation's messages once each, in `seq` order.
//!
//! Needs `CONFAB_TEST_MONGODB_URI` and `CONFAB_TEST_REDIS_URL` (the test command starts both);
//! without them the tests are skipped, unless `CONFAB_REQUIRE_SERVICES=1`, which makes that a
//! failure.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{text, BinaryNode, Client};
use crate::http_api::ok_at;

/// The MongoDB and the Redis to test against, or `None` (after saying so) when either is missing.
fn services() -> Option<(String, String)> {
    Some((crate::common::service("CONFAB_TEST_MONGODB_URI")?, crate::common::service("CONFAB_TEST_REDIS_URL")?))
}

/// A redis-server of the test's own, on a spare port, that the test stops and restarts.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(dir: &Path) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = OwnRedis { port, dir: dir.to_path_buf(), child: None };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (./scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `tests/support/txn_proxy.py` in front of the MongoDB emulator: it runs overlapping
/// transactions of different sessions one at a time, as a real MongoDB isolates them (the
/// emulator shares one SQLite connection between sessions). Only multi-node tests need it: a
/// single node's store never overlaps its own transactions.
struct TxnProxy {
    port: u16,
    child: std::process::Child,
}

impl TxnProxy {
    fn start(mongo_uri: &str) -> TxnProxy {
        let upstream = mongo_uri.trim_start_matches("mongodb://").split(['/', '?']).next().unwrap().to_string();
        let (host, port) = upstream.rsplit_once(':').unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let python = std::env::var("CONFAB_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/txn_proxy.py");
        let mut child = std::process::Command::new(python)
            .arg(script)
            .args([listen.to_string(), host.to_string(), port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the transaction proxy did not start (needs pymongo's bson)");
        TxnProxy { port: listen, child }
    }
}

impl Drop for TxnProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nodes of one cluster: same database, same Redis (a redis-server of the cluster's own: clusters
/// of tests running at the same time must not share Redis, or node channels, presence and
/// broadcasts would mix).
struct Cluster {
    _proxy: TxnProxy,
    redis: OwnRedis,
    _redis_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
    mongo: String,
    db: String,
    nodes: Vec<Option<BinaryNode>>,
    /// Extra settings for every node.
    extra: Vec<(String, String)>,
}

impl Cluster {
    /// `n` nodes.
    async fn start(n: usize, mongo: &str) -> Cluster {
        Self::start_with(n, mongo, &[]).await
    }

    /// `n` nodes with `extra` settings.
    async fn start_with(n: usize, mongo: &str, extra: &[(&str, &str)]) -> Cluster {
        let redis_dir = tempfile::tempdir().unwrap();
        let redis = OwnRedis::start(redis_dir.path());
        let dir = tempfile::tempdir().unwrap();
        let db = format!("confab_cluster_{}", confab_actors::engine::random_id().to_lowercase());
        let proxy = TxnProxy::start(mongo);
        let mongo = format!("mongodb://127.0.0.1:{}", proxy.port);
        let extra = extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut c = Cluster { _proxy: proxy, redis, _redis_dir: redis_dir, dir, mongo, db, nodes: Vec::new(), extra };
        for i in 0..n {
            let node = c.spawn(i).await;
            c.nodes.push(Some(node));
        }
        for i in 0..n {
            c.wait_redis_up(i).await;
        }
        c
    }

    /// Waits until node `i` reports Redis up and listens to the node bus (a node serves before
    /// it has reached Redis; until then cluster-wide checks fall back to the node alone).
    async fn wait_redis_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = crate::common::http_get(self.addr(i), "/readyz").await;
            let subscribed = crate::common::metric(self.addr(i), "confab_cluster_subscriptions_total").await >= 1.0;
            if status == 200 && body.contains(r#""redis":"up""#) && subscribed {
                return;
            }
            assert!(Instant::now() < deadline, "node {i} never reported redis up: {status} {body}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the first `n` nodes report Redis down.
    async fn wait_redis_down(&self, n: usize) {
        for i in 0..n {
            let deadline = Instant::now() + Duration::from_secs(10);
            while crate::common::metric(self.addr(i), "confab_cluster_redis_up").await != 0.0 {
                assert!(Instant::now() < deadline, "node {i} never noticed Redis was down");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn spawn(&self, i: usize) -> BinaryNode {
        let id = format!("n{i}");
        let path = self.dir.path().join(&id);
        let keys = crate::http_api::keys();
        let redis = self.redis.url();
        let env = [
            ("CONFAB__API__KEYS", keys.as_str()),
            ("CONFAB__STORAGE__BACKEND", "mongodb"),
            ("CONFAB__STORAGE__MONGODB__URI", self.mongo.as_str()),
            ("CONFAB__STORAGE__MONGODB__DATABASE", self.db.as_str()),
            ("CONFAB__CLUSTER__ENABLED", "true"),
            ("CONFAB__CLUSTER__NODE_ID", id.as_str()),
            ("CONFAB__CLUSTER__REDIS_URL", redis.as_str()),
            ("CONFAB__CLUSTER__REDIS_POOL_SIZE", "4"),
            ("CONFAB__LOG__LEVEL", "info"),
        ];
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        BinaryNode::start(&path, &env).await
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].as_ref().expect("node is down").addr
    }

    async fn connect(&self, i: usize, user: &str, device: &str) -> Client {
        Client::connect(self.addr(i), user, device).await
    }

    /// Connects each `(node, "user/device")`, one after the other.
    async fn connect_each<const N: usize>(&self, devices: [(usize, &str); N]) -> [Client; N] {
        Client::connect_each(devices.map(|(i, d)| (self.addr(i), d))).await
    }

    async fn add_node(&mut self) {
        let node = self.spawn(self.nodes.len()).await;
        self.nodes.push(Some(node));
        self.wait_redis_up(self.nodes.len() - 1).await;
    }

    async fn kill_9(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill_9().await;
        }
    }

    async fn stop(mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.kill_9().await;
            }
        }
    }
}

/// `c` creates a group with `members`; returns its id and its conversation's id.
async fn create_group(c: &mut Client, name: &str, members: impl serde::Serialize) -> (String, String) {
    let g = c.expect_ok("group_create", json!({"name": name, "members": members})).await;
    let gid = g["group"]["id"].as_str().unwrap().to_string();
    let conv = format!("g_{gid}");
    (gid, conv)
}

/// The `seq`s of a conversation's message events a client received, in arrival order.
fn event_seqs(c: &Client, conv: &str) -> Vec<u64> {
    c.log
        .iter()
        .filter(|v| v["event"] == "message" && v["data"]["conv_id"] == conv)
        .map(|v| v["data"]["seq"].as_u64().unwrap())
        .collect()
}

/// Asserts a device got the conversation's events once each, in ascending `seq` order.
fn assert_once_in_order(c: &Client, conv: &str) -> Vec<u64> {
    let seqs = event_seqs(c, conv);
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "{}/{}: events out of order or repeated in {conv}: {seqs:?}", c.user, c.device);
    }
    seqs
}

/// Every message of a conversation, read through history with gap fill.
async fn history_seqs(c: &mut Client, conv: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut after = 0;
    loop {
        let r = c.expect_ok("history", json!({"conv_id": conv, "after": after, "limit": 100})).await;
        for m in r["messages"].as_array().unwrap() {
            after = m["seq"].as_u64().unwrap();
            out.insert(after);
        }
        if !r["has_more"].as_bool().unwrap() {
            return out;
        }
    }
}

/// Sends `n` messages pipelined (all requests first, then every reply) and returns the acked seqs.
async fn send_many(c: &mut Client, target: Value, tag: &str, n: usize) -> Vec<u64> {
    let mut keys = Vec::new();
    for i in 0..n {
        let mut data = target.clone();
        data["client_msg_id"] = json!(format!("{tag}-{i}"));
        data["body"] = text(&format!("{tag} {i}"));
        keys.push(c.send_req("send", data).await);
    }
    let mut acked = Vec::new();
    for k in keys {
        let r = c.reply(&k).await;
        assert!(r.get("error").is_none(), "{tag}: send failed: {r}");
        acked.push(r["result"]["message"]["seq"].as_u64().unwrap());
    }
    acked
}

/// Reads until every listed seq has arrived as an event (or the deadline passes).
async fn await_seqs(c: &mut Client, conv: &str, want: &BTreeSet<u64>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got: BTreeSet<u64> = event_seqs(c, conv).into_iter().collect();
        if want.is_subset(&got) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}/{}: missing events {:?} in {conv}",
            c.user,
            c.device,
            want.difference(&got).collect::<Vec<_>>()
        );
        c.drain_events(50).await;
    }
}

#[tokio::test]
async fn one_to_one_across_nodes() {
    let Some((mongo, _)) = services() else { return };
    let cluster = Cluster::start(3, &mongo).await;
    let [mut alice, mut bob] = cluster.connect_each([(0, "alice/phone"), (1, "bob/phone")]).await;
    let conv = crate::common::direct_id("alice", "bob");

    let (a, b) = tokio::join!(
        send_many(&mut alice, json!({"to": "bob"}), "a", 30),
        send_many(&mut bob, json!({"to": "alice"}), "b", 30)
    );
    let a: BTreeSet<u64> = a.into_iter().collect();
    let b: BTreeSet<u64> = b.into_iter().collect();
    assert_eq!(a.len() + b.len(), 60);
    await_seqs(&mut bob, &conv, &a, Duration::from_secs(10)).await;
    await_seqs(&mut alice, &conv, &b, Duration::from_secs(10)).await;
    // Nobody receives their own messages as events, and the rest arrive once, in order.
    assert_eq!(assert_once_in_order(&bob, &conv).into_iter().collect::<BTreeSet<_>>(), a);
    assert_eq!(assert_once_in_order(&alice, &conv).into_iter().collect::<BTreeSet<_>>(), b);
    let all: BTreeSet<u64> = a.union(&b).copied().collect();
    assert_eq!(history_seqs(&mut alice, &conv).await, all);
    assert_eq!(all, (1..=60).collect(), "seq is contiguous across nodes");
    cluster.stop().await;
}

#[tokio::test]
async fn group_spread_over_every_node_and_devices_on_several_nodes() {
    let Some((mongo, _)) = services() else { return };
    // Fan-out chunks of 4 members (500 in production): each message reaches a node in several
    // chunks, as a large group's do.
    let cluster = Cluster::start_with(3, &mongo, &[("CONFAB__GROUPS__FANOUT_CHUNK", "4")]).await;
    let users: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(cluster.connect(i % 3, u, "phone").await);
    }
    // m0 also has a laptop on another node and a tablet on the third.
    let [mut laptop, mut tablet] = cluster.connect_each([(1, "m0/laptop"), (2, "m0/tablet")]).await;
    let (_, conv) = create_group(&mut clients[0], "spread", &users[1..]).await;

    // Three senders on three nodes at once.
    let (s0, rest) = clients.split_at_mut(1);
    let (s1, rest) = rest.split_at_mut(1);
    let target = json!({"conv_id": conv});
    let (a0, a1, a2) = tokio::join!(
        send_many(&mut s0[0], target.clone(), "x0", 20),
        send_many(&mut s1[0], target.clone(), "x1", 20),
        send_many(&mut rest[0], target.clone(), "x2", 20),
    );
    let acked: Vec<Vec<u64>> = vec![a0, a1, a2];
    let all: BTreeSet<u64> = acked.iter().flatten().copied().collect();
    assert_eq!(all.len(), 60);
    for (i, c) in clients.iter_mut().enumerate() {
        let own: BTreeSet<u64> = acked.get(i).map(|v| v.iter().copied().collect()).unwrap_or_default();
        let want: BTreeSet<u64> = all.difference(&own).copied().collect();
        await_seqs(c, &conv, &want, Duration::from_secs(15)).await;
        let got = assert_once_in_order(c, &conv);
        assert!(got.iter().all(|s| !own.contains(s)), "{}: got its own message as an event", c.user);
    }
    // m0's other devices get everything, m0's own messages included.
    for d in [&mut laptop, &mut tablet] {
        await_seqs(d, &conv, &all, Duration::from_secs(15)).await;
        assert_once_in_order(d, &conv);
    }
    let hist = history_seqs(&mut clients[4], &conv).await;
    assert!(all.is_subset(&hist));
    assert_eq!(hist, (1..=61).collect(), "seq 1 is the group's creation, then 60 contiguous messages");
    cluster.stop().await;
}

#[tokio::test]
async fn membership_changes_racing_with_sends() {
    let Some((mongo, _)) = services() else { return };
    let cluster = Cluster::start(3, &mongo).await;
    let [mut owner, mut sender, mut leaver, mut joiner] =
        cluster.connect_each([(0, "owner/phone"), (1, "sender/phone"), (2, "leaver/phone"), (1, "joiner/phone")]).await;
    let (gid, conv) = create_group(&mut owner, "race", ["sender", "leaver"]).await;

    let target = json!({"conv_id": conv});
    let sends = send_many(&mut sender, target, "s", 40);
    let changes = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let added = owner.expect_ok("group_add", json!({"group_id": gid, "members": ["joiner"]})).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let removed = owner.expect_ok("group_remove", json!({"group_id": gid, "members": ["leaver"]})).await;
        (added["message"]["seq"].as_u64().unwrap(), removed["message"]["seq"].as_u64().unwrap())
    };
    let (acked, (add_seq, remove_seq)) = tokio::join!(sends, changes);
    let acked: BTreeSet<u64> = acked.into_iter().collect();

    // The joiner gets every message after its addition, the leaver none after its removal.
    let after_add: BTreeSet<u64> = acked.iter().copied().filter(|&s| s > add_seq).collect();
    await_seqs(&mut joiner, &conv, &after_add, Duration::from_secs(10)).await;
    let before_remove: BTreeSet<u64> = acked.iter().copied().filter(|&s| s < remove_seq).collect();
    await_seqs(&mut leaver, &conv, &before_remove, Duration::from_secs(10)).await;
    leaver.drain_events(500).await;
    joiner.drain_events(200).await;
    let j = assert_once_in_order(&joiner, &conv);
    assert!(j.iter().all(|&s| s >= add_seq), "joiner got messages from before it joined: {j:?}");
    let l = assert_once_in_order(&leaver, &conv);
    assert!(l.iter().all(|&s| s <= remove_seq), "leaver got messages after its removal: {l:?}");
    assert!(acked.is_subset(&history_seqs(&mut owner, &conv).await));
    cluster.stop().await;
}

#[tokio::test]
async fn kill_9_of_a_node_during_sends_loses_nothing() {
    let Some((mongo, _)) = services() else { return };
    let mut cluster = Cluster::start(3, &mongo).await;
    let members = ["k0", "k1", "k2", "k3", "k4", "k5"];
    let mut clients = Vec::new();
    for (i, u) in members.iter().enumerate() {
        clients.push(cluster.connect(i % 3, u, "phone").await);
    }
    let (_, conv) = create_group(&mut clients[0], "crash", &members[1..]).await;

    // k1 (on node 1) pipelines sends; node 1 dies in the middle of them.
    let victim = &mut clients[1];
    let mut keys = Vec::new();
    for i in 0..200 {
        let data = json!({"conv_id": conv, "client_msg_id": format!("k1-{i}"), "body": text("x")});
        match victim.try_send_req("send", data).await {
            Some(k) => keys.push(k),
            None => break,
        }
    }
    // k0 (on node 0) sends at the same time.
    let k0_sends = send_many(&mut clients[0], json!({"conv_id": conv}), "k0", 20);
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.kill_9(1).await;
    };
    let (k0_acked, ()) = tokio::join!(k0_sends, kill);
    let mut acked: BTreeSet<u64> = k0_acked.into_iter().collect();
    let victim = &mut clients[1];
    for k in keys {
        match victim.try_reply(&k, Duration::from_secs(2)).await {
            Some(r) if r.get("result").is_some() => {
                acked.insert(r["result"]["message"]["seq"].as_u64().unwrap());
            }
            _ => break,
        }
    }
    // The dead node's users reconnect through the balancer to a live node and sync.
    for (i, u) in members.iter().enumerate() {
        if i % 3 == 1 {
            let mut again = cluster.connect(2, u, "phone").await;
            let hist = history_seqs(&mut again, &conv).await;
            assert!(acked.is_subset(&hist), "{u}: acknowledged messages missing after the crash");
        }
    }
    // The dead node's version watermark holds `conversations` back for at most its lease (5 s,
    // docs/storage.md): then a live node evicts it and the list shows the last message.
    let since_kill = Instant::now();
    let after = send_many(&mut clients[0], json!({"conv_id": conv}), "after", 1).await;
    let newest = after.iter().chain(acked.iter()).max().copied().unwrap_or(0);
    let mut k4 = cluster.connect(2, "k4", "tablet").await;
    loop {
        let r = k4.expect_ok("conversations", json!({"since": 0, "limit": 100})).await;
        let last = r["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conv_id"] == conv.as_str())
            .map(|c| c["last_seq"].as_u64().unwrap());
        if last.is_some_and(|l| l >= newest) {
            break;
        }
        assert!(since_kill.elapsed() < Duration::from_secs(8), "the dead node held sync back: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("conversations showed a message sent after the kill {:?} after the kill", since_kill.elapsed());
    // Devices on live nodes got what they got once each, in order, and history has everything.
    for (i, c) in clients.iter_mut().enumerate() {
        if i % 3 != 1 {
            c.drain_events(300).await;
            assert_once_in_order(c, &conv);
            assert!(acked.is_subset(&history_seqs(c, &conv).await));
        }
    }
    cluster.stop().await;
}

#[tokio::test]
async fn redis_stopped_and_restarted_during_sends() {
    let Some((mongo, _)) = services() else { return };
    let mut cluster = Cluster::start(2, &mongo).await;
    let [mut alice, mut carol, mut bob] =
        cluster.connect_each([(0, "alice/phone"), (0, "carol/phone"), (1, "bob/phone")]).await;
    let (_, conv) = create_group(&mut alice, "r", ["bob", "carol"]).await;
    let target = json!({"conv_id": conv});

    let before: BTreeSet<u64> = send_many(&mut alice, target.clone(), "before", 5).await.into_iter().collect();
    await_seqs(&mut bob, &conv, &before, Duration::from_secs(10)).await;

    // Redis down: sends still succeed, local users still get them live.
    cluster.redis.kill();
    let during: BTreeSet<u64> = send_many(&mut alice, target.clone(), "during", 5).await.into_iter().collect();
    let local: BTreeSet<u64> = before.union(&during).copied().collect();
    await_seqs(&mut carol, &conv, &local, Duration::from_secs(10)).await;
    // The other node's user has them through sync.
    assert!(during.is_subset(&history_seqs(&mut bob, &conv).await));

    // Redis back: cross-node delivery resumes by itself.
    cluster.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    loop {
        round += 1;
        let after: BTreeSet<u64> =
            send_many(&mut alice, target.clone(), &format!("after{round}"), 1).await.into_iter().collect();
        bob.drain_events(300).await;
        let got: BTreeSet<u64> = event_seqs(&bob, &conv).into_iter().collect();
        if after.is_subset(&got) {
            break;
        }
        assert!(Instant::now() < deadline, "cross-node delivery did not resume after Redis returned");
    }
    assert_once_in_order(&bob, &conv);
    assert_once_in_order(&carol, &conv);
    cluster.stop().await;
}

#[tokio::test]
async fn signed_requests_and_access_changes_hold_across_nodes() {
    let Some((mongo, _)) = services() else { return };
    let cluster = Cluster::start(2, &mongo).await;
    // A signed request is accepted once by the whole cluster: replayed to another node, refused.
    let req = crate::http_api::Req::new("GET", "/api/v1/users/nobody/devices", None);
    assert_eq!(req.send(cluster.addr(0)).await.0, 200);
    let (status, body) = req.send(cluster.addr(1)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("nonce_replayed")), "{body}");

    // Disabling a user on one node closes its sessions on every node.
    let [mut far, mut near] = cluster.connect_each([(1, "mallory/phone"), (0, "mallory/laptop")]).await;
    // Either node lists the devices on both.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = ok_at(cluster.addr(1), "GET", "/api/v1/users/mallory/devices", None).await;
        let mut seen: Vec<(String, String)> = body["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["device"].as_str().unwrap().to_string(), d["node"].as_str().unwrap().to_string()))
            .collect();
        seen.sort();
        if seen == [("laptop".to_string(), "n0".to_string()), ("phone".to_string(), "n1".to_string())] {
            break;
        }
        assert!(Instant::now() < deadline, "devices across nodes: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One device forced offline from the other node: only that device's session closes.
    let [mut far_pad] = cluster.connect_each([(1, "mallory/pad")]).await;
    ok_at(cluster.addr(0), "POST", "/api/v1/users/mallory/devices/pad/revoke", None).await;
    assert_eq!(far_pad.wait_closed(Duration::from_secs(5)).await, Some(1008), "the other node kept the device");
    far.expect_ok("ping", serde_json::json!({})).await;
    near.expect_ok("ping", serde_json::json!({})).await;
    ok_at(cluster.addr(0), "POST", "/api/v1/users/mallory/disable", None).await;
    assert_eq!(near.wait_closed(Duration::from_secs(5)).await, Some(1008));
    assert_eq!(far.wait_closed(Duration::from_secs(5)).await, Some(1008), "the other node kept the session");
    cluster.stop().await;
}

/// A disable made on one node while Redis is down cannot be broadcast: it still reaches the
/// sessions on the other node once Redis is back (the broadcast is sent again until Redis takes
/// it, and the other node re-checks its sessions when its subscription returns).
#[tokio::test]
async fn a_disable_made_while_redis_is_down_reaches_every_node_when_it_returns() {
    let Some((mongo, _)) = services() else { return };
    let mut cluster = Cluster::start(2, &mongo).await;
    let mut far = cluster.connect(1, "mallory", "phone").await;
    far.expect_ok("ping", json!({})).await;
    cluster.redis.kill();
    // Both nodes notice Redis is gone before the disable (so its broadcast fails).
    cluster.wait_redis_down(2).await;
    ok_at(cluster.addr(0), "POST", "/api/v1/users/mallory/disable", None).await;
    // Nothing can reach node 1 yet; its session is still open.
    assert!(far.wait_closed(Duration::from_millis(1500)).await.is_none(), "closed without Redis?");
    cluster.redis.restart();
    assert_eq!(far.wait_closed(Duration::from_secs(10)).await, Some(1008), "the disable never reached node 1");
    cluster.stop().await;
}

/// With Redis down, a conversation written on two nodes keeps its acknowledgements fast: a node
/// reads the other node's messages back from the store at once instead of waiting for a fan-out
/// that cannot come.
#[tokio::test]
async fn acks_stay_fast_while_redis_is_down() {
    let Some((mongo, _)) = services() else { return };
    let mut cluster = Cluster::start_with(2, &mongo, crate::common::NO_RATE_LIMITS).await;
    let [mut a, mut b] = cluster.connect_each([(0, "alice/phone"), (1, "bob/phone")]).await;
    a.send_msg(json!({"to": "bob"}), "warm-a", text("hi")).await;
    b.send_msg(json!({"to": "alice"}), "warm-b", text("hi")).await;
    cluster.redis.kill();
    cluster.wait_redis_down(2).await;
    // Alternate senders on the two nodes: every ack follows a message the other node stored.
    let mut slow = Vec::new();
    for i in 0..10 {
        for (c, tag) in [(&mut a, "a"), (&mut b, "b")] {
            let to = if tag == "a" { "bob" } else { "alice" };
            let t = Instant::now();
            c.send_msg(json!({"to": to}), &format!("{tag}{i}"), text("during")).await;
            slow.push(t.elapsed());
        }
    }
    slow.sort();
    let median = slow[slow.len() / 2];
    eprintln!("acks during the Redis outage: median {median:?}, max {:?}", slow.last().unwrap());
    // Waiting for the other node's fan-out took at least the gap wait (100 ms) per ack.
    assert!(median < Duration::from_millis(100), "acks wait for a fan-out that cannot come: median {median:?}");
    cluster.redis.restart();
    cluster.stop().await;
}

/// The webhook dispatcher runs on one node (a lease in the store); when that node dies, another
/// takes over within 5 seconds with the default lease, and nothing is missed.
#[tokio::test]
async fn a_dead_nodes_webhook_dispatcher_is_taken_over_within_5_seconds() {
    let Some((mongo, _)) = services() else { return };
    let receiver = crate::webhooks::Receiver::start().await;
    let eps = crate::webhooks::endpoints(&receiver, &["message.sent"]);
    let env = [("CONFAB__WEBHOOKS__ENDPOINTS", eps.as_str()), ("CONFAB__WEBHOOKS__POLL_INTERVAL_MS", "50")];
    // Node 0 alone first, so it holds the dispatcher's lease.
    let mut cluster = Cluster::start_with(1, &mongo, &env).await;
    let mut alice = cluster.connect(0, "alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "w1", text("one")).await;
    receiver.wait_for("the first event", 10, |e| e.len() == 1).await;
    cluster.add_node().await;
    cluster.kill_9(0).await;
    let mut bob = cluster.connect(1, "bob", "phone").await;
    let killed = Instant::now();
    bob.send_msg(json!({"to": "alice"}), "w2", text("two")).await;
    let events = receiver.wait_for("the event stored after the crash", 10, |e| e.len() == 2).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(5500), "the dispatcher was taken over after {took:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2]);
    cluster.stop().await;
}

/// `user.online` / `user.offline` webhooks are decided for the whole cluster: a user with
/// devices on two nodes is online once and offline once, when her last device leaves; the users
/// of a node killed with `kill -9` go offline within seconds, through the node that sweeps it.
#[tokio::test]
async fn presence_webhooks_are_decided_for_the_whole_cluster() {
    let Some((mongo, _)) = services() else { return };
    let receiver = crate::webhooks::Receiver::start().await;
    let eps = crate::webhooks::endpoints(&receiver, &["user.online", "user.offline"]);
    let env = [
        ("CONFAB__WEBHOOKS__ENDPOINTS", eps.as_str()),
        ("CONFAB__WEBHOOKS__POLL_INTERVAL_MS", "50"),
        ("CONFAB__CLUSTER__HEARTBEAT_MS", "200"),
        ("CONFAB__CLUSTER__NODE_TTL_MS", "1000"),
    ];
    let mut cluster = Cluster::start_with(3, &mongo, &env).await;
    let count = |events: &[Value], kind: &str, user: &str| {
        events.iter().filter(|e| e["type"] == kind && e["data"]["user"] == user).count()
    };
    let [phone, laptop, bob] = cluster.connect_each([(0, "alice/phone"), (1, "alice/laptop"), (2, "bob/phone")]).await;
    receiver
        .wait_for("alice and bob online", 20, |e| {
            count(e, "user.online", "alice") == 1 && count(e, "user.online", "bob") == 1
        })
        .await;
    // Alice leaves node 0 but is still on node 1: still online.
    phone.close().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = receiver.wait_for("nothing new", 1, |_| true).await;
    assert_eq!(count(&events, "user.offline", "alice"), 0, "alice still has a device: {events:#?}");
    assert_eq!(count(&events, "user.online", "alice"), 1, "online once: {events:#?}");
    laptop.close().await;
    receiver.wait_for("alice offline", 20, |e| count(e, "user.offline", "alice") == 1).await;

    // Bob's only node dies.
    let killed = Instant::now();
    cluster.kill_9(2).await;
    drop(bob);
    let events = receiver.wait_for("bob offline after the crash", 30, |e| count(e, "user.offline", "bob") == 1).await;
    eprintln!("bob offline {:?} after the kill", killed.elapsed());
    let order: Vec<(String, String)> = events
        .iter()
        .map(|e| (e["data"]["user"].as_str().unwrap().to_owned(), e["type"].as_str().unwrap().to_owned()))
        .collect();
    let mine = |u: &str| order.iter().filter(|(w, _)| w == u).map(|(_, k)| k.as_str()).collect::<Vec<_>>();
    assert_eq!(mine("alice"), ["user.online", "user.offline"]);
    assert_eq!(mine("bob"), ["user.online", "user.offline"]);

    // A graceful stop (SIGTERM): the node's users go offline as it leaves.
    let mut carol = cluster.connect(1, "carol", "phone").await;
    receiver.wait_for("carol online", 20, |e| count(e, "user.online", "carol") == 1).await;
    let node = cluster.nodes[1].take().expect("node 1 runs");
    let stopping = tokio::spawn(node.stop());
    assert_eq!(carol.wait_closed(Duration::from_secs(5)).await, Some(1001));
    stopping.await.unwrap();
    receiver.wait_for("carol offline after the stop", 20, |e| count(e, "user.offline", "carol") == 1).await;
    cluster.stop().await;
}

/// A block made on one node holds on the node where the blocked user is connected, whose actor of
/// the conversation is live (and caches the relation), at once: the change is broadcast like a
/// membership change.
#[tokio::test]
async fn a_block_made_on_one_node_holds_on_every_node() {
    let Some((mongo, _)) = services() else { return };
    let cluster = Cluster::start(2, &mongo).await;
    let [mut alice, mut bob] = cluster.connect_each([(1, "alice/phone"), (0, "bob/phone")]).await;
    alice.send_msg(json!({"to": "bob"}), "a1", text("hi")).await;
    bob.next_event("message").await;
    bob.expect_ok("block", json!({"user_id": "alice"})).await;
    // The broadcast is asynchronous but fast: the first send after a short moment is refused.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    loop {
        n += 1;
        let r = alice
            .request("send", json!({"to": "bob", "client_msg_id": format!("a{}", n + 1), "body": text("?")}))
            .await;
        if r["error"]["code"] == "blocked" {
            break;
        }
        assert!(Instant::now() < deadline, "alice's node never learnt of the block: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("refused after {n} send(s)");
    assert!(n <= 2, "the block took {n} sends to hold on the other node");
    bob.expect_ok("unblock", json!({"user_id": "alice"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    alice.send_msg(json!({"to": "bob"}), "after", text("thanks")).await;
    cluster.stop().await;
}

/// A mute and a ban made on one node hold on the node where the member sends (its group actor
/// live), through the membership broadcast.
#[tokio::test]
async fn a_mute_and_a_ban_made_on_one_node_hold_on_every_node() {
    let Some((mongo, _)) = services() else { return };
    let cluster = Cluster::start(2, &mongo).await;
    let [mut own, mut bob] = cluster.connect_each([(0, "own/phone"), (1, "bob/phone")]).await;
    own.expect_ok("group_create", json!({"group_id": "club", "name": "Club", "members": ["bob"]})).await;
    bob.send_msg(json!({"conv_id": "g_club"}), "b0", text("hi")).await;
    let until = crate::http_api::now() as i64 * 1000 + 60_000;
    own.expect_ok("group_mute", json!({"group_id": "club", "members": ["bob"], "until": until})).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut n = 0;
    loop {
        n += 1;
        let r = bob
            .request("send", json!({"conv_id": "g_club", "client_msg_id": format!("b{n}"), "body": text("?")}))
            .await;
        if r["error"]["code"] == "muted" {
            break;
        }
        assert!(Instant::now() < deadline, "bob's node never learnt of the mute: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("muted after {n} send(s)");
    own.expect_ok("group_ban", json!({"group_id": "club", "members": ["bob"]})).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = bob.request("send", json!({"conv_id": "g_club", "client_msg_id": "late", "body": text("?")})).await;
        if r["error"]["code"] == "not_member" {
            break;
        }
        assert!(Instant::now() < deadline, "bob's node never learnt of the ban: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A settings change reaches the other node's actor too: carol joins there once it is free.
    let mut carol = cluster.connect(1, "carol", "phone").await;
    carol.expect_err("group_join", json!({"group_id": "club"}), "forbidden").await;
    own.expect_ok("group_update", json!({"group_id": "club", "join_mode": "free"})).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = carol.request("group_join", json!({"group_id": "club"})).await;
        if r.get("error").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "carol's node never learnt the group is free: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.stop().await;
}

/// Files on S3: uploaded through one node, a message naming it sent there, and the link asked
/// for and the file downloaded through the other.
#[tokio::test]
async fn a_file_uploaded_on_one_node_is_served_by_another_from_s3() {
    let Some((mongo, _)) = services() else { return };
    let Some(s3) = crate::files::s3_env().await else { return };
    let extra: Vec<(&str, &str)> = s3.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cluster = Cluster::start_with(2, &mongo, &extra).await;
    let pdf = b"%PDF-1.7\nshared between nodes".to_vec();
    let r = reqwest::Client::new()
        .post(format!("http://{}/files?kind=file&name=a.pdf", cluster.addr(0)))
        .bearer_auth(crate::common::token("alice", "phone"))
        .body(pdf.clone())
        .send()
        .await
        .unwrap();
    let up: serde_json::Value = r.json().await.unwrap();
    let id = up["file"]["id"].as_str().expect("uploaded").to_owned();
    let [mut alice, mut bob] = cluster.connect_each([(0, "alice/phone"), (1, "bob/phone")]).await;
    let m = alice
        .send_msg(serde_json::json!({"to": "bob"}), "f1", serde_json::json!({"type": "file", "file_id": id}))
        .await;
    bob.next_event("message").await;
    let conv = crate::common::direct_id("alice", "bob");
    let link: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/files/{id}/link?conv_id={conv}&seq={}", cluster.addr(1), m["seq"]))
        .bearer_auth(crate::common::token("bob", "phone"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = link["url"].as_str().expect("a link");
    let got = reqwest::get(format!("http://{}{url}", cluster.addr(1))).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.to_vec(), pdf);
    cluster.stop().await;
}

/// The sum of a counter over the running nodes (the pusher runs on one of them).
async fn counter_sum(c: &Cluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for n in c.nodes.iter().flatten() {
        sum += crate::push::counter(n.addr, name).await;
    }
    sum
}

async fn wait_counter_sum(c: &Cluster, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = counter_sum(c, name).await;
        if v >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}, below {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Push across two nodes: a device connected to the other node gets no notification, a read
/// on another device of another node before the push cancels it, an unread message is pushed
/// once, and when a node dies the other takes the pusher over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_decisions_hold_across_nodes_and_the_pusher_fails_over() {
    let Some((mongo, _)) = services() else { return };
    let relay = crate::push_receivers::FakeRelay::start_default().await;
    let mut env = relay.env("huawei");
    for (k, v) in [
        ("CONFAB__PUSH__DELAY_MS", "1500"),
        ("CONFAB__PUSH__POLL_INTERVAL_MS", "50"),
        ("CONFAB__PUSH__LEASE_TTL_MS", "1000"),
    ] {
        env.push((k.into(), v.into()));
    }
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cluster = Cluster::start_with(2, &mongo, &extra).await;
    let conv = crate::common::direct_id("alice", "bob");
    let [mut alice, mut phone] = cluster.connect_each([(0, "alice/phone"), (1, "bob/phone")]).await;
    phone.expect_ok("push_register", json!({"provider": "huawei", "token": "hw-bob"})).await;
    // Connected on node 1: no notification, whichever node pushes.
    alice.send_msg(json!({"to": "bob"}), "p1", text("here?")).await;
    phone.next_event("message").await;
    wait_counter_sum(&cluster, "confab_push_skipped_total{reason=\"online\"}", 1.0).await;
    phone.close().await;
    // Read on the web (node 0) before the push went out: none.
    let mut web = cluster.connect(0, "bob", "web").await;
    let m = alice.send_msg(json!({"to": "bob"}), "p2", text("read me")).await;
    web.next_event("message").await;
    web.expect_ok("read", json!({"conv_id": conv, "seq": m["seq"]})).await;
    wait_counter_sum(&cluster, "confab_push_skipped_total{reason=\"read\"}", 1.0).await;
    web.close().await;
    // Nobody connected: pushed, once.
    alice.send_msg(json!({"to": "bob"}), "p3", text("unread")).await;
    relay.wait_for("the notification", 15, |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(relay.received().len(), 1, "{:?}", relay.received());
    assert_eq!(relay.received()[0]["notification"]["body"], "unread");
    // Muted on node 1: only a mention goes out.
    let mut web = cluster.connect(1, "bob", "web").await;
    web.expect_ok("set_flags", json!({"conv_id": conv, "muted": true})).await;
    web.close().await;
    alice.send_msg(json!({"to": "bob"}), "p5", text("quiet")).await;
    wait_counter_sum(&cluster, "confab_push_skipped_total{reason=\"muted\"}", 1.0).await;
    let mention = json!({"type": "text", "text": "@bob look", "mentions": ["bob"]});
    alice.send_msg(json!({"to": "bob"}), "p6", mention).await;
    let got = relay.wait_for("the mention", 15, |r| r.len() >= 2).await;
    assert_eq!(got[1]["notification"]["body"], "[@] @bob look");
    // The vendor says the token is gone: every node sees the registration removed.
    relay.set_invalid("hw-bob");
    let mention = json!({"type": "text", "text": "@bob again", "mentions": ["bob"]});
    alice.send_msg(json!({"to": "bob"}), "p7", mention).await;
    wait_counter_sum(&cluster, "confab_push_failed_total{reason=\"invalid_token\"}", 1.0).await;
    for i in 0..2 {
        let list = ok_at(cluster.addr(i), "GET", "/api/v1/users/bob/push", None).await;
        assert_eq!(list["registrations"], json!([]), "node {i}: {list}");
    }
    // A new token (over the HTTP API, on node 1), unmuted.
    let reg = json!({"provider": "huawei", "token": "hw-bob-2"});
    ok_at(cluster.addr(1), "PUT", "/api/v1/users/bob/devices/phone/push", Some(reg)).await;
    let mut web = cluster.connect(1, "bob", "web").await;
    web.expect_ok("set_flags", json!({"conv_id": conv, "muted": false})).await;
    web.close().await;
    // Node 0 dies; node 1 pushes (taking the lease over if node 0 held it).
    alice.close().await;
    cluster.kill_9(0).await;
    let mut alice = cluster.connect(1, "alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "p4", text("after the failover")).await;
    let got = relay.wait_for("the notification after the failover", 20, |r| r.len() >= 3).await;
    assert_eq!(got[2]["notification"]["body"], "after the failover");
    assert_eq!(got[2]["token"], "hw-bob-2");
    assert_eq!(relay.rejected(), 0);
    cluster.stop().await;
}
