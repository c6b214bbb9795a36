//! What a hostile client or a careless operator must not be able to do (docs/security.md): read a
//! group after leaving it, keep a session after losing access, outlive a token, leave recalled
//! text behind, make the node buffer or hold what it should refuse, or flood it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::common::{direct_id, seqs, text, token, Auth, Client, TestNode, NO_RATE_LIMITS, SECRET};
use crate::http_api::{node_with, ok, Req};
use crate::ws_groups::team;

// ---- confidentiality: former members ----

/// A removed member sees the group as it was when she left, through every read path: the item,
/// the list (with and without a cursor), history, changes and `set_flags`'s answer; nothing
/// after, not even the cursor moving.
#[tokio::test]
async fn a_removed_member_sees_nothing_said_after_she_left() {
    let node = TestNode::start();
    let (mut alice, mut bob, mut carol) = team(&node).await;
    alice.send_msg(json!({"conv_id": "g_team"}), "a1", text("before")).await;
    let list = carol.expect_ok("conversations", json!({})).await;
    let cursor = list["next_since"].as_u64().unwrap();
    let removed = alice.expect_ok("group_remove", json!({"group_id": "team", "members": ["carol"]})).await;
    let left = removed["message"]["seq"].as_u64().unwrap();
    assert_eq!(left, 3);
    // Her list moves once, for her removal.
    let list = carol.expect_ok("conversations", json!({"since": cursor})).await;
    let items = list["conversations"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!((items[0]["last_seq"].as_u64(), items[0]["active"].as_bool()), (Some(left), Some(false)));
    let cursor = list["next_since"].as_u64().unwrap();

    // Secrets after her removal.
    let secret = bob.send_msg(json!({"conv_id": "g_team"}), "b1", text("the secret plan")).await;
    alice.expect_ok("group_update", json!({"group_id": "team", "notice": "secret notice"})).await;
    let leaks = |v: &Value| {
        let s = v.to_string();
        s.contains("secret") || s.contains(&format!("\"last_seq\":{}", secret["seq"]))
    };

    let item = carol.expect_ok("conversation", json!({"conv_id": "g_team"})).await;
    assert!(!leaks(&item), "{item}");
    assert_eq!((item["last_seq"].as_u64(), item["last_message"]["seq"].as_u64()), (Some(left), Some(left)));
    assert_eq!(item["unread"], 0);

    let list = carol.expect_ok("conversations", json!({"since": cursor})).await;
    assert_eq!(list["conversations"], json!([]), "the list does not move for what she cannot see: {list}");
    let all = carol.expect_ok("conversations", json!({})).await;
    assert!(!leaks(&all), "{all}");

    let flagged = carol.expect_ok("set_flags", json!({"conv_id": "g_team", "pinned": true})).await;
    assert!(!leaks(&flagged), "{flagged}");
    assert_eq!(flagged["last_seq"].as_u64(), Some(left));

    let h = carol.expect_ok("history", json!({"conv_id": "g_team"})).await;
    assert_eq!(
        (seqs(&h["messages"]), h["last_seq"].as_u64(), h["has_more"].as_bool()),
        (vec![1, 2, 3], Some(3), Some(false))
    );
    let after = carol.expect_ok("history", json!({"conv_id": "g_team", "after": 2})).await;
    assert_eq!(seqs(&after["messages"]), vec![3], "gap fill stops where she left: {after}");
    let before = carol.expect_ok("history", json!({"conv_id": "g_team", "before": 100})).await;
    assert_eq!(seqs(&before["messages"]), vec![1, 2, 3]);
    assert!(!leaks(&h) && !leaks(&after) && !leaks(&before));

    // A recall after she left, of a message she saw, reaches her changes; one she never saw does not.
    alice.expect_ok("recall", json!({"conv_id": "g_team", "seq": 2})).await;
    bob.expect_ok("recall", json!({"conv_id": "g_team", "seq": secret["seq"]})).await;
    let ch = carol.expect_ok("changes", json!({"conv_id": "g_team", "since": 0})).await;
    assert_eq!(ch["recalled"], json!([2]), "{ch}");

    carol.expect_err("read_count", json!({"conv_id": "g_team", "seq": 2}), "not_member").await;
    carol.expect_err("read", json!({"conv_id": "g_team", "seq": 2}), "not_member").await;
    carol.expect_err("group_info", json!({"group_id": "team"}), "not_member").await;
    carol.expect_err("group_members", json!({"group_id": "team"}), "not_member").await;

    // Re-added, she sees everything again.
    alice.expect_ok("group_add", json!({"group_id": "team", "members": ["carol"]})).await;
    let item = carol.expect_ok("conversation", json!({"conv_id": "g_team"})).await;
    assert_eq!(item["active"], true);
    assert!(item["last_seq"].as_u64().unwrap() > secret["seq"].as_u64().unwrap());
}

/// A member who leaves, and every member of a dismissed group, keep what was there when they left:
/// history up to it, and for a dismissed group its last profile (`group_info`) and no members.
#[tokio::test]
async fn former_members_keep_the_history_of_a_dismissed_group() {
    let node = TestNode::start();
    let (mut alice, mut bob, mut carol) = team(&node).await;
    bob.send_msg(json!({"conv_id": "g_team"}), "b1", text("hello")).await;
    let left = carol.expect_ok("group_leave", json!({"group_id": "team"})).await["message"]["seq"].as_u64().unwrap();
    alice.send_msg(json!({"conv_id": "g_team"}), "a1", text("after carol")).await;
    let d = alice.expect_ok("group_dismiss", json!({"group_id": "team"})).await;
    let last = d["message"]["seq"].as_u64().unwrap();
    for c in [&mut alice, &mut bob] {
        let h = c.expect_ok("history", json!({"conv_id": "g_team"})).await;
        assert_eq!(seqs(&h["messages"]), (1..=last).collect::<Vec<_>>(), "{}", c.user);
        let g = c.expect_ok("group_info", json!({"group_id": "team"})).await;
        assert_eq!((g["group"]["dismissed"].as_bool(), g["group"]["name"].as_str()), (Some(true), Some("Team")));
        assert_eq!(c.expect_ok("group_members", json!({"group_id": "team"})).await["members"], json!([]));
    }
    let h = carol.expect_ok("history", json!({"conv_id": "g_team"})).await;
    assert_eq!(seqs(&h["messages"]), (1..=left).collect::<Vec<_>>(), "she left before the end");
    carol.expect_err("group_info", json!({"group_id": "team"}), "not_member").await;
    let mut dave = node.connect("dave", "phone").await;
    dave.expect_err("history", json!({"conv_id": "g_team"}), "not_member").await;
    dave.expect_err("group_info", json!({"group_id": "team"}), "not_member").await;
}

// ---- access ----

/// A connection opened while its user is being disabled never survives the disable: whatever the
/// interleaving, it is refused at the upgrade or closed (1008) right after.
#[tokio::test]
async fn a_connection_racing_a_disable_does_not_survive_it() {
    let node = node_with(NO_RATE_LIMITS);
    // The window is short (the access check's read, then the session's registration): the
    // rounds sweep the disable's start over a few milliseconds around the connection's.
    for round in 0..200u64 {
        let user = format!("racer{round}");
        ok(&node, "POST", &format!("/api/v1/users/{user}/enable"), None).await;
        let t = token(&user, "phone");
        let offset = Duration::from_micros((round * 7919) % 6000);
        let (connect_after, disable_after) =
            if round % 2 == 0 { (offset, Duration::ZERO) } else { (Duration::ZERO, offset) };
        let connect = async {
            tokio::time::sleep(connect_after).await;
            Client::try_connect(node.addr, Auth::Bearer(&t), None).await
        };
        let path = format!("/api/v1/users/{user}/disable");
        let disable = async {
            tokio::time::sleep(disable_after).await;
            Req::new("POST", &path, None).send(node.addr).await
        };
        let (conn, (status, _)) = tokio::join!(connect, disable);
        assert_eq!(status, 200);
        match conn {
            Err(r) => assert_eq!(r.body["error"]["code"], "user_disabled", "round {round}"),
            Ok(mut c) => {
                let code = c.wait_closed(Duration::from_secs(3)).await;
                assert_eq!(code, Some(1008), "round {round}: the session outlived the disable");
            }
        }
    }
}

/// From the moment a user is disabled its sessions' requests are refused, before the close frame.
#[tokio::test]
async fn requests_after_a_disable_are_refused_at_once() {
    let node = node_with(&[]);
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "1", text("hi")).await;
    ok(&node, "POST", "/api/v1/users/alice/disable", None).await;
    // Whatever arrives is refused (or finds the connection closed); nothing is stored.
    if let Some(key) = alice.try_send_req("send", json!({"to": "bob", "client_msg_id": "2", "body": text("x")})).await {
        if let Some(r) = alice.try_reply(&key, Duration::from_secs(2)).await {
            assert_eq!(r["error"]["code"], "user_disabled", "{r}");
        }
    }
    assert_eq!(alice.wait_closed(Duration::from_secs(3)).await, Some(1008));
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{}/messages", direct_id("alice", "bob")), None).await;
    assert_eq!(h["last_seq"], 1);
}

