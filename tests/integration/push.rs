//! Offline push on a node (docs/push.md): registrations over WebSocket and the HTTP API, the
//! decisions (a device connected elsewhere, read before the push, muted, mentions, recalled),
//! the notification's content (sender's nickname, group name, badge, collapse key, a burst as
//! one), invalid tokens removed, retries, and the metrics; against the fake FCM, APNs and relay
//! of `push_receivers`, which check what the real services check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{direct_id, text, BinaryNode, TestNode};
use crate::http_api::{node_with, ok, Req};
use crate::push_receivers::{FakeApns, FakeFcm, FakeRelay};

/// A counter of `/metrics`, labels included in `name` (0 while it has no row).
pub(crate) async fn counter(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = crate::common::http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits until counter `name` reaches `at_least`.
pub(crate) async fn wait_counter(addr: SocketAddr, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = counter(addr, name).await;
        if v >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed at {v}, below {at_least}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node with the API keys, `push.delay_ms = delay_ms` and the provider settings `env`.
fn push_node(env: &[(String, String)], delay_ms: u64) -> TestNode {
    let delay = delay_ms.to_string();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.push(("CONFAB__PUSH__DELAY_MS", &delay));
    all.push(("CONFAB__PUSH__POLL_INTERVAL_MS", "50"));
    all.push(("CONFAB__PUSH__BACKOFF_INITIAL_MS", "100"));
    node_with(&all)
}

/// `device` of `user` registers `token` with `provider` over WebSocket, then disconnects.
async fn register_and_leave(node: &TestNode, user: &str, device: &str, provider: &str, token: &str) {
    let mut c = node.connect(user, device).await;
    let r = c.expect_ok("push_register", json!({"provider": provider, "token": token})).await;
    assert_eq!(r["registration"]["token"], token);
    assert_eq!(r["registration"]["device"], device);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_gets_one_fcm_notification_per_burst_with_profile_and_badge() {
    let dir = tempfile::tempdir().unwrap();
    let fcm = FakeFcm::start_default().await;
    let node = push_node(&fcm.env(dir.path()), 600);
    ok(
        &node,
        "POST",
        "/api/v1/users",
        Some(json!({"id": "alice", "nickname": "Alice A.", "avatar": "https://cdn.example/a.png"})),
    )
    .await;
    register_and_leave(&node, "bob", "phone", "fcm", "fcm-token-bob").await;
    let mut alice = node.connect("alice", "phone").await;
    // A burst: one notification, for the last message, counting three.
    for i in 1..=3 {
        alice.send_msg(json!({"to": "bob"}), &format!("b{i}"), text(&format!("hello {i}"))).await;
    }
    fcm.wait_for("the notification", 10, |r| !r.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let got = fcm.received();
    assert_eq!(got.len(), 1, "one notification for the burst: {got:?}");
    let m = &got[0]["message"];
    assert_eq!(m["token"], "fcm-token-bob");
    assert_eq!(m["notification"]["title"], "Alice A.");
    assert_eq!(m["notification"]["body"], "[3] hello 3");
    assert_eq!(m["notification"]["image"], "https://cdn.example/a.png");
    let conv = direct_id("alice", "bob");
    assert_eq!(m["data"]["conv_id"], conv.as_str());
    assert_eq!(m["data"]["seq"], "3");
    assert_eq!(m["data"]["count"], "3");
    assert_eq!(m["data"]["badge"], "3", "the badge is bob's total unread");
    assert_eq!(m["android"]["collapse_key"], conv.as_str());
    assert_eq!(fcm.rejected(), 0, "{}", fcm.last_rejection());
    wait_counter(node.addr, "confab_push_sent_total{provider=\"fcm\"}", 1.0).await;
    assert_eq!(counter(node.addr, "confab_push_queued_total").await, 3.0);
    let delivered = counter(node.addr, "confab_push_delivery_seconds_count").await;
    assert_eq!(delivered, 1.0);
    // The next message after it went out is a new notification; the access token is reused.
    alice.send_msg(json!({"to": "bob"}), "b4", text("again")).await;
    fcm.wait_for("a second notification", 10, |r| r.len() == 2).await;
    assert_eq!(fcm.received()[1]["message"]["notification"]["body"], "again");
    assert_eq!(fcm.token_requests(), 1, "the OAuth token is cached");
    assert_eq!(counter(node.addr, "confab_push_profile_reads_total").await, 1.0, "alice's profile was read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_checked_and_one_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let fcm = FakeFcm::start_default().await;
    let node = push_node(&fcm.env(dir.path()), 100);
    let mut bob = node.connect("bob", "phone").await;
    let e = bob.expect_err("push_register", json!({"provider": "apns", "token": "x"}), "push_provider_unknown").await;
    assert!(e["message"].as_str().unwrap().contains("fcm"), "{e}");
    bob.expect_err("push_register", json!({"provider": "fcm", "token": "has space"}), "invalid_request").await;
    bob.expect_err("push_register", json!({"provider": "fcm", "token": ""}), "invalid_request").await;
    bob.expect_err("push_register", json!({"provider": "fcm", "token": "t".repeat(4097)}), "invalid_request").await;
    bob.expect_err("push_register", json!({"provider": "fcm"}), "invalid_request").await;
    let list = ok(&node, "GET", "/api/v1/users/bob/push", None).await;
    assert_eq!(list["registrations"], json!([]), "refusals stored nothing");
    bob.expect_ok("push_register", json!({"provider": "fcm", "token": "t1"})).await;
    bob.expect_ok("push_register", json!({"provider": "fcm", "token": "t2"})).await;
    // The HTTP API registers another device; the same token moves from a device that had it.
    ok(&node, "PUT", "/api/v1/users/bob/devices/tablet/push", Some(json!({"provider": "fcm", "token": "t3"}))).await;
    ok(&node, "PUT", "/api/v1/users/carol/devices/phone/push", Some(json!({"provider": "fcm", "token": "t3"}))).await;
    let list = ok(&node, "GET", "/api/v1/users/bob/push", None).await;
    let regs = list["registrations"].as_array().unwrap();
    assert_eq!(regs.len(), 1, "{list}");
    assert_eq!((regs[0]["device"].as_str(), regs[0]["token"].as_str()), (Some("phone"), Some("t2")));
    let (status, e) =
        Req::new("PUT", "/api/v1/users/bob/devices/tablet/push", Some(json!({"provider": "jpush", "token": "t"})))
            .send(node.addr)
            .await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("push_provider_unknown")), "{e}");
    let (status, _) = Req::new(
        "PUT",
        "/api/v1/users/bob/devices/tablet/push",
        Some(json!({"provider": "fcm", "token": "t", "x": 1})),
    )
    .send(node.addr)
    .await;
    assert_eq!(status, 400, "unknown fields are refused");
    // Unregistering: over WebSocket for the session's device, over HTTP for any.
    assert_eq!(bob.expect_ok("push_unregister", json!({})).await["removed"], true);
    assert_eq!(bob.expect_ok("push_unregister", json!({})).await["removed"], false);
    let r = ok(&node, "DELETE", "/api/v1/users/carol/devices/phone/push", None).await;
    assert_eq!(r["removed"], true);
    // A device forced offline, or a disabled user, gets no notifications either.
    for (user, device) in [("bob", "phone"), ("bob", "tablet"), ("carol", "phone")] {
        let path = format!("/api/v1/users/{user}/devices/{device}/push");
        ok(&node, "PUT", &path, Some(json!({"provider": "fcm", "token": format!("{user}-{device}")}))).await;
    }
    ok(&node, "POST", "/api/v1/users/bob/devices/phone/revoke", None).await;
    let list = ok(&node, "GET", "/api/v1/users/bob/push", None).await;
    let devices: Vec<&str> =
        list["registrations"].as_array().unwrap().iter().map(|r| r["device"].as_str().unwrap()).collect();
    assert_eq!(devices, ["tablet"], "{list}");
    ok(&node, "POST", "/api/v1/users/carol/disable", None).await;
    assert_eq!(ok(&node, "GET", "/api/v1/users/carol/push", None).await["registrations"], json!([]));
    // ...and cannot register again while disabled.
    let (status, e) =
        Req::new("PUT", "/api/v1/users/carol/devices/phone/push", Some(json!({"provider": "fcm", "token": "c2"})))
            .send(node.addr)
            .await;
    assert_eq!((status, e["error"]["code"].as_str()), (403, Some("user_disabled")), "{e}");
    assert_eq!(ok(&node, "GET", "/api/v1/users/carol/push", None).await["registrations"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_push_to_a_connected_device_or_after_a_read_elsewhere_and_invalid_tokens_go() {
    let apns = FakeApns::start_default().await;
    let node = push_node(&apns.env(), 1500);
    register_and_leave(&node, "bob", "phone", "apns", "apns-token-bob").await;
    let mut alice = node.connect("alice", "phone").await;
    // Connected: no notification.
    let mut phone = node.connect("bob", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "c1", text("you are here")).await;
    phone.next_event("message").await;
    wait_counter(node.addr, "confab_push_skipped_total{reason=\"online\"}", 1.0).await;
    phone.close().await;
    // Read on another device before the push went out: no notification.
    let mut web = node.connect("bob", "web").await;
    let m = alice.send_msg(json!({"to": "bob"}), "c2", text("read it on the web")).await;
    web.next_event("message").await;
    web.expect_ok("read", json!({"conv_id": direct_id("alice", "bob"), "seq": m["seq"]})).await;
    wait_counter(node.addr, "confab_push_skipped_total{reason=\"read\"}", 1.0).await;
    // Unread: it goes out over HTTP/2, with APNs' headers.
    alice.send_msg(json!({"to": "bob"}), "c3", text("unread")).await;
    let got = apns.wait_for("the notification", 10, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["token"], "apns-token-bob");
    assert_eq!(got[0]["headers"]["apns-collapse-id"], direct_id("alice", "bob").as_str());
    assert_eq!(got[0]["body"]["aps"]["alert"]["body"], "unread");
    assert_eq!(got[0]["body"]["aps"]["badge"], 1);
    assert_eq!(apns.rejected(), 0, "{}", apns.last_rejection());
    // APNs says the token is gone: the registration goes with it.
    apns.set_invalid("apns-token-bob");
    alice.send_msg(json!({"to": "bob"}), "c4", text("to a dead token")).await;
    wait_counter(node.addr, "confab_push_failed_total{reason=\"invalid_token\"}", 1.0).await;
    let list = ok(&node, "GET", "/api/v1/users/bob/push", None).await;
    assert_eq!(list["registrations"], json!([]), "{list}");
    web.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_groups_push_only_mentions_and_recalled_messages_are_not_pushed() {
    let relay = FakeRelay::start_default().await;
    let node = push_node(&relay.env("huawei,xiaomi"), 300);
    register_and_leave(&node, "bob", "phone", "huawei", "hw-bob").await;
    register_and_leave(&node, "carol", "phone", "xiaomi", "mi-carol").await;
    let mut alice = node.connect("alice", "phone").await;
    let g = alice.expect_ok("group_create", json!({"name": "Team", "members": ["bob", "carol"]})).await;
    let conv = format!("g_{}", g["group"]["id"].as_str().unwrap());
    let target = json!({"conv_id": conv});
    // Bob mutes the group; carol does not.
    let mut bob = node.connect("bob", "web").await;
    bob.expect_ok("set_flags", json!({"conv_id": conv, "muted": true})).await;
    bob.close().await;
    alice.send_msg(target.clone(), "g1", text("lunch?")).await;
    let got = relay.wait_for("carol's notification", 10, |r| !r.is_empty()).await;
    wait_counter(node.addr, "confab_push_skipped_total{reason=\"muted\"}", 1.0).await;
    assert_eq!(got.len(), 1, "only carol: {got:?}");
    let n = &got[0];
    assert_eq!((n["provider"].as_str(), n["token"].as_str()), (Some("xiaomi"), Some("mi-carol")));
    assert_eq!(n["notification"]["title"], "Team");
    assert_eq!(n["notification"]["body"], "alice: lunch?");
    // A mention reaches bob through the mute.
    let mention = json!({"type": "text", "text": "@bob lunch?", "mentions": ["bob"]});
    alice.send_msg(target.clone(), "g2", mention).await;
    let got = relay.wait_for("bob's mention", 10, |r| r.iter().any(|n| n["token"] == "hw-bob")).await;
    let n = got.iter().find(|n| n["token"] == "hw-bob").unwrap();
    assert_eq!(n["notification"]["mention"], true);
    assert_eq!(n["notification"]["body"], "[@] alice: @bob lunch?");
    // Only the owner and admins mention everyone.
    let mut carol = node.connect("carol", "web").await;
    let all = json!({"type": "text", "text": "@all", "mention_all": true});
    let mut data = target.clone();
    data["client_msg_id"] = json!("g3");
    data["body"] = all;
    carol.expect_err("send", data, "forbidden").await;
    let bad = json!({"type": "text", "text": "x", "mentions": ["not valid!"]});
    let mut data = target.clone();
    data["client_msg_id"] = json!("g4");
    data["body"] = bad;
    carol.expect_err("send", data, "invalid_body").await;
    carol.close().await;
    // Recalled before its push went out: not pushed.
    let before = relay.received().len();
    let m = alice.send_msg(json!({"to": "carol"}), "r1", text("oops")).await;
    alice.expect_ok("recall", json!({"conv_id": m["conv_id"], "seq": m["seq"]})).await;
    wait_counter(node.addr, "confab_push_skipped_total{reason=\"recalled\"}", 1.0).await;
    assert_eq!(relay.received().len(), before);
    // The newest of a burst recalled: the notification shows the one before it.
    alice.send_msg(json!({"to": "carol"}), "r2", text("first")).await;
    let m = alice.send_msg(json!({"to": "carol"}), "r3", text("second, recalled")).await;
    alice.expect_ok("recall", json!({"conv_id": m["conv_id"], "seq": m["seq"]})).await;
    let got = relay.wait_for("the burst's notification", 10, |r| r.len() > before).await;
    let n = &got[before]["notification"];
    assert_eq!((n["body"].as_str(), n["seq"].as_u64()), (Some("first"), Some(m["seq"].as_u64().unwrap() - 1)), "{n}");
    assert_eq!(relay.rejected(), 0);
    // Alice's profile and the group's name were each read once for all these notifications.
    assert_eq!(counter(node.addr, "confab_push_profile_reads_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_is_retried() {
    let relay = FakeRelay::start_default().await;
    relay.set_fail_next(2, 503);
    let node = push_node(&relay.env("huawei"), 100);
    register_and_leave(&node, "bob", "phone", "huawei", "hw-bob").await;
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "f1", text("eventually")).await;
    let got = relay.wait_for("the notification after two 503s", 15, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1);
    assert_eq!(counter(node.addr, "confab_push_failed_total{reason=\"http_5xx\"}").await, 2.0);
    wait_counter(node.addr, "confab_push_sent_total{provider=\"huawei\"}", 1.0).await;
}

/// The queue is durable: a node killed (-9) with a notification queued and not yet due sends it
/// once it is back; one that was sent is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_queued_before_a_kill_9_go_out_after_the_restart_once() {
    let relay = FakeRelay::start_default().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let mut env = relay.env("huawei");
    for (k, v) in [
        ("CONFAB__PUSH__DELAY_MS", "2000"),
        ("CONFAB__PUSH__POLL_INTERVAL_MS", "50"),
        ("CONFAB__PUSH__LEASE_TTL_MS", "1000"),
        ("CONFAB__CLUSTER__NODE_ID", "push-node"),
    ] {
        env.push((k.into(), v.into()));
    }
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let node = BinaryNode::start(&dir, &extra).await;
    let mut bob = node.connect("bob", "phone").await;
    bob.expect_ok("push_register", json!({"provider": "huawei", "token": "hw-bob"})).await;
    bob.close().await;
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "k0", text("sent before")).await;
    relay.wait_for("the first notification", 10, |r| r.len() == 1).await;
    alice.send_msg(json!({"to": "bob"}), "k1", text("queued")).await;
    // Planned (the pusher polls every 50 ms), not due for 2 s.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(relay.received().len(), 1);
    node.kill_9().await;
    let node = BinaryNode::start(&dir, &extra).await;
    let got = relay.wait_for("the queued notification", 15, |r| r.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let got2 = relay.received();
    assert_eq!(got2.len(), 2, "each once: {got2:?}");
    assert_eq!(got[1]["notification"]["body"], "queued");
    node.stop().await;
}

/// Push turned on over an outbox that webhooks filled while it was off: messages older than
/// `push.max_age_secs` are not pushed, newer ones are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_max_age_are_not_pushed_when_push_is_turned_on() {
    let relay = FakeRelay::start_default().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let hooks =
        json!([{"name": "w", "url": "http://127.0.0.1:9/hook", "key_id": "k", "secret": "0123456789abcdef0123"}]);
    let hooks = hooks.to_string();
    let mut push_env = relay.env("huawei");
    for (k, v) in [
        ("CONFAB__PUSH__DELAY_MS", "100"),
        ("CONFAB__PUSH__POLL_INTERVAL_MS", "50"),
        ("CONFAB__PUSH__MAX_AGE_SECS", "2"),
        ("CONFAB__CLUSTER__NODE_ID", "push-age"),
        ("CONFAB__WEBHOOKS__ENDPOINTS", hooks.as_str()),
    ] {
        push_env.push((k.into(), v.into()));
    }
    let with_push: Vec<(&str, &str)> = push_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let without_push = [("CONFAB__CLUSTER__NODE_ID", "push-age"), ("CONFAB__WEBHOOKS__ENDPOINTS", hooks.as_str())];
    // Bob's phone registers while push is on.
    let node = BinaryNode::start(&dir, &with_push).await;
    let mut bob = node.connect("bob", "phone").await;
    bob.expect_ok("push_register", json!({"provider": "huawei", "token": "hw-bob"})).await;
    bob.close().await;
    node.stop().await;
    // Push off (webhooks on): the message's event waits in the outbox.
    let node = BinaryNode::start(&dir, &without_push).await;
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "a1", text("old news")).await;
    alice.close().await;
    node.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Push on again: too old to push; a new message is pushed.
    let node = BinaryNode::start(&dir, &with_push).await;
    wait_counter(node.addr, "confab_push_skipped_total{reason=\"stale\"}", 1.0).await;
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "a2", text("fresh")).await;
    let got = relay.wait_for("the fresh notification", 10, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["notification"]["body"], "fresh");
    alice.close().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_registrations_are_refused() {
    let node = TestNode::start();
    let mut bob = node.connect("bob", "phone").await;
    let e = bob.expect_err("push_register", json!({"provider": "fcm", "token": "t"}), "push_provider_unknown").await;
    assert!(e["message"].as_str().unwrap().contains("not configured"), "{e}");
    assert_eq!(bob.expect_ok("push_unregister", json!({})).await["removed"], false);
}
