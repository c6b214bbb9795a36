//! Webhooks (docs/webhooks.md): delivery to a real HTTP receiver that verifies signatures and
//! fails on purpose, de-duplication by event id, per-conversation order, a node restart with
//! undelivered events, the operator endpoints, and the `before_send` check.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::common::{direct_id, text, BinaryNode, TestNode};
use crate::http_api::{keys as api_keys, now, signature, Req, ADMIN_SECRET, USERS_SECRET};

const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";

/// What the receiver does and saw.
#[derive(Default)]
struct Seen {
    /// Answer this many deliveries with 500.
    fail_next: usize,
    /// Hold this many deliveries past the node's timeout.
    hang_next: usize,
    /// Requests whose signature did not verify (answered 401).
    bad_signatures: usize,
    /// Requests that reached the receiver (any outcome).
    requests: usize,
    /// Accepted events, in arrival order (with repeats).
    accepted: Vec<Value>,
    /// Bodies the before_send check was asked about.
    checks: Vec<Value>,
    /// Nonces seen (a signer must never repeat one).
    nonces: HashSet<String>,
}

/// A tiny HTTP/1.1 server: `/hook` receives events, `/check` answers before_send.
pub(crate) struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_conn(stream, s.clone()));
            }
        });
        Receiver { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
    }

    fn get<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }

    /// Accepted events de-duplicated by id (first arrival kept), in arrival order.
    fn unique(&self) -> Vec<Value> {
        let mut ids = HashSet::new();
        self.get(|s| s.accepted.iter().filter(|e| ids.insert(e["id"].as_u64().unwrap())).cloned().collect())
    }

    /// Waits until `pred` holds over the de-duplicated events.
    pub(crate) async fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let u = self.unique();
            if pred(&u) {
                return u;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {u:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve_conn(mut stream: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(req) = crate::common::read_http1(&mut stream, &mut buf).await {
        let (status, reply) = handle(&seen, &req.method, &req.path, &req.headers, &req.body).await;
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn handle(
    seen: &Mutex<Seen>,
    method: &str,
    path: &str,
    h: &HashMap<String, String>,
    body: &[u8],
) -> (u16, String) {
    let hdr = |k: &str| h.get(k).cloned().unwrap_or_default();
    let (ts, nonce) = (hdr("x-confab-timestamp"), hdr("x-confab-nonce"));
    let valid = hdr("x-confab-key") == "hook"
        && hdr("x-confab-signature") == signature(HOOK_SECRET, method, path, &ts, &nonce, body)
        && ts.parse::<u64>().is_ok_and(|t| t.abs_diff(now()) <= 60);
    let event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    enum Then {
        Answer(u16, String),
        Hang,
        Sleep(u64, String),
    }
    let then = {
        let mut s = seen.lock().unwrap();
        s.requests += 1;
        if !valid || !s.nonces.insert(nonce) {
            s.bad_signatures += 1;
            Then::Answer(401, "{}".into())
        } else if path == "/gate" {
            s.checks.push(event.clone());
            let names = [&event["name"], &event["users"]].map(|v| v.to_string());
            if names.iter().any(|n| n.contains("forbidden") || n.contains("mallory")) {
                Then::Answer(200, json!({"action": "reject", "reason": "not in this app"}).to_string())
            } else if names.iter().any(|n| n.contains("slow")) {
                Then::Sleep(1500, json!({"action": "accept"}).to_string())
            } else {
                Then::Answer(200, json!({"action": "accept"}).to_string())
            }
        } else if path == "/check" {
            s.checks.push(event.clone());
            match event["body"]["text"].as_str().unwrap_or("") {
                "reject me" => {
                    Then::Answer(200, json!({"action": "reject", "reason": "not on this channel"}).to_string())
                }
                "rewrite me" => Then::Answer(
                    200,
                    json!({"action": "rewrite", "body": {"type": "text", "text": "[redacted]"}}).to_string(),
                ),
                "rewrite badly" => {
                    Then::Answer(200, json!({"action": "rewrite", "body": {"type": "text", "text": " "}}).to_string())
                }
                "slow" => Then::Sleep(1500, json!({"action": "accept"}).to_string()),
                "broken" => Then::Answer(500, "{}".into()),
                _ => Then::Answer(200, json!({"action": "accept"}).to_string()),
            }
        } else if s.hang_next > 0 {
            s.hang_next -= 1;
            Then::Hang
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            Then::Answer(500, "{}".into())
        } else {
            assert_eq!(hdr("x-confab-event-id"), event["id"].to_string(), "the id header matches the body");
            s.accepted.push(event);
            Then::Answer(200, "{}".into())
        }
    };
    match then {
        Then::Answer(st, b) => (st, b),
        Then::Hang => {
            tokio::time::sleep(Duration::from_millis(2000)).await;
            (500, "{}".into())
        }
        Then::Sleep(ms, b) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (200, b)
        }
    }
}

pub(crate) fn endpoints(r: &Receiver, events: &[&str]) -> String {
    // A name per receiver: the log of one test never mixes with another's.
    json!([{"name": format!("backend-{}", r.addr.port()), "url": r.url("/hook"), "events": events, "key_id": "hook", "secret": HOOK_SECRET}])
        .to_string()
}

/// Fast retries for tests.
fn webhook_env<'a>(keys: &'a str, eps: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CONFAB__API__KEYS", keys),
        ("CONFAB__WEBHOOKS__ENDPOINTS", eps),
        ("CONFAB__WEBHOOKS__BACKOFF_INITIAL_MS", "50"),
        ("CONFAB__WEBHOOKS__BACKOFF_MAX_MS", "300"),
        ("CONFAB__WEBHOOKS__POLL_INTERVAL_MS", "50"),
        ("CONFAB__WEBHOOKS__TIMEOUT_MS", "500"),
        ("CONFAB__WEBHOOKS__MAX_ATTEMPTS", "100"),
        // A restarted node (a new node id) takes the lease over quickly.
        ("CONFAB__WEBHOOKS__LEASE_TTL_MS", "1500"),
    ]
}

/// A signed API request with key `admin` (or another): the status and the JSON answer.
async fn api(
    addr: SocketAddr,
    key: (&str, &str),
    method: &'static str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    Req::new(method, path, body).key(key.0, key.1).send(addr).await
}

const ADMIN: (&str, &str) = ("admin", ADMIN_SECRET);

/// Every event once per id, and per conversation (or user) in id order, with message seqs
/// of `message.sent` strictly increasing.
fn check_order(events: &[Value]) {
    let mut last_id: HashMap<String, u64> = HashMap::new();
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for e in events {
        let key = match e["conv_id"].as_str() {
            Some(c) => c.to_string(),
            None => format!("user:{}", e["data"]["user"].as_str().unwrap()),
        };
        let id = e["id"].as_u64().unwrap();
        if let Some(prev) = last_id.insert(key.clone(), id) {
            assert!(prev < id, "events of {key} out of order: {prev} then {id}");
        }
        if e["type"] == "message.sent" {
            let seq = e["seq"].as_u64().unwrap();
            if let Some(prev) = last_seq.insert(key.clone(), seq) {
                assert!(prev < seq, "messages of {key} out of order");
            }
        }
    }
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

#[tokio::test]
async fn every_event_arrives_once_in_order_through_failures_and_replays() {
    let r = Receiver::start().await;
    r.set(|s| {
        s.fail_next = 4;
        s.hang_next = 1;
    });
    let (keys, eps) = (api_keys(), endpoints(&r, &[]));
    let node = TestNode::with(&webhook_env(&keys, &eps));
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    for i in 0..5 {
        alice.send_msg(json!({"to": "bob"}), &format!("a{i}"), text(&format!("hi {i}"))).await;
    }
    for i in 0..3 {
        let (st, v) = api(
            node.addr,
            ADMIN,
            "POST",
            "/api/v1/messages",
            Some(json!({"from": "alice", "to": "carol", "client_msg_id": format!("h{i}"), "body": text("over http")})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
    }
    // A re-send with the same client_msg_id stores nothing and emits nothing.
    alice.send_msg(json!({"to": "bob"}), "a0", text("hi 0")).await;
    alice.expect_ok("group_create", json!({"group_id": "team", "name": "Team", "members": ["bob"]})).await;
    bob.send_msg(json!({"conv_id": "g_team"}), "b0", text("in the group")).await;
    bob.send_msg(json!({"conv_id": "g_team"}), "b1", text("again")).await;
    alice.expect_ok("group_add", json!({"group_id": "team", "members": ["carol"]})).await;
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": 1})).await;
    // Recalling again changes nothing and emits nothing.
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": 1})).await;

    let all_there = |u: &[Value]| {
        count(u, "message.sent") == 10
            && count(u, "message.recalled") == 1
            && count(u, "group.created") == 1
            && count(u, "group.members_changed") == 1
            && count(u, "user.online") == 2
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_there(&r.unique()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !all_there(&r.unique()) {
        let (_, log) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?limit=100", None).await;
        let ids: Vec<u64> = r.unique().iter().map(|e| e["id"].as_u64().unwrap()).collect();
        let mut missing = Vec::new();
        for id in 1..=15u64 {
            if !ids.contains(&id) {
                missing.push(api(node.addr, ADMIN, "GET", &format!("/api/v1/webhooks/events/{id}"), None).await);
            }
        }
        panic!("missing events; received {ids:?}; missing {missing:?}; log {log:#}");
    }
    let events = r
        .wait_for("every event", 30, |u| {
            count(u, "message.sent") == 10
                && count(u, "message.recalled") == 1
                && count(u, "group.created") == 1
                && count(u, "group.members_changed") == 1
                && count(u, "user.online") == 2
        })
        .await;
    check_order(&events);
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len());
    let sent_ab: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "message.sent" && e["conv_id"] == ab)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(sent_ab, vec![1, 2, 3, 4, 5]);
    let recalled = events.iter().find(|e| e["type"] == "message.recalled").unwrap();
    assert_eq!(recalled["data"]["message"]["body"]["type"], "recalled");
    assert_eq!(r.get(|s| s.bad_signatures), 0, "every delivery is signed");
    assert!(r.get(|s| s.requests) >= events.len() + 5, "the failures were retried");

    // The delivery log: all delivered; the first attempts failed. (A delivery is recorded once
    // the receiver's answer is in, a moment after the receiver saw it.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, log) =
            api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?state=delivered&limit=100", None).await;
        assert_eq!(st, 200, "{log}");
        let (st, pending) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?state=pending", None).await;
        assert_eq!(st, 200);
        if log["deliveries"].as_array().unwrap().len() >= events.len() && pending["deliveries"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "the delivery log does not show every delivery: {log} {pending}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The three oldest events (ids increase, but on MongoDB they are not consecutive).
    let mut oldest: Vec<u64> = distinct.iter().copied().collect();
    oldest.sort_unstable();
    oldest.truncate(3);
    let first = oldest[0];
    let (st, one) = api(node.addr, ADMIN, "GET", &format!("/api/v1/webhooks/events/{first}"), None).await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["event"]["id"], first);
    let d = &one["deliveries"][0];
    assert_eq!(d["state"], "delivered");
    assert!(d["log"].as_array().unwrap().iter().any(|a| a.get("error").is_some()), "failed attempts are logged: {d}");
    let (st, _) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/events/999999", None).await;
    assert_eq!(st, 404);

    // Replay re-delivers (receivers de-duplicate by id).
    let before = r.get(|s| s.accepted.len());
    let (st, rep) =
        api(node.addr, ADMIN, "POST", "/api/v1/webhooks/replay", Some(json!({"from_id": first, "to_id": oldest[2]})))
            .await;
    assert_eq!(st, 200, "{rep}");
    assert_eq!(rep["requeued"], 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.get(|s| s.accepted.len()) < before + 3 {
        assert!(Instant::now() < deadline, "replayed events did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again: Vec<u64> = r.get(|s| s.accepted[before..].iter().map(|e| e["id"].as_u64().unwrap()).collect());
    assert_eq!(again.iter().copied().collect::<HashSet<_>>(), oldest.iter().copied().collect::<HashSet<_>>());
    assert_eq!(r.unique().len(), events.len(), "a replay adds no new event ids");

    // Refusals of the operator endpoints.
    let (st, e) = api(node.addr, ("users", USERS_SECRET), "GET", "/api/v1/webhooks/deliveries", None).await;
    assert_eq!((st, e["error"]["code"].as_str()), (403, Some("scope_missing")));
    let (st, e) = api(node.addr, ("admin", USERS_SECRET), "POST", "/api/v1/webhooks/replay", Some(json!({}))).await;
    assert_eq!((st, e["error"]["code"].as_str()), (401, Some("signature_invalid")));
    let (st, e) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?state=lost", None).await;
    assert_eq!((st, e["error"]["code"].as_str()), (400, Some("invalid_request")));

    // The last device going offline is an event too.
    bob.close().await;
    r.wait_for("user.offline", 10, |u| count(u, "user.offline") == 1).await;
}

#[tokio::test]
async fn an_endpoint_gets_only_the_events_it_asked_for() {
    let r = Receiver::start().await;
    let (keys, eps) = (api_keys(), endpoints(&r, &["message.recalled"]));
    let node = TestNode::with(&webhook_env(&keys, &eps));
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "m1", text("one")).await;
    alice.expect_ok("recall", json!({"conv_id": direct_id("alice", "bob"), "seq": 1})).await;
    let events = r.wait_for("the recall", 10, |u| !u.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.unique().len(), 1);
    assert_eq!(events[0]["type"], "message.recalled");
}

#[tokio::test]
async fn undelivered_events_are_delivered_after_a_restart() {
    let r = Receiver::start().await;
    r.set(|s| s.fail_next = usize::MAX);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let eps = endpoints(&r, &["message.sent"]);
    let keys = api_keys();
    let env = webhook_env(&keys, &eps);
    let node = BinaryNode::start(&dir, &env).await;
    let mut alice = node.connect("alice", "phone").await;
    for i in 0..3 {
        alice.send_msg(json!({"to": "bob"}), &format!("m{i}"), text(&format!("before {i}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.get(|s| s.requests) < 3 {
        assert!(Instant::now() < deadline, "no delivery was attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.close().await;
    node.stop().await;
    assert!(r.unique().is_empty());

    r.set(|s| s.fail_next = 2);
    let node = BinaryNode::start(&dir, &env).await;
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "m3", text("after")).await;
    let events = r.wait_for("all four messages", 20, |u| count(u, "message.sent") == 4).await;
    check_order(&events);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(r.get(|s| s.bad_signatures), 0);
    alice.close().await;
    node.stop().await;
}

#[tokio::test]
async fn old_finished_events_are_trimmed_but_pending_ones_stay() {
    let r = Receiver::start().await;
    let (keys, eps) = (api_keys(), endpoints(&r, &["message.sent"]));
    let mut env = webhook_env(&keys, &eps);
    env.extend([
        // A retention of 1.8 s, applied every 100 ms; a failed attempt is retried after 6 s, so a
        // pending delivery's last attempt is older than the retention for a while.
        ("CONFAB__WEBHOOKS__RETENTION_HOURS", "0.0005"),
        ("CONFAB__WEBHOOKS__TRIM_INTERVAL_MS", "100"),
        ("CONFAB__WEBHOOKS__BACKOFF_INITIAL_MS", "6000"),
        ("CONFAB__WEBHOOKS__BACKOFF_MAX_MS", "6000"),
    ]);
    let node = TestNode::with(&env);
    let event =
        |id: u64| async move { api(node.addr, ADMIN, "GET", &format!("/api/v1/webhooks/events/{id}"), None).await };
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "m1", text("delivered at once")).await;
    let first = r.wait_for("the first message", 10, |u| u.len() == 1).await[0]["id"].as_u64().unwrap();
    r.set(|s| s.fail_next = 1);
    alice.send_msg(json!({"to": "carol"}), "m2", text("delivered on the second attempt")).await;
    let sent = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.get(|s| s.requests) < 2 {
        assert!(Instant::now() < deadline, "the second message was not attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, pending) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?state=pending", None).await;
    let second = pending["deliveries"][0]["event_id"].as_u64().expect("the second message is pending");

    // The delivered event goes once past the retention: looked up, it is not_found; replayed,
    // nothing is requeued; it is not in the delivery log any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = event(first).await;
        if st == 404 {
            assert_eq!(body["error"]["code"], "not_found", "{body}");
            break;
        }
        assert_eq!(st, 200, "{body}");
        assert!(Instant::now() < deadline, "the delivered event was not trimmed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, rep) =
        api(node.addr, ADMIN, "POST", "/api/v1/webhooks/replay", Some(json!({"from_id": first, "to_id": first}))).await;
    assert_eq!((st, rep["requeued"].as_u64()), (200, Some(0)), "{rep}");
    let (st, log) = api(node.addr, ADMIN, "GET", "/api/v1/webhooks/deliveries?limit=100", None).await;
    assert_eq!(st, 200, "{log}");
    let logged: Vec<u64> =
        log["deliveries"].as_array().unwrap().iter().map(|d| d["event_id"].as_u64().unwrap()).collect();
    assert_eq!(logged, [second], "{log}");

    // The pending one stays although it and its failed attempt are older than the retention.
    while sent.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, body) = event(second).await;
    assert_eq!(st, 200, "a pending event was trimmed: {body}");
    assert_eq!(body["deliveries"][0]["state"], "pending", "{body}");
    assert!(r.unique().iter().all(|e| e["id"] != second), "not delivered yet");

    // Delivered on its retry, then trimmed in turn.
    r.wait_for("the retried message", 15, |u| u.len() == 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while event(second).await.0 != 404 {
        assert!(Instant::now() < deadline, "the retried event was not trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    alice.close().await;
}

fn before_send_env<'a>(r_url: &'a str, fail_open: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CONFAB__WEBHOOKS__BEFORE_SEND__URL", r_url),
        ("CONFAB__WEBHOOKS__BEFORE_SEND__TIMEOUT_MS", "300"),
        ("CONFAB__WEBHOOKS__BEFORE_SEND__FAIL_OPEN", fail_open),
        ("CONFAB__WEBHOOKS__BEFORE_SEND__KEY_ID", "hook"),
        ("CONFAB__WEBHOOKS__BEFORE_SEND__SECRET", HOOK_SECRET),
    ]
}

/// A node with the API keys whose `before_send` check is `r`'s `/check`.
fn before_send_node(r: &Receiver, fail_open: &str) -> TestNode {
    let (url, keys) = (r.url("/check"), api_keys());
    let mut env = before_send_env(&url, fail_open);
    env.push(("CONFAB__API__KEYS", keys.as_str()));
    TestNode::with(&env)
}

#[tokio::test]
async fn before_send_accepts_rejects_and_rewrites() {
    let r = Receiver::start().await;
    let node = before_send_node(&r, "true");
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let m = alice.send_msg(json!({"to": "bob"}), "c1", text("hello")).await;
    assert_eq!(m["body"]["text"], "hello");
    let e = alice
        .expect_err("send", json!({"to": "bob", "client_msg_id": "c2", "body": text("reject me")}), "message_rejected")
        .await;
    assert_eq!(e["message"], "not on this channel");
    let m = alice.send_msg(json!({"to": "bob"}), "c3", text("rewrite me")).await;
    assert_eq!(m["body"]["text"], "[redacted]");
    alice
        .expect_err("send", json!({"to": "bob", "client_msg_id": "c4", "body": text("rewrite badly")}), "invalid_body")
        .await;
    // The hook cannot answer in time: fail-open accepts.
    let m = alice.send_msg(json!({"to": "bob"}), "c5", text("slow")).await;
    assert_eq!(m["body"]["text"], "slow");
    let m = alice.send_msg(json!({"to": "bob"}), "c6", text("broken")).await;
    assert_eq!(m["body"]["text"], "broken");
    // Bob saw exactly what was stored, in order.
    let texts: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(bob.next_event("message").await["body"]["text"].as_str().unwrap().to_string());
        }
        v
    };
    assert_eq!(texts, ["hello", "[redacted]", "slow", "broken"]);
    // The HTTP API's sends are checked too.
    let (st, v) = api(
        node.addr,
        ADMIN,
        "POST",
        "/api/v1/messages",
        Some(json!({"from": "alice", "to": "bob", "client_msg_id": "h1", "body": text("reject me")})),
    )
    .await;
    assert_eq!((st, v["error"]["code"].as_str()), (422, Some("message_rejected")), "{v}");
    // System messages are not checked; the check got the sender and conversation.
    let n = r.get(|s| s.checks.len());
    alice.expect_ok("group_create", json!({"group_id": "mods", "name": "Mods", "members": ["bob"]})).await;
    assert_eq!(r.get(|s| s.checks.len()), n);
    let first = r.get(|s| s.checks[0].clone());
    assert_eq!(first["sender"], "alice");
    assert_eq!(first["conv_id"], direct_id("alice", "bob"));
    assert_eq!(first["client_msg_id"], "c1");
    assert_eq!(r.get(|s| s.bad_signatures), 0);
}

#[tokio::test]
async fn before_send_fails_closed_when_configured() {
    let r = Receiver::start().await;
    let url = r.url("/check");
    let node = TestNode::with(&before_send_env(&url, "false"));
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "c1", text("fine")).await;
    alice
        .expect_err("send", json!({"to": "bob", "client_msg_id": "c2", "body": text("slow")}), "message_rejected")
        .await;
    alice
        .expect_err("send", json!({"to": "bob", "client_msg_id": "c3", "body": text("broken")}), "message_rejected")
        .await;
    let h = alice.expect_ok("history", json!({"conv_id": direct_id("alice", "bob")})).await;
    let stored: Vec<&str> =
        h["messages"].as_array().unwrap().iter().map(|m| m["body"]["text"].as_str().unwrap()).collect();
    assert_eq!(stored, ["fine"]);
}

fn gate_env<'a>(url: &'a str, fail_open: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = Vec::new();
    for hook in ["BEFORE_GROUP_CREATE", "BEFORE_MEMBER_JOIN"] {
        let key = |k: &str| &*Box::leak(format!("CONFAB__WEBHOOKS__{hook}__{k}").into_boxed_str());
        env.extend([
            (key("URL"), url),
            (key("TIMEOUT_MS"), "300"),
            (key("FAIL_OPEN"), fail_open),
            (key("KEY_ID"), "hook"),
            (key("SECRET"), HOOK_SECRET),
        ]);
    }
    env
}

/// `before_group_create` and `before_member_join` are asked about clients' requests: a refusal
/// is `request_rejected` and changes nothing; the HTTP API's changes are not asked about.
#[tokio::test]
async fn group_checks_refuse_creations_and_new_members() {
    let r = Receiver::start().await;
    let (url, keys) = (r.url("/gate"), api_keys());
    let mut env = gate_env(&url, "false");
    env.push(("CONFAB__API__KEYS", keys.as_str()));
    let node = TestNode::with(&env);
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let e = alice
        .expect_err(
            "group_create",
            json!({"group_id": "g1", "name": "forbidden", "members": ["bob"]}),
            "request_rejected",
        )
        .await;
    assert_eq!(e["message"], "not in this app");
    alice.expect_err("group_info", json!({"group_id": "g1"}), "not_found").await;
    alice.expect_ok("group_create", json!({"group_id": "g2", "name": "Fine", "members": ["bob"]})).await;
    let asked = r.get(|s| s.checks.last().cloned().unwrap());
    assert_eq!(
        asked,
        json!({"hook": "before_group_create", "group_id": "g2", "name": "Fine", "owner": "alice", "members": ["bob"]})
    );
    alice.expect_err("group_add", json!({"group_id": "g2", "members": ["mallory"]}), "request_rejected").await;
    alice.expect_ok("group_add", json!({"group_id": "g2", "members": ["carol"]})).await;
    let asked = r.get(|s| s.checks.last().cloned().unwrap());
    assert_eq!(
        asked,
        json!({"hook": "before_member_join", "group_id": "g2", "users": ["carol"], "how": "add", "by": "alice"})
    );
    // A check that cannot be made in time refuses (fail_open = false).
    alice.expect_err("group_add", json!({"group_id": "g2", "members": ["slow"]}), "request_rejected").await;
    alice.expect_ok("group_update", json!({"group_id": "g2", "join_mode": "free"})).await;
    let mut mallory = node.connect("mallory", "phone").await;
    mallory.expect_err("group_join", json!({"group_id": "g2"}), "request_rejected").await;
    let members = bob.expect_ok("group_members", json!({"group_id": "g2"})).await;
    let ids: Vec<&str> =
        members["members"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice", "bob", "carol"], "nothing refused was added");
    // The backend's own changes are not asked about.
    let n = r.get(|s| s.checks.len());
    let (st, v) =
        api(node.addr, ADMIN, "POST", "/api/v1/groups/g2/members", Some(json!({"members": ["mallory"]}))).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(r.get(|s| s.checks.len()), n);
    assert_eq!(r.get(|s| s.bad_signatures), 0);
}

/// A node stopped with SIGTERM records its users' `user.offline` before it exits: delivered then,
/// or by the node's next run.
#[tokio::test]
async fn a_stopping_node_records_its_users_going_offline() {
    let r = Receiver::start().await;
    let eps = endpoints(&r, &["user.online", "user.offline"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let env = [("CONFAB__WEBHOOKS__ENDPOINTS", eps.as_str()), ("CONFAB__WEBHOOKS__POLL_INTERVAL_MS", "50")];
    let node = BinaryNode::start(&dir, &env).await;
    let mut alice = node.connect("alice", "phone").await;
    r.wait_for("alice online", 10, |e| count(e, "user.online") == 1).await;
    let stopping = tokio::spawn(node.stop());
    assert_eq!(alice.wait_closed(Duration::from_secs(5)).await, Some(1001));
    stopping.await.unwrap();
    let node = BinaryNode::start(&dir, &env).await;
    let events = r.wait_for("alice offline", 10, |e| count(e, "user.offline") == 1).await;
    assert_eq!(events.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(), ["user.online", "user.offline"]);
    node.stop().await;
}

/// System messages are not asked about: with the check refusing every request and
/// `fail_open = false`, a user's message is refused while the backend's system messages, to a
/// user or to a group, are stored without the check being called.
#[tokio::test]
async fn system_messages_skip_before_send() {
    let r = Receiver::start().await;
    let node = before_send_node(&r, "false");
    // The receiver answers 500 to a check of the text "broken": the check cannot be made.
    let user = json!({"from": "alice", "to": "bob", "client_msg_id": "u1", "body": text("broken")});
    let (st, v) = api(node.addr, ADMIN, "POST", "/api/v1/messages", Some(user)).await;
    assert_eq!((st, v["error"]["code"].as_str()), (422, Some("message_rejected")), "{v}");
    assert_eq!(r.get(|s| s.checks.len()), 1);

    let sys = json!({"from": null, "to": "bob", "client_msg_id": "welcome", "body": text("broken")});
    let (st, v) = api(node.addr, ADMIN, "POST", "/api/v1/messages", Some(sys)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["message"]["sender"], "system");
    let path = format!("/api/v1/conversations/{}/messages", direct_id("system", "bob"));
    let (st, h) = api(node.addr, ADMIN, "GET", &path, None).await;
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["messages"][0]["body"], text("broken"), "{h}");

    let group = json!({"id": "news", "name": "News", "owner": "alice", "members": ["bob"]});
    assert_eq!(api(node.addr, ADMIN, "POST", "/api/v1/groups", Some(group)).await.0, 200);
    let body = json!({"type": "system", "event": "maintenance", "data": {}});
    let g = json!({"from": null, "conv_id": "g_news", "client_msg_id": "m1", "body": body});
    let (st, v) = api(node.addr, ADMIN, "POST", "/api/v1/messages", Some(g)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(r.get(|s| s.checks.len()), 1, "a system message was checked");
}

/// Contact changes are `contact.changed` events, written with the change; one that changed
/// nothing (a second block) is not.
#[tokio::test]
async fn contact_changes_are_webhook_events() {
    let r = Receiver::start().await;
    let (keys, eps) = (api_keys(), endpoints(&r, &["contact.changed"]));
    let node = TestNode::with(&webhook_env(&keys, &eps));
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    alice.expect_ok("friend_request", json!({"user_id": "bob", "message": "hi"})).await;
    bob.expect_ok("friend_accept", json!({"user_id": "alice"})).await;
    bob.expect_ok("block", json!({"user_id": "alice"})).await;
    bob.expect_ok("block", json!({"user_id": "alice"})).await;
    bob.expect_err("friend_accept", json!({"user_id": "alice"}), "request_not_pending").await;
    let events = r.wait_for("three contact changes", 10, |u| u.len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.unique().len(), 3, "{events:#?}");
    check_order(&events);
    let changes: Vec<(&str, &str, usize)> = events
        .iter()
        .map(|e| {
            let d = &e["data"];
            (d["change"].as_str().unwrap(), d["user"].as_str().unwrap(), d["contacts"].as_array().unwrap().len())
        })
        .collect();
    assert_eq!(changes, [("friend_request", "alice", 2), ("friend_accept", "bob", 2), ("block", "bob", 1)]);
    assert!(events.iter().all(|e| e["type"] == "contact.changed" && e.get("conv_id").is_none()));
    assert_eq!(events[2]["data"]["contacts"][0]["blocked"], true);
}
