//! The node as an operator sees it: health, readiness, metrics, and slow consumers.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{direct_id, text, token, Auth, Client, TestNode};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let node = TestNode::start();
    let (status, body) = node.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = node.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), json!({"status": "ready"}));
    let (status, _) = node.get("/nope").await;
    assert_eq!(status, 404);
    // A plain GET of /ws without a token is refused before any upgrade.
    let (status, body) = node.get("/ws").await;
    assert_eq!(status, 401);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"], "unauthorized");

    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "confab_messages_in_total",
        "confab_connections",
        "confab_slow_consumers_dropped_total",
        "confab_fanout_seconds_count",
    ] {
        assert!(body.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing:\n{body}");
    }
    assert_eq!(node.metric("confab_messages_in_total").await, 0.0);
    assert_eq!(node.metric("confab_connections").await, 0.0);

    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    for i in 0..3 {
        alice.send_msg(json!({"to": "bob"}), &format!("{i}"), text("m")).await;
    }
    bob.next_event("message").await;
    assert_eq!(node.metric("confab_messages_in_total").await, 3.0);
    assert_eq!(node.metric("confab_connections").await, 2.0);
    assert!(node.metric("confab_deliveries_out_total").await >= 3.0);
    alice.close().await;
    bob.close().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric("confab_connections").await != 0.0 {
        assert!(Instant::now() < deadline, "connections gauge did not drop to 0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that never reads is disconnected (1013) once its outgoing queue fills; the sender is
/// not held up and gets every ack; nothing is lost for the slow client, who recovers with history.
#[tokio::test]
async fn slow_consumer_is_disconnected_and_the_sender_unaffected() {
    const N: u64 = 100;
    const WINDOW: usize = 16;
    let node = TestNode::with(&[
        ("CONFAB__SESSION__OUTBOUND_QUEUE", "16"),
        ("CONFAB__SERVER__MAX_FRAME_BYTES", "1048576"),
        ("CONFAB__CHAT__MAX_TEXT_CHARS", "400000"),
    ]);
    let t = token("bob", "slow");
    // bob's socket gets a tiny receive buffer and is never read until the end.
    let mut slow = Client::try_connect(node.addr, Auth::Bearer(&t), Some(4096)).await.unwrap();
    let mut alice = node.connect("alice", "phone").await;
    let big = "b".repeat(200_000);
    let mut inflight = VecDeque::new();
    let mut acked = Vec::new();
    let mut next = 1;
    while acked.len() < N as usize {
        while inflight.len() < WINDOW && next <= N {
            inflight.push_back(
                alice
                    .send_req("send", json!({"to": "bob", "client_msg_id": format!("f{next}"), "body": text(&big)}))
                    .await,
            );
            next += 1;
        }
        let k = inflight.pop_front().unwrap();
        let r = alice.reply(&k).await;
        assert!(r.get("error").is_none(), "{}", r["error"]);
        acked.push(r["result"]["message"]["seq"].as_u64().unwrap());
    }
    assert_eq!(acked, (1..=N).collect::<Vec<_>>());
    assert!(node.metric("confab_slow_consumers_dropped_total").await >= 1.0);

    // The slow client finds what was queued, then the close frame: 1013 "try again later".
    let code = slow.wait_closed(Duration::from_secs(10)).await;
    assert_eq!(code, Some(1013));
    let got = slow.log.iter().filter(|f| f["event"] == "message").count() as u64;
    assert!(got < N, "the slow client received everything ({got}), so it was never slow");

    // It reconnects and recovers everything with history.
    let mut bob = node.connect("bob", "phone").await;
    let h = bob.expect_ok("history", json!({"conv_id": direct_id("alice", "bob"), "after": got, "limit": 3})).await;
    assert_eq!(h["last_seq"], N);
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![got + 1, got + 2, got + 3]);
    assert_eq!(h["messages"][0]["body"], text(&big));
}

/// A client that keeps pinging but never reads cannot make the server hold its pongs without
/// end: once they back up it is dropped as a slow consumer (1013).
#[tokio::test]
async fn a_client_pinging_without_reading_is_dropped() {
    let node = TestNode::start();
    let t = token("mallory", "pinger");
    let mut pinger = Client::try_connect(node.addr, Auth::Bearer(&t), Some(4096)).await.unwrap();
    // 125-byte pongs: a few MB of them fill the kernel's buffers on both sides.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("confab_slow_consumers_dropped_total").await < 1.0 && Instant::now() < deadline {
        pinger.send_pings(500, &[b'p'; 125]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(node.metric("confab_slow_consumers_dropped_total").await >= 1.0, "the pinger was never dropped");
    assert_eq!(pinger.wait_closed(Duration::from_secs(10)).await, Some(1013));
    // Everyone else is served as usual.
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "after", text("still here")).await;
}

/// A client that sends nothing at all (not even pongs) is closed with 1001 after
/// `client_timeout_secs`; one that answers pings stays.
#[tokio::test]
async fn silent_clients_time_out() {
    let node = TestNode::with(&[
        ("CONFAB__SESSION__HEARTBEAT_INTERVAL_SECS", "1"),
        ("CONFAB__SESSION__CLIENT_TIMEOUT_SECS", "2"),
    ]);
    let t = token("alice", "silent");
    let mut silent = Client::try_connect(node.addr, Auth::Bearer(&t), None).await.unwrap();
    let mut live = node.connect("alice", "live").await;
    // `live` reads (so its client library answers the pings) for 3.5 s; `silent` never does.
    let started = Instant::now();
    live.no_event_within(3500).await;
    assert!(live.closed.is_none(), "a client answering pings was closed");
    assert!(live.expect_ok("ping", serde_json::Value::Null).await["ts"].is_i64());
    let code = silent.wait_closed(Duration::from_secs(3)).await;
    assert_eq!(code, Some(1001));
    assert!(started.elapsed() >= Duration::from_secs(2));
}

/// Idle conversation actors stop and are re-created on demand, with their state reloaded.
#[tokio::test]
async fn idle_conversation_actors_stop_and_come_back() {
    let node = TestNode::with(&[("CONFAB__GROUPS__IDLE_TIMEOUT_SECS", "1")]);
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    alice.send_msg(json!({"to": "bob"}), "1", text("one")).await;
    alice.expect_ok("group_create", json!({"group_id": "g", "name": "G", "members": ["bob"]})).await;
    alice.send_msg(json!({"conv_id": "g_g"}), "2", text("two")).await;
    assert!(node.metric("confab_conversation_actors").await >= 2.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.metric("confab_conversation_actors").await != 0.0 {
        assert!(Instant::now() < deadline, "idle actors did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.drain_events(10).await;
    let m = alice.send_msg(json!({"to": "bob"}), "3", text("three")).await;
    assert_eq!(m["seq"], 2);
    assert_eq!(bob.next_event("message").await, m);
    // The group actor reloads its membership: a removal made now holds.
    let r = alice.expect_ok("group_remove", json!({"group_id": "g", "members": ["bob"]})).await;
    assert_eq!(r["message"]["seq"], 3);
    bob.expect_err("send", json!({"conv_id": "g_g", "client_msg_id": "b", "body": text("x")}), "not_member").await;
    let m = alice.send_msg(json!({"conv_id": "g_g"}), "4", text("four")).await;
    assert_eq!(m["seq"], 4);
}