/// A revocation refuses every token issued before it, to the millisecond (a token minted in the
/// same second just before is refused; one minted just after works), and a token minted right
/// after it over the API works even within the same millisecond.
#[tokio::test]
async fn a_revocation_refuses_exactly_the_tokens_issued_before_it() {
    let node = node_with(&[]);
    let mint = |device: &'static str| {
        let node = &node;
        async move {
            let t = ok(node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": device}))).await;
            t["token"].as_str().unwrap().to_owned()
        }
    };
    // Within one second, so the old one-second rule would have let `before` through.
    let (before, after) = loop {
        let start = crate::http_api::now();
        let before = mint("a").await;
        ok(&node, "POST", "/api/v1/users/alice/tokens/revoke", None).await;
        let after = mint("b").await;
        if crate::http_api::now() == start {
            break (before, after);
        }
    };
    let refused = Client::try_connect(node.addr, Auth::Bearer(&before), None).await.err().expect("refused");
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (401, Some("token_revoked")));
    let Ok(mut ok) = Client::try_connect(node.addr, Auth::Bearer(&after), None).await else { panic!("refused") };
    ok.expect_ok("ping", json!({})).await;
}

/// A token with a future `iat` (which would outlive a revocation), a future `nbf`, or a lifetime
/// over `auth.max_token_ttl_secs` is refused.
#[tokio::test]
async fn tokens_from_the_future_or_too_long_lived_are_refused() {
    let node = TestNode::with(&[("CONFAB__AUTH__MAX_TOKEN_TTL_SECS", "3600"), ("CONFAB__AUTH__TOKEN_TTL_SECS", "600")]);
    let now = crate::http_api::now();
    let forge = |claims: Value| {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let input = format!("{}.{}", B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64.encode(claims.to_string()));
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        m.update(input.as_bytes());
        format!("{input}.{}", B64.encode(m.finalize().into_bytes()))
    };
    for claims in [
        json!({"sub": "alice", "dev": "p", "iat": now + 86_400, "exp": now + 86_400 + 600}),
        json!({"sub": "alice", "dev": "p", "iat": now, "exp": now + 600, "nbf": now + 3600}),
        json!({"sub": "alice", "dev": "p", "iat": now, "exp": now + 7200}),
    ] {
        let r =
            Client::try_connect(node.addr, Auth::Bearer(&forge(claims.clone())), None).await.err().expect("refused");
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("unauthorized")), "{claims}");
    }
    let fine = forge(json!({"sub": "alice", "dev": "p", "iat": now, "exp": now + 600}));
    assert!(Client::try_connect(node.addr, Auth::Bearer(&fine), None).await.is_ok());
    // The scheme is case-insensitive (RFC 9110).
    let lower = reqwest_upgrade(node.addr, &format!("bearer {fine}")).await;
    assert_eq!(lower, 101, "`Authorization: bearer …` is accepted");
}

