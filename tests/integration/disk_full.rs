//! Disk full, with a real filesystem limit: the node's file size limit (`RLIMIT_FSIZE`, lowered
//! with util-linux's `prlimit`) is set to the database's current size, so every write that would
//! grow `confab.redb` fails with `EFBIG`, as it would with `ENOSPC` on a full disk. The embedded
//! store must answer `unavailable` (never acknowledge) at once, report not ready, keep its log
//! short, and be back by itself once the limit is lifted, with every acknowledged message stored
//! exactly once.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{direct_id, http_get, metric, text, BinaryNode, Client};

/// Sets the soft `RLIMIT_FSIZE` of process `pid` (`None`: unlimited). Only the soft limit: it can
/// be raised again up to the hard limit (unlimited) without privileges.
fn set_file_size_limit(pid: u32, bytes: Option<u64>) {
    let value = bytes.map_or_else(|| "unlimited".to_owned(), |b| b.to_string());
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={value}:"))
        .output()
        .expect("this test needs prlimit (util-linux) on the PATH");
    assert!(out.status.success(), "prlimit failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A body of about 4 KB: every message needs a new page, so the database's free pages run out
/// quickly and it has to grow.
fn big(i: usize) -> Value {
    text(&format!("{i:06}-{}", "x".repeat(4000)))
}

/// Alice's sends to Bob, numbered `k-0`, `k-1`, ..., and the ones acknowledged.
struct Sends {
    next: usize,
    acked: Vec<(String, u64)>,
}

impl Sends {
    /// One send, waiting at most 5 s for its answer: `Ok(seq)` when acknowledged, else the error
    /// code.
    async fn one(&mut self, c: &mut Client) -> Result<u64, String> {
        let (i, cmid) = (self.next, format!("k-{}", self.next));
        self.next += 1;
        let key = c.send_req("send", json!({"to": "bob", "client_msg_id": cmid, "body": big(i)})).await;
        let r = c.try_reply(&key, Duration::from_secs(5)).await.unwrap_or_else(|| panic!("no answer to {cmid}"));
        match r.get("error") {
            None => {
                assert_eq!(r["result"]["message"]["client_msg_id"], cmid.as_str());
                let seq = r["result"]["message"]["seq"].as_u64().unwrap();
                self.acked.push((cmid, seq));
                Ok(seq)
            }
            Some(e) => Err(e["code"].as_str().unwrap().to_owned()),
        }
    }
}

fn log_lines(dir: &Path) -> usize {
    BinaryNode::log(dir).lines().count()
}

#[tokio::test]
async fn a_full_disk_makes_the_store_unavailable_and_it_recovers_by_itself_once_there_is_space() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // info: the recovery is logged at info.
    // Sends as fast as the store takes them: no rate limit in the way.
    let mut env = crate::common::NO_RATE_LIMITS.to_vec();
    env.push(("CONFAB__LOG__LEVEL", "info"));
    let node = BinaryNode::start(&dir, &env).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut sends = Sends { next: 0, acked: Vec::new() };
    for _ in 0..20 {
        sends.one(&mut alice).await.unwrap();
    }
    assert_eq!(http_get(node.addr, "/readyz").await.0, 200);

    // The disk is "full": the database file cannot grow any more.
    let db_size = std::fs::metadata(dir.join("confab.redb")).unwrap().len();
    set_file_size_limit(node.pid(), Some(db_size));
    let lines_before = log_lines(&dir);

    // Sends go on succeeding while the file has free pages, then fail.
    let fill_started = Instant::now();
    loop {
        match sends.one(&mut alice).await {
            Ok(_) => assert!(fill_started.elapsed() < Duration::from_secs(30), "the store never failed"),
            Err(code) => {
                assert_eq!(code, "unavailable");
                break;
            }
        }
    }
    let (acked_before_outage, filled_in) = (sends.acked.len(), fill_started.elapsed());

    // The outage: every send answers `unavailable` at once, and the node is not ready.
    let outage_started = Instant::now();
    let (mut failed, mut slowest) = (0, Duration::ZERO);
    while outage_started.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let r = sends.one(&mut alice).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(r, Err("unavailable".to_owned()), "a send during the outage; log:\n{}", BinaryNode::log(&dir));
        failed += 1;
        let (status, body) = http_get(node.addr, "/readyz").await;
        assert_eq!(status, 503, "/readyz during the outage: {body}");
        if failed == 1 {
            // Reads too: nothing is served from a database that is being re-opened.
            alice.expect_err("history", json!({"conv_id": direct_id("alice", "bob")}), "unavailable").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage = outage_started.elapsed();
    assert_eq!(sends.acked.len(), acked_before_outage);
    assert!(failed >= 20, "only {failed} sends during the outage");
    assert!(slowest < Duration::from_secs(1), "a send took {slowest:?} to fail");
    assert_eq!(metric(node.addr, "confab_store_embedded_healthy").await, 0.0);
    let outage_log = BinaryNode::log(&dir).lines().skip(lines_before).collect::<Vec<_>>().join("\n");
    let outage_lines = outage_log.lines().count();
    assert!(
        (1..=4).contains(&outage_lines),
        "{outage_lines} log lines for {failed} failed sends in {outage:?}:\n{outage_log}"
    );

    // Space is back: the store recovers by itself within seconds.
    set_file_size_limit(node.pid(), None);
    let restored = Instant::now();
    let recovered = loop {
        let ready = http_get(node.addr, "/readyz").await.0 == 200;
        if ready && sends.one(&mut alice).await.is_ok() {
            break restored.elapsed();
        }
        assert!(restored.elapsed() < Duration::from_secs(15), "the store did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "disk full: {acked_before_outage} acked, full after {filled_in:?}, then {failed} refused in {outage:?} \
         (slowest {slowest:?}); {outage_lines} log lines since the limit; recovered {recovered:?} after the limit \
         was lifted"
    );
    for _ in 0..20 {
        sends.one(&mut alice).await.unwrap();
    }
    assert_eq!(http_get(node.addr, "/readyz").await.0, 200);
    assert_eq!(metric(node.addr, "confab_store_embedded_healthy").await, 1.0);
    assert!(metric(node.addr, "confab_store_embedded_reopens_total").await >= 1.0);
    assert!(metric(node.addr, "confab_store_embedded_outages_total").await >= 1.0);
    let log = BinaryNode::log(&dir);
    assert!(log.contains("the store is writable again"), "no recovery line in:\n{log}");

    // History holds every acknowledged message exactly once, in seq order, and nothing else; so
    // does the file, read by a new process.
    let got = history(&mut alice).await;
    assert_eq!(got, sends.acked, "history against the acknowledged sends");
    for (i, (_, seq)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "seqs are contiguous");
    }
    alice.close().await;
    node.stop().await;
    let node = BinaryNode::start(&dir, &[]).await;
    let mut alice = node.connect("alice", "phone").await;
    assert_eq!(history(&mut alice).await, sends.acked, "history after a restart");
    alice.close().await;
    node.stop().await;
}

/// Alice's history with Bob: (client_msg_id, seq) of every message.
async fn history(alice: &mut Client) -> Vec<(String, u64)> {
    let conv = direct_id("alice", "bob");
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let h = alice.expect_ok("history", json!({"conv_id": conv, "after": stored.len(), "limit": 100})).await;
        stored.extend(h["messages"].as_array().unwrap().iter().cloned());
        if !h["has_more"].as_bool().unwrap() {
            break;
        }
    }
    stored.iter().map(|m| (m["client_msg_id"].as_str().unwrap().to_owned(), m["seq"].as_u64().unwrap())).collect()
}
