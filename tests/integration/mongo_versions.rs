//! Versions on MongoDB without a cluster-wide counter (docs/storage.md, "Versions"): the
//! transactions of two nodes writing to unrelated conversations touch no common document (seen
//! through the driver's command monitoring); sync cursors never skip a change while two nodes
//! write concurrently; a dead node holds the watermark back for at most its lease and cannot
//! commit behind it; a node of the earlier scheme cannot write once this one has started.
//!
//! They need `CONFAB_TEST_MONGODB_URI`, like `store_mongo`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::store::{CommandMonitor, MongoStore};
use confab_actors::metrics::Metrics;
use confab_actors::model::direct_conv_id;
use confab_actors::outbox::Outbox;
use confab_actors::store::Store;
use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;

use crate::store::{direct, DynStore};
use crate::store_mongo::{fresh_db, options, test_uri};

/// The documents each transaction writes, by transaction (`lsid` and `txnNumber`), as
/// `collection filter-or-_id` strings.
#[derive(Default)]
struct Written(Mutex<BTreeMap<String, BTreeSet<String>>>);

fn statements(cmd: &Document, key: &str, field: &str) -> Vec<String> {
    cmd.get_array(key)
        .map(|a| a.iter().filter_map(|s| s.as_document()).filter_map(|s| s.get(field)).map(|q| q.to_string()).collect())
        .unwrap_or_default()
}

fn recorder(written: Arc<Written>) -> CommandMonitor {
    CommandMonitor(Arc::new(move |ev: &CommandEvent| {
        let CommandEvent::Started(e) = ev else { return };
        let cmd = &e.command;
        let (Some(txn), Ok(lsid)) = (cmd.get("txnNumber"), cmd.get_document("lsid")) else { return };
        let coll = cmd.get_str(&e.command_name).unwrap_or("?").to_owned();
        let docs: Vec<String> = match e.command_name.as_str() {
            "update" => statements(cmd, "updates", "q"),
            "delete" => statements(cmd, "deletes", "q"),
            "insert" => {
                statements(cmd, "documents", "_id").into_iter().map(|id| format!("{{\"_id\": {id}}}")).collect()
            }
            "findAndModify" => cmd.get("query").map(|q| vec![q.to_string()]).unwrap_or_default(),
            _ => return,
        };
        let mut map = written.0.lock().unwrap();
        let set = map.entry(format!("{lsid}/{txn}")).or_default();
        set.extend(docs.into_iter().map(|d| format!("{coll} {d}")));
    }))
}

async fn monitored(uri: &str, db: &str, node: &str) -> (Arc<MongoStore>, Arc<Written>) {
    let written = Arc::new(Written::default());
    let mut o = options(uri, db);
    o.node = node.to_owned();
    o.monitor = Some(recorder(written.clone()));
    (Arc::new(MongoStore::open(o, Arc::new(Metrics::default())).await.expect("open")), written)
}

/// A client of the test's own on the same database, for what the store does not expose.
async fn raw(uri: &str, db: &str) -> mongodb::Database {
    mongodb::Client::with_uri_str(uri).await.expect("client").database(db)
}

/// Two nodes sending into unrelated conversations (with webhooks on, so events too): no document
/// is written by a transaction of each. Before this scheme every transaction wrote the version
/// counter `meta {_id: "ver"}` (and the event id counter), which this test would have found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_transactions_share_no_document() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let (a, written_a) = monitored(&uri, &db, "a").await;
    let (b, written_b) = monitored(&uri, &db, "b").await;
    a.enable();
    b.enable();
    for round in 0..3 {
        let (ra, rb) = tokio::join!(
            a.append(direct("alice", "bob", Some(&format!("a{round}")), "hi")),
            b.append(direct("carol", "dave", Some(&format!("b{round}")), "hi")),
        );
        ra.expect("append on a");
        rb.expect("append on b");
        let conv = direct_conv_id("alice", "bob");
        a.mark_read("bob", &conv, round + 1).await.expect("mark_read on a");
    }
    let a_txns = written_a.0.lock().unwrap().clone();
    let b_txns = written_b.0.lock().unwrap().clone();
    assert!(a_txns.len() >= 3 && b_txns.len() >= 3, "transactions seen: {} and {}", a_txns.len(), b_txns.len());
    for (name, txns) in [("a", &a_txns), ("b", &b_txns)] {
        for docs in txns.values() {
            assert!(!docs.iter().any(|d| d.starts_with("meta ")), "{name} wrote a counter: {docs:?}");
            let own = docs.iter().filter(|d| d.starts_with("nodes ")).count();
            assert_eq!(own, 1, "{name}: each transaction publishes its node's closed version once: {docs:?}");
            // Every statement names its document by the collection's shard key (docs/storage.md,
            // "Sharding"), so each goes to one shard.
            for d in docs {
                let (coll, filter) = d.split_once(' ').unwrap();
                let keys: &[&str] = match coll {
                    "user_convs" => &["\"user\"", "\"conv_id\""],
                    // `daily_counts`: the node's own document of the day (`messages/<day>/<node>`).
                    "conversations" | "nodes" | "outbox" | "daily_counts" => &["\"_id\""],
                    // An insert goes where its document's shard key (`conv_id`) says.
                    "messages" => &[],
                    other => panic!("{name}: a send wrote {other}: {d}"),
                };
                assert!(keys.iter().all(|k| filter.contains(k)), "{name}: {d} is not targeted by its shard key");
            }
        }
    }
    for (ta, da) in &a_txns {
        for (tb, db_) in &b_txns {
            let common: Vec<&String> = da.intersection(db_).collect();
            assert!(common.is_empty(), "transactions {ta} (a) and {tb} (b) both wrote {common:?}");
        }
    }
}