/// The status of a WebSocket upgrade with this `Authorization` header.
async fn reqwest_upgrade(addr: SocketAddr, authorization: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: {authorization}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// A connection lives no longer than its token: it is told shortly before (`token_expiring`),
/// may present a fresh token (`refresh`), and is closed with 1008 `token_expired` otherwise.
#[tokio::test]
async fn a_session_ends_with_its_token_unless_refreshed() {
    let node = TestNode::start();
    let short = confab::auth::mint(SECRET, "alice", "phone", 2).unwrap();
    let mut c = Client::try_connect(node.addr, Auth::Bearer(&short), None).await.ok().unwrap();
    let notice = c.next_event("token_expiring").await;
    assert!(notice["expires_at"].as_u64().unwrap() <= crate::http_api::now() + 2, "{notice}");
    // Refreshing with a token of another user or device is refused; the right one extends it.
    let other = confab::auth::mint(SECRET, "bob", "phone", 60).unwrap();
    c.expect_err("refresh", json!({"token": other}), "invalid_request").await;
    c.expect_err("refresh", json!({"token": "junk"}), "unauthorized").await;
    let fresh = confab::auth::mint(SECRET, "alice", "phone", 3).unwrap();
    let r = c.expect_ok("refresh", json!({"token": fresh})).await;
    assert!(r["expires_at"].as_u64().unwrap() >= crate::http_api::now() + 2, "{r}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    c.expect_ok("ping", json!({})).await;
    // Not refreshed again: closed when the fresh token expires.
    let code = c.wait_closed(Duration::from_secs(4)).await;
    assert_eq!(code, Some(1008));
}

// ---- recall ----

/// A recall scrubs its text from the quotes of every reply, stored and served (history, the
/// conversation's last message), and replies made afterwards quote nothing of it.
#[tokio::test]
async fn a_recall_leaves_nothing_of_the_text_in_quotes() {
    let node = TestNode::start();
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    let m = alice.send_msg(json!({"to": "bob"}), "1", text("my bank pin is 1234")).await;
    let r1 = bob
        .expect_ok("send", json!({"to": "alice", "client_msg_id": "2", "body": text("noted"), "reply_to": m["seq"]}))
        .await;
    assert_eq!(r1["message"]["reply_to"]["quote"], "my bank pin is 1234");
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": m["seq"]})).await;
    let r2 = bob
        .expect_ok("send", json!({"to": "alice", "client_msg_id": "3", "body": text("?"), "reply_to": m["seq"]}))
        .await;
    for v in [
        alice.expect_ok("history", json!({"conv_id": ab})).await,
        bob.expect_ok("history", json!({"conv_id": ab})).await,
        r2.clone(),
    ] {
        assert!(!v.to_string().contains("1234"), "{v}");
    }
    let h = bob.expect_ok("history", json!({"conv_id": ab})).await;
    for reply in &h["messages"].as_array().unwrap()[1..] {
        assert_eq!(reply["reply_to"]["recalled"], true, "{reply}");
        assert_eq!(reply["reply_to"]["seq"], m["seq"]);
    }
}

/// Two devices recalling the same message at once: one `recall` event per device, not two.
#[tokio::test]
async fn concurrent_recalls_announce_once() {
    let node = TestNode::with(NO_RATE_LIMITS);
    let [mut a1, mut a2, mut bob] = node.connect_each(["alice/phone", "alice/laptop", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    const N: u64 = 20;
    for i in 1..=N {
        a1.send_msg(json!({"to": "bob"}), &format!("m{i}"), text("x")).await;
    }
    bob.drain_events(200).await;
    a2.drain_events(100).await;
    for seq in 1..=N {
        let k1 = a1.send_req("recall", json!({"conv_id": ab, "seq": seq})).await;
        let k2 = a2.send_req("recall", json!({"conv_id": ab, "seq": seq})).await;
        assert!(a1.reply(&k1).await.get("error").is_none());
        assert!(a2.reply(&k2).await.get("error").is_none());
    }
    let events = bob.drain_events(500).await;
    let recalls: Vec<u64> =
        events.iter().filter(|e| e["event"] == "recall").map(|e| e["data"]["seq"].as_u64().unwrap()).collect();
    assert_eq!(recalls, (1..=N).collect::<Vec<_>>(), "one recall event per message");
}

// ---- the request/reply contract ----

/// A client that waits for each reply before its next request is never refused for requests in
/// flight: a request's slot is free by the time its reply leaves.
#[tokio::test]
async fn waiting_for_each_reply_never_meets_too_many_requests() {
    let mut env = NO_RATE_LIMITS.to_vec();
    env.push(("CONFAB__SESSION__MAX_INFLIGHT_REQUESTS", "1"));
    let node = TestNode::with(&env);
    let mut alice = node.connect("alice", "phone").await;
    alice.expect_ok("group_create", json!({"group_id": "g", "name": "G", "members": ["bob"]})).await;
    for i in 0..400 {
        let r =
            alice.request("send", json!({"conv_id": "g_g", "client_msg_id": format!("m{i}"), "body": text("x")})).await;
        assert!(r.get("error").is_none(), "send {i}: {r}");
        let r = alice.request("group_update", json!({"group_id": "g", "notice": format!("n{i}")})).await;
        assert!(r.get("error").is_none(), "group_update {i}: {r}");
    }
}

/// The acting device gets a group change's system message once, in its reply (with the group for
/// profile and role changes), never again as an event; its other devices get the event.
#[tokio::test]
async fn the_acting_device_gets_a_system_message_once() {
    let node = TestNode::start();
    let (mut alice, _bob, _carol) = team(&node).await;
    let mut laptop = node.connect("alice", "laptop").await;
    let add = alice.expect_ok("group_add", json!({"group_id": "team", "members": ["dave"]})).await;
    let upd = alice.expect_ok("group_update", json!({"group_id": "team", "name": "Team 2"})).await;
    assert_eq!(upd["group"]["name"], "Team 2");
    let rm = alice.expect_ok("group_remove", json!({"group_id": "team", "members": ["dave"]})).await;
    let role = alice.expect_ok("group_set_role", json!({"group_id": "team", "user_id": "bob", "role": "admin"})).await;
    assert_eq!(role["message"]["body"]["event"], "roles_changed");
    let mine: Vec<u64> = [&add, &upd, &rm, &role].iter().map(|r| r["message"]["seq"].as_u64().unwrap()).collect();
    let events = alice.drain_events(300).await;
    let echoed: Vec<&Value> = events.iter().filter(|e| e["event"] == "message").collect();
    assert!(echoed.is_empty(), "system messages echoed to the acting device: {echoed:?}");
    assert_eq!(events.iter().filter(|e| e["event"] == "membership").count(), 2, "the membership events still come");
    let other: Vec<u64> = laptop
        .drain_events(300)
        .await
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(other, mine, "the other device gets each one as an event");
}

/// Ids `.` and `..` are refused (they cannot appear in API paths); cursors above 2^53 - 1 too.
#[tokio::test]
async fn dot_ids_and_unsafe_cursors_are_refused() {
    let node = TestNode::start();
    let mut alice = node.connect("alice", "phone").await;
    for id in [".", ".."] {
        alice.expect_err("send", json!({"to": id, "client_msg_id": "x", "body": text("x")}), "invalid_request").await;
        alice.expect_err("group_create", json!({"group_id": id, "name": "x"}), "invalid_request").await;
    }
    let t = confab::auth::mint(SECRET, "alice", "..", 60);
    assert!(t.is_err(), "no token for device ..");
    let big = 1u64 << 53;
    alice.expect_err("conversations", json!({"since": big}), "invalid_request").await;
    alice.expect_ok("conversations", json!({"since": big - 1})).await;
    let ab = direct_id("alice", "bob");
    alice.send_msg(json!({"to": "bob"}), "1", text("x")).await;
    alice.expect_err("changes", json!({"conv_id": ab, "since": big}), "invalid_request").await;
    alice.expect_err("history", json!({"conv_id": ab, "after": big}), "invalid_request").await;
}

// ---- frames and sockets ----

/// A raw WebSocket connection (frames written by hand).
async fn raw_ws(addr: SocketAddr, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let t = token(user, "raw");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {t}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// A masked client frame header (mask 0, so the payload goes as is), as tungstenite writes it.
fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let h = FrameHeader { is_final: fin, opcode: OpCode::from(opcode), mask: Some([0; 4]), ..FrameHeader::default() };
    let mut out = Vec::new();
    h.format(len, &mut out).unwrap();
    out
}

/// Reads server frames until a close frame; returns its code (None: the connection ended first).
async fn close_code(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    loop {
        // Parse what is there.
        let mut at = 0;
        while buf.len() >= at + 2 {
            let op = buf[at] & 0x0f;
            let (hl, len) = match buf[at + 1] & 0x7f {
                126 if buf.len() >= at + 4 => (4, u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize),
                127 if buf.len() >= at + 10 => {
                    (10, u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize)
                }
                126 | 127 => break,
                n => (2, n as usize),
            };
            if buf.len() < at + hl + len {
                break;
            }
            if op == 8 {
                let p = &buf[at + hl..at + hl + len];
                return (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
            }
            at += hl + len;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let mut chunk = vec![0u8; 65536];
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A header announcing 128 MiB is refused as soon as it arrives (1009): the node does not wait
/// for, nor buffer, the payload. So is a fragmented message adding up to more than the limit, and a
/// header with nothing after it.
#[tokio::test]
async fn oversized_frames_are_refused_from_their_header() {
    let node = TestNode::start();
    let mut s = raw_ws(node.addr, "alice").await;
    s.write_all(&header(true, 1, 128 << 20)).await.unwrap();
    s.write_all(&[b' '; 4096]).await.unwrap();
    assert_eq!(close_code(&mut s, Duration::from_secs(3)).await, Some(1009), "a 128 MiB header");

    let mut s = raw_ws(node.addr, "alice").await;
    s.write_all(&header(true, 1, 65_537)).await.unwrap();
    assert_eq!(close_code(&mut s, Duration::from_secs(3)).await, Some(1009), "a header alone, just over");

    let mut s = raw_ws(node.addr, "alice").await;
    for opcode in [1, 0, 0] {
        let mut f = header(false, opcode, 30_000);
        f.extend(std::iter::repeat_n(b' ', 30_000));
        s.write_all(&f).await.unwrap();
    }
    assert_eq!(close_code(&mut s, Duration::from_secs(3)).await, Some(1009), "fragments over the limit");
}

/// RFC 6455: a text frame that is not UTF-8 closes with 1007, whole or in fragments.
#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let node = TestNode::start();
    let mut s = raw_ws(node.addr, "alice").await;
    let mut f = header(true, 1, 3);
    f.extend_from_slice(&[b'{', 0xff, b'}']);
    s.write_all(&f).await.unwrap();
    assert_eq!(close_code(&mut s, Duration::from_secs(3)).await, Some(1007));

    let mut s = raw_ws(node.addr, "alice").await;
    let mut f = header(false, 1, 2);
    f.extend_from_slice(&[b'{', 0xc3]);
    f.extend(header(true, 0, 2));
    f.extend_from_slice(&[0x28, b'}']);
    s.write_all(&f).await.unwrap();
    assert_eq!(close_code(&mut s, Duration::from_secs(3)).await, Some(1007), "in fragments");
}

/// A client that stops reading is dropped (1013) and its socket does not stay open waiting to
/// flush: it is gone within the write timeout, and every socket is counted meanwhile.
#[tokio::test]
async fn a_dropped_slow_client_does_not_keep_its_socket() {
    let mut env = NO_RATE_LIMITS.to_vec();
    env.extend([
        ("CONFAB__SESSION__OUTBOUND_QUEUE", "16"),
        ("CONFAB__SERVER__WRITE_TIMEOUT_SECS", "2"),
        ("CONFAB__SERVER__SEND_BUFFER_BYTES", "4096"),
    ]);
    let node = TestNode::with(&env);
    let base = node.metric("confab_sockets_open").await;
    let sleeper = Client::try_connect(node.addr, Auth::Bearer(&token("bob", "phone")), Some(4096)).await.ok().unwrap();
    let mut alice = node.connect("alice", "phone").await;
    let big = "z".repeat(4000);
    // Flood bob, who never reads, until his queue overflows.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while node.metric("confab_slow_consumers_dropped_total").await < 1.0 {
        assert!(Instant::now() < deadline, "bob was never dropped");
        for _ in 0..20 {
            i += 1;
            alice.send_msg(json!({"to": "bob"}), &format!("m{i}"), text(&big)).await;
        }
    }
    assert!(node.metric("confab_sockets_open").await >= base + 2.0, "bob's and alice's sockets are counted");
    // Within the write timeout (+ slack) bob's socket is gone: only alice's and the metrics
    // request's own remain (`base` counted that request alone).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = node.metric("confab_sockets_open").await;
        if open <= base + 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the dropped client's socket stays open ({open} open, {base} before)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(sleeper);
}

// ---- rate limits ----

/// Sends beyond a connection's rate are refused with `rate_limited` and store nothing; the user's
/// limit holds over several connections; a user cannot fill groups with strangers faster than its
/// quota allows.
#[tokio::test]
async fn rate_limits_refuse_floods_and_store_nothing() {
    let node = TestNode::with(&[
        ("CONFAB__LIMITS__SENDS_PER_CONN_PER_SEC", "1"),
        ("CONFAB__LIMITS__SENDS_PER_CONN_BURST", "5"),
        ("CONFAB__LIMITS__SENDS_PER_USER_PER_SEC", "1"),
        ("CONFAB__LIMITS__SENDS_PER_USER_BURST", "8"),
        ("CONFAB__LIMITS__GROUP_ADDS_PER_USER_PER_HOUR", "1"),
        ("CONFAB__LIMITS__GROUP_ADDS_PER_USER_BURST", "10"),
        ("CONFAB__LIMITS__GROUP_CREATES_PER_USER_PER_HOUR", "1"),
        ("CONFAB__LIMITS__GROUP_CREATES_PER_USER_BURST", "3"),
    ]);
    let mut phone = node.connect("alice", "phone").await;
    let ab = direct_id("alice", "bob");
    let mut refused = 0;
    for i in 0..10 {
        let r = phone.request("send", json!({"to": "bob", "client_msg_id": format!("p{i}"), "body": text("x")})).await;
        if r["error"]["code"] == "rate_limited" {
            refused += 1;
        } else {
            assert!(r.get("error").is_none(), "{r}");
        }
    }
    assert!(refused >= 4, "a connection's burst is 5: {refused} refused of 10");
    let stored = phone.expect_ok("history", json!({"conv_id": ab})).await["last_seq"].as_u64().unwrap();
    assert_eq!(stored, 10 - refused, "refused sends store nothing");
    // Another device of the same user: the user's bucket (8) is nearly spent.
    let mut laptop = node.connect("alice", "laptop").await;
    let mut more = 0;
    for i in 0..6 {
        let r = laptop.request("send", json!({"to": "bob", "client_msg_id": format!("l{i}"), "body": text("x")})).await;
        more += u64::from(r.get("error").is_none());
    }
    assert!(stored + more <= 8 + 2, "the user's limit holds over connections: {stored} + {more}");

    // Groups: 10 users per hour in a burst, 3 creations.
    let strangers: Vec<String> = (0..11).map(|i| format!("s{i}")).collect();
    let e = phone.expect_err("group_create", json!({"name": "spam", "members": strangers}), "rate_limited").await;
    assert!(e["message"].as_str().unwrap().contains("users put into groups"), "{e}");
    phone.expect_ok("group_create", json!({"group_id": "g1", "name": "ok", "members": ["s0", "s1", "s2", "s3"]})).await;
    phone.expect_ok("group_add", json!({"group_id": "g1", "members": ["s4", "s5", "s6", "s7", "s8"]})).await;
    phone.expect_err("group_add", json!({"group_id": "g1", "members": ["s9", "s10"]}), "rate_limited").await;
    assert_eq!(phone.expect_ok("group_info", json!({"group_id": "g1"})).await["group"]["member_count"], 10);
    assert!(node.metric("confab_rate_limited_total").await >= 6.0);
}

/// Friend requests and join applications are limited per user (a spammer's reach); answering
/// is not, and the HTTP API is not limited per user.
#[tokio::test]
async fn friend_requests_and_join_applications_are_limited() {
    let node = crate::http_api::node_with(&[
        ("CONFAB__LIMITS__ASKS_PER_USER_PER_HOUR", "1"),
        ("CONFAB__LIMITS__ASKS_PER_USER_BURST", "3"),
    ]);
    let [mut spam, mut bob] = node.connect_each(["spam/phone", "bob/phone"]).await;
    for peer in ["p1", "p2", "bob"] {
        spam.expect_ok("friend_request", json!({"user_id": peer, "message": "hi"})).await;
    }
    let e = spam.expect_err("friend_request", json!({"user_id": "p4"}), "rate_limited").await;
    assert!(e["message"].as_str().unwrap().contains("friend requests"), "{e}");
    assert_eq!(crate::http_api::ok(&node, "GET", "/api/v1/users/p4/contacts/spam", None).await["contact"], Value::Null);
    bob.expect_ok("friend_accept", json!({"user_id": "spam"})).await;
    crate::http_api::ok(&node, "POST", "/api/v1/groups", Some(json!({"id": "club", "name": "Club", "owner": "bob"})))
        .await;
    crate::http_api::ok(&node, "PATCH", "/api/v1/groups/club", Some(json!({"join_mode": "approval"}))).await;
    spam.expect_err("group_join", json!({"group_id": "club", "message": "let me in"}), "rate_limited").await;
    let body = json!({"action": "request", "message": "via the backend"});
    crate::http_api::ok(&node, "POST", "/api/v1/users/spam/contacts/p5", Some(body)).await;
}

/// Connections per client address: how many are open at once and how fast they are opened.
#[tokio::test]
async fn connections_per_address_are_limited() {
    let node = TestNode::with(&[
        ("CONFAB__LIMITS__MAX_CONNECTIONS_PER_IP", "3"),
        ("CONFAB__LIMITS__CONNECTIONS_PER_IP_PER_SEC", "1"),
        ("CONFAB__LIMITS__CONNECTIONS_PER_IP_BURST", "5"),
    ]);
    let t = token("alice", "phone");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::try_connect(node.addr, Auth::Bearer(&t), None).await.ok().unwrap());
    }
    let r = Client::try_connect(node.addr, Auth::Bearer(&t), None).await.err().expect("a fourth is refused");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("rate_limited")));
    // Closing one frees its place (the session gives it back when it stops).
    open.pop().unwrap().close().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let again = loop {
        match Client::try_connect(node.addr, Auth::Bearer(&t), None).await {
            Ok(c) => break c,
            Err(r) if r.body["error"]["message"].as_str().unwrap_or("").contains("open from one address") => {
                assert!(Instant::now() < deadline, "the closed connection's place never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(r) => panic!("{r:?}"),
        }
    };
    open.push(again);
    // Five opened within the burst so far (3 + refused + 1 + ...): the rate refuses the next.
    drop(open);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rate_refused = false;
    for _ in 0..4 {
        if let Err(r) = Client::try_connect(node.addr, Auth::Bearer(&t), None).await {
            assert_eq!(r.status, 429);
            rate_refused |= r.body["error"]["message"].as_str().unwrap_or("").contains("connections opened");
        }
    }
    assert!(rate_refused, "the opening rate is limited");
}
