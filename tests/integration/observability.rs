//! Following a request through the layers: the spans a node's log lines carry (docs/architecture.md,
//! "Tracing").

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{http_get, text, BinaryNode};
use crate::http_api::Req;

/// The log with its colour codes taken out.
fn plain_log(dir: &std::path::Path) -> String {
    let raw = BinaryNode::log(dir);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An SGR sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until a line of the log holds every one of `parts`, and returns it.
async fn line_with(dir: &std::path::Path, parts: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = plain_log(dir);
        if let Some(l) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line holds all of {parts:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn log_lines_name_the_node_user_device_connection_and_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let keys = crate::http_api::keys();
    let env = [
        ("CONFAB__LOG__LEVEL", "warn,confab=debug,confab_actors=debug"),
        ("CONFAB__CLUSTER__NODE_ID", "n-trace"),
        ("CONFAB__API__KEYS", keys.as_str()),
    ];
    let node = BinaryNode::start(&dir, &env).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "tablet").await;
    alice.send_msg(json!({"to": "bob"}), "m1", text("hello")).await;
    bob.next_event("message").await;
    // A refused request: history of a conversation alice is not in.
    alice.expect_err("history", json!({"conv_id": "g_nope"}), "not_found").await;
    let (status, _) = http_get(node.addr, "/readyz").await;
    assert_eq!(status, 200);
    // An API request refused for its scope: the key `users` may not read groups.
    let req = Req::new("GET", "/api/v1/groups/g1", None).key("users", crate::http_api::USERS_SECRET);
    let (status, body) = req.send(node.addr).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("scope_missing")), "{body}");

    // The session's own lines carry its node, user, device and connection.
    let started = line_with(&dir, &["node{node=n-trace}", "ws{user=bob device=tablet conn=", "session started"]).await;
    assert!(!started.contains("request{"), "{started}");
    // A request's lines add the op and the request id, under its session.
    let refused = line_with(&dir, &["ws{user=alice device=phone conn=", "request{op=history", "refused"]).await;
    assert!(refused.contains("node{node=n-trace}"), "{refused}");
    assert!(refused.contains("code=not_found"), "{refused}");
    // An HTTP request's lines carry its method, path and API key.
    let api = line_with(&dir, &["http{method=GET path=/api/v1/groups/g1 key=users", "refused"]).await;
    assert!(api.contains("node{node=n-trace}") && api.contains("scope_missing"), "{api}");
    // A conversation's steps carry the conversation.
    let conv = crate::common::direct_id("alice", "bob");
    line_with(&dir, &["node{node=n-trace}", &format!("conversation{{conv={conv}}}"), "fan-out"]).await;

    alice.close().await;
    bob.close().await;
    let stopped = line_with(&dir, &["ws{user=alice device=phone conn=", "session stopped"]).await;
    // With the close code it ended with (the client's close, or a protocol error when the client
    // drops the connection before the close handshake ends).
    assert!(stopped.contains(" code=10"), "{stopped}");
    node.stop().await;
}

#[tokio::test]
async fn at_the_default_level_requests_make_no_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let node = BinaryNode::start(&dir, &[("CONFAB__LOG__LEVEL", "info")]).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "tablet").await;
    for i in 0..20 {
        alice.send_msg(json!({"to": "bob"}), &format!("m{i}"), text("hello")).await;
    }
    alice.expect_err("history", json!({"conv_id": "g_nope"}), "not_found").await;
    bob.next_event("message").await;
    alice.close().await;
    bob.close().await;
    node.stop().await;
    let log = plain_log(&dir);
    for noisy in ["request{", "http{", "session started", "refused", "answered", "fan-out", "submit"] {
        assert!(!log.contains(noisy), "{noisy:?} logged at level info:\n{log}");
    }
}