/// What a syncing client keeps: its two cursors and what it learned.
#[derive(Default)]
struct Reader {
    since: u64,
    ver: u64,
    seen: HashMap<String, u64>,
    recalled: BTreeSet<u64>,
    rounds: usize,
}

impl Reader {
    /// One sync through `node`: `conversations` from the cursor until nothing is new, then
    /// `changes` of the recalled conversation.
    async fn sync(&mut self, node: &DynStore, hot: &str) {
        self.rounds += 1;
        loop {
            let page = node.list_conversations("reader", self.since, 5).await.expect("list");
            for v in &page {
                self.since = self.since.max(v.cursor());
                self.seen.insert(v.conv.conv_id.clone(), v.conv.last_seq);
            }
            if page.len() < 5 {
                break;
            }
        }
        let ch = node.changes("reader", hot, self.ver).await.expect("changes");
        assert!(ch.ver >= self.ver, "the changes cursor never moves back");
        self.ver = ch.ver;
        self.recalled.extend(ch.recalled);
    }
}

/// While two nodes append and recall concurrently, a reader syncing through both with the
/// cursors (`list_conversations` → its cursor, `changes` → its `ver`) ends with exactly what the
/// store holds: no change was committed below a cursor it had been given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_never_skip_a_change_with_two_nodes_writing() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let nodes: [DynStore; 2] = [
        Arc::new(MongoStore::open(options(&uri, &db), Arc::new(Metrics::default())).await.expect("open")),
        Arc::new(MongoStore::open(options(&uri, &db), Arc::new(Metrics::default())).await.expect("open")),
    ];
    let peers: Vec<String> = (0..12).map(|i| format!("p{i}")).collect();
    let hot = direct_conv_id("reader", "p0");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..4_usize {
        let (node, other) = (nodes[w % 2].clone(), nodes[(w + 1) % 2].clone());
        let peers = peers.clone();
        writers.push(tokio::spawn(async move {
            for j in 0..120_usize {
                let peer = &peers[(w * 7 + j * 5) % peers.len()];
                let m = node.append(direct(peer, "reader", None, "x")).await.expect("append").message;
                if j % 3 == 0 {
                    let hot_msg = node.append(direct("p0", "reader", None, "to recall")).await.expect("append").message;
                    other.recall(&hot_msg.conv_id, hot_msg.seq, "p0").await.expect("recall on the other node");
                }
                let _ = m;
            }
        }));
    }
    let reader = {
        let nodes = nodes.clone();
        let done = done.clone();
        let hot = hot.clone();
        tokio::spawn(async move {
            let mut r = Reader::default();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                r.sync(&nodes[r.rounds % 2], &hot).await;
            }
            r
        })
    };
    for w in writers {
        w.await.expect("writer");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut r = reader.await.expect("reader");
    let rounds = r.rounds;

    // The truth, read without the watermark: each conversation's last seq, and the 160 recalls.
    let mut truth: HashMap<String, u64> = HashMap::new();
    for p in &peers {
        let id = direct_conv_id("reader", p);
        let c = nodes[0].conversation(&id).await.expect("conversation").expect("exists");
        truth.insert(id, c.last_seq);
    }
    // The reader goes on syncing from its cursors: what the watermark still held back arrives
    // within a heartbeat or two; a change committed below a cursor it was given never would.
    let start = Instant::now();
    loop {
        r.sync(&nodes[r.rounds % 2], &hot).await;
        if r.seen == truth && r.recalled.len() == 160 {
            break;
        }
        let missing: Vec<_> = truth.iter().filter(|(k, v)| r.seen.get(*k) != Some(v)).collect();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the reader missed changes: {missing:?}; recalls seen {}",
            r.recalled.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = nodes[1].changes("reader", &hot, 0).await.expect("changes");
    assert_eq!(r.recalled, all.recalled.iter().copied().collect::<BTreeSet<u64>>());
    eprintln!("reader synced {rounds} times while the nodes wrote");
}

/// A node that died leaves its document: it holds the watermark (what sync shows) back until its
/// lease runs out, then the next reader evicts it and raises the floor. A live node that was
/// evicted cannot commit (its transaction finds no document) until it registered again, above
/// everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_watermark_is_cleared_within_its_lease() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let store = Arc::new(MongoStore::open(options(&uri, &db), Arc::new(Metrics::default())).await.expect("open"));
    let m1 = store.append(direct("alice", "bob", None, "one")).await.expect("append").message;
    let page = store.list_conversations("bob", 0, 10).await.expect("list");
    assert_eq!(page.len(), 1, "one node: its own commit is visible at once");
    let cursor = page[0].cursor();

    // A node that died just after committing below m1's version, with 1.5 s of lease left.
    let raw = raw(&uri, &db).await;
    let nodes = raw.collection::<Document>("nodes");
    let lease_left = 1500;
    let until = confab_actors::clock::now_ms() + lease_left;
    let dead_closed = i64::try_from(m1.ver).unwrap() - 1;
    nodes.insert_one(doc! { "_id": "dead.0", "closed": dead_closed, "until": until }).await.expect("insert");

    let m2 = store.append(direct("alice", "bob", None, "two")).await.expect("append").message;
    assert!(m2.ver > m1.ver);
    let start = Instant::now();
    assert!(
        store.list_conversations("bob", cursor, 10).await.expect("list").is_empty(),
        "held back below the dead node's closed version"
    );
    assert!(store.changes("bob", &m2.conv_id, 0).await.expect("changes").ver <= m1.ver);
    let visible_after = loop {
        let page = store.list_conversations("bob", cursor, 10).await.expect("list");
        if let Some(v) = page.first() {
            assert_eq!(v.conv.last_seq, m2.seq);
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the dead node was never evicted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("a dead node with {lease_left} ms of lease left held sync back for {visible_after:?}");
    assert!(visible_after >= Duration::from_millis(1000), "not before its lease ran out: {visible_after:?}");
    assert!(visible_after < Duration::from_millis(lease_left as u64 + 1500), "{visible_after:?}");
    assert!(nodes.find_one(doc! { "_id": "dead.0" }).await.expect("find").is_none(), "evicted");
    let floor = nodes.find_one(doc! { "_id": "~floor" }).await.expect("find").expect("floor");
    assert!(floor.get_i64("closed").map(|c| c >= dead_closed).unwrap_or(false), "{floor}");

    // This node evicted behind its back (as a reader would after a long pause): its next write
    // registers it again and commits above everything.
    let own = nodes
        .find_one(doc! { "_id": { "$ne": "~floor" } })
        .await
        .expect("find")
        .and_then(|d| d.get_str("_id").ok().map(str::to_owned))
        .expect("this node's document");
    nodes.delete_one(doc! { "_id": &own }).await.expect("evict");
    let m3 = store.append(direct("alice", "bob", None, "three")).await.expect("append after eviction").message;
    assert!(m3.ver > m2.ver);
    assert!(nodes.find_one(doc! { "_id": &own }).await.expect("find").is_some(), "registered again");
    let page = store.list_conversations("bob", m2.ver, 10).await.expect("list");
    assert_eq!(page.first().map(|v| v.conv.last_seq), Some(m3.seq));
}

/// Upgrading a database written by the earlier scheme: cursors from it keep working (every new
/// version is above every old one), and the counter is retired (text instead of a number), so a
/// node of the earlier version still running cannot write any more (its `$inc` fails) and
/// cannot commit below the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_counter_scheme_is_taken_over() {
    let Some(uri) = test_uri() else { return };
    let db = fresh_db();
    let raw = raw(&uri, &db).await;
    let meta = raw.collection::<Document>("meta");
    meta.insert_one(doc! { "_id": "ver", "value": 41_i64 }).await.expect("the old counter");

    let store = MongoStore::open(options(&uri, &db), Arc::new(Metrics::default())).await.expect("open");
    let m = store.append(direct("alice", "bob", None, "new")).await.expect("append").message;
    assert!(m.ver > 41);
    let page = store.list_conversations("bob", 41, 10).await.expect("list with an old cursor");
    assert_eq!(page.len(), 1);

    // On MongoDB `$inc` of a string fails (TypeMismatch), which stops an old node's batches;
    // the emulator the tests run on accepts it, so this checks that the counter is retired.
    let counter = meta.find_one(doc! { "_id": "ver" }).await.expect("find").expect("kept");
    assert!(matches!(counter.get("value"), Some(Bson::String(_))), "{counter}");
}
