//! Bad input: authentication, malformed frames, limits, invalid requests and bodies. Each is
//! answered with its documented code and leaves nothing stored.

use serde_json::{json, Value};

use crate::common::{direct_id, text, token, Auth, Client, TestNode, SECRET};

#[tokio::test]
async fn upgrade_needs_a_valid_token() {
    let node = TestNode::start();
    let refused = |r: Result<Client, crate::common::Refused>| match r {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => e,
    };
    let e = refused(Client::try_connect(node.addr, Auth::None, None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")), "{e:?}");
    assert!(e.body["error"]["message"].is_string());

    let other = confab::auth::mint("some-other-secret-0123456789", "alice", "phone", 3600).unwrap();
    let e = refused(Client::try_connect(node.addr, Auth::Bearer(&other), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")));

    let e = refused(Client::try_connect(node.addr, Auth::Bearer("not.a.jwt"), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let e = refused(Client::try_connect(node.addr, Auth::Bearer(""), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")));

    // A tampered payload (another user) with the original signature.
    let good = token("alice", "phone");
    let parts: Vec<&str> = good.split('.').collect();
    let forged = confab::auth::mint(SECRET, "mallory", "phone", 3600).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], forged.split('.').nth(1).unwrap(), parts[2]);
    let e = refused(Client::try_connect(node.addr, Auth::Bearer(&tampered), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")));

    let expired = confab::auth::mint(SECRET, "alice", "phone", 0).unwrap();
    let e = refused(Client::try_connect(node.addr, Auth::Bearer(&expired), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("token_expired")));
    let e = refused(Client::try_connect(node.addr, Auth::Query(&expired), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("token_expired")));
    let e = refused(Client::try_connect(node.addr, Auth::Query("garbage"), None).await);
    assert_eq!((e.status, e.body["error"]["code"].as_str()), (401, Some("unauthorized")));

    // `?token=` works, and identifies the user and device.
    let mut q = Client::try_connect(node.addr, Auth::Query(&token("alice", "browser")), None).await.unwrap();
    q.user = "alice".into();
    let mut phone = node.connect("alice", "phone").await;
    let m = q.send_msg(json!({"to": "bob"}), "q1", text("from the browser")).await;
    assert_eq!(m["sender"], "alice");
    assert_eq!(phone.next_event("message").await, m);
    q.no_event_within(100).await;
    assert_eq!(node.metric("confab_connections").await, 2.0);
}

#[tokio::test]
async fn malformed_frames_get_their_codes_and_the_connection_stays_usable() {
    let node = TestNode::start();
    let mut c = node.connect("alice", "phone").await;
    let errs_before = node.metric("confab_request_errors_total").await;

    // Not JSON, not an object, no id, a bad id: no id to echo.
    for (frame, code) in [
        ("{not json", "malformed_frame"),
        ("[1,2,3]", "malformed_frame"),
        ("\"ping\"", "malformed_frame"),
        (r#"{"op":"ping"}"#, "invalid_request"),
        (r#"{"id":null,"op":"ping"}"#, "invalid_request"),
        (r#"{"id":true,"op":"ping"}"#, "invalid_request"),
        (r#"{"id":{"a":1},"op":"ping"}"#, "invalid_request"),
    ] {
        c.send_text(frame).await;
        let r = c.reply("null").await;
        assert_eq!(r["error"]["code"], code, "{frame}: {r}");
        assert_eq!(r["id"], Value::Null);
    }
    // An id, but no op or an unknown op: the id is echoed as sent (string or number).
    c.send_text(r#"{"id":"x1"}"#).await;
    assert_eq!(c.reply("\"x1\"").await["error"]["code"], "malformed_frame");
    c.send_text(r#"{"id":17,"op":"fly"}"#).await;
    let r = c.reply("17").await;
    assert_eq!((r["id"].as_u64(), r["error"]["code"].as_str()), (Some(17), Some("unknown_op")));
    c.send_text(r#"{"id":-3,"op":"ping","data":{}}"#).await;
    assert!(c.reply("-3").await["result"]["ts"].is_i64());
    c.send_text(r#"{"id":"p","op":"ping","data":null}"#).await;
    assert!(c.reply("\"p\"").await["result"]["ts"].is_i64());

    // Binary frames are refused.
    c.send_binary(b"{\"id\":1,\"op\":\"ping\"}".to_vec()).await;
    let r = c.reply("null").await;
    assert_eq!(r["error"]["code"], "malformed_frame");

    // Unknown fields, missing fields and wrong types inside data.
    let ab = direct_id("alice", "bob");
    c.send_msg(json!({"to": "bob"}), "ok-1", text("first")).await;
    c.expect_err("history", json!({"conv_id": ab, "limt": 5}), "invalid_request").await;
    c.expect_err("history", json!({}), "invalid_request").await;
    c.expect_err("history", json!({"conv_id": 5}), "invalid_request").await;
    c.expect_err("history", json!({"conv_id": ab, "limit": -1}), "invalid_request").await;
    c.expect_err(
        "send",
        json!({"to": "bob", "client_msg_id": "u1", "body": text("x"), "urgent": true}),
        "invalid_request",
    )
    .await;
    c.expect_err("send", json!({"to": "bob", "body": text("x")}), "invalid_request").await;
    c.expect_err("send", json!({"to": "bob", "client_msg_id": "u2"}), "invalid_request").await;
    c.expect_err("send", json!({"client_msg_id": "u3", "body": text("x")}), "invalid_request").await;
    c.expect_err(
        "send",
        json!({"to": "bob", "conv_id": ab, "client_msg_id": "u4", "body": text("x")}),
        "invalid_request",
    )
    .await;
    c.expect_err("send", json!({"to": "bob", "client_msg_id": "has space", "body": text("x")}), "invalid_request")
        .await;
    c.expect_err("send", json!({"to": "bob", "client_msg_id": "x".repeat(65), "body": text("x")}), "invalid_request")
        .await;
    c.expect_err("send", json!({"to": "bob!", "client_msg_id": "u5", "body": text("x")}), "invalid_request").await;
    c.expect_err("send", json!({"conv_id": "nope", "client_msg_id": "u6", "body": text("x")}), "invalid_request").await;
    c.expect_err("send", json!({"to": "bob", "client_msg_id": "u7", "body": "hello"}), "invalid_request").await;
    c.expect_err(
        "send",
        json!({"to": "bob", "client_msg_id": "u8", "body": {"type": "sticker", "id": 1}}),
        "invalid_request",
    )
    .await;
    c.expect_err("send", json!({"to": "bob", "client_msg_id": "u9", "body": {"text": "no type"}}), "invalid_request")
        .await;
    c.expect_err("conversations", json!({"since": "yesterday"}), "invalid_request").await;
    c.expect_err("group_create", json!({"name": "x", "owner": "me"}), "invalid_request").await;

    // Conversations that do not exist.
    c.expect_err(
        "send",
        json!({"conv_id": format!("d_{}", "0".repeat(32)), "client_msg_id": "n1", "body": text("x")}),
        "not_found",
    )
    .await;
    c.expect_err("send", json!({"conv_id": "g_nope", "client_msg_id": "n2", "body": text("x")}), "not_found").await;
    c.expect_err("history", json!({"conv_id": "g_nope"}), "not_found").await;

    // Nothing of that was stored, and the connection still works.
    let h = c.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(h["last_seq"], 1);
    let l = c.expect_ok("conversations", json!({})).await;
    assert_eq!(l["conversations"].as_array().unwrap().len(), 1);
    let m = c.send_msg(json!({"to": "bob"}), "ok-2", text("second")).await;
    assert_eq!(m["seq"], 2);
    // Every one of those was counted as a request error.
    assert!(node.metric("confab_request_errors_total").await >= errs_before + 30.0);
}

#[tokio::test]
async fn invalid_bodies_are_refused_and_nothing_is_stored() {
    let node = TestNode::with(&[("CONFAB__CHAT__MAX_TEXT_CHARS", "10")]);
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    let first = alice.send_msg(json!({"to": "bob"}), "ok", text("0123456789")).await;
    assert_eq!(bob.next_event("message").await, first);
    let v_before = alice.expect_ok("conversation", json!({"conv_id": ab})).await["cursor"].clone();

    let bad = vec![
        text(""),
        text("  \n\t "),
        text("01234567890"),
        json!({"type": "code", "code": "0123456789AB"}),
        json!({"type": "code", "code": " "}),
        json!({"type": "location", "lat": 91.0, "lng": 0.0}),
        json!({"type": "location", "lat": -90.5, "lng": 0.0}),
        json!({"type": "location", "lat": 0.0, "lng": 180.1}),
        json!({"type": "image", "url": ""}),
        json!({"type": "image", "url": "https://x/a b.png"}),
        json!({"type": "image", "url": format!("https://x/{}", "a".repeat(2048))}),
        json!({"type": "audio", "url": "https://x/a.ogg", "duration_ms": 0}),
        json!({"type": "video", "url": "https://x/v.mp4", "duration_ms": 5, "thumbnail_url": "bad url"}),
        json!({"type": "file", "url": "https://x/f", "name": "", "size": 1}),
        json!({"type": "file", "url": "https://x/f", "name": "n".repeat(257), "size": 1}),
        json!({"type": "custom", "data": {"blob": "z".repeat(17 * 1024)}}),
        json!({"type": "system", "event": "group_created", "data": {}}),
        json!({"type": "recalled", "by": "alice"}),
        // A known type with a missing field or an unknown field is an invalid body too.
        json!({"type": "text"}),
        json!({"type": "text", "text": "hi", "bold": true}),
        json!({"type": "audio", "url": "https://x/a.ogg"}),
        json!({"type": "location", "lat": "north", "lng": 0.0}),
    ];
    for (i, body) in bad.iter().enumerate() {
        let e = alice
            .expect_err("send", json!({"to": "bob", "client_msg_id": format!("bad-{i}"), "body": body}), "invalid_body")
            .await;
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    bob.no_event_within(150).await;
    let h = alice.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(h["last_seq"], 1);
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(alice.expect_ok("conversation", json!({"conv_id": ab})).await["cursor"], v_before);
    alice.assert_key_unused(json!({"to": "bob"}), "bad-0", text("fixed"), 2).await;
}

#[tokio::test]
async fn oversized_frames() {
    let node = TestNode::start();
    let mut alice = node.connect("alice", "phone").await;
    let ab = direct_id("alice", "bob");
    alice.send_msg(json!({"to": "bob"}), "1", text("small")).await;

    // 70 KB (limit 64 KiB): the connection is closed with 1009 (frame_too_large), nothing stored.
    let big = json!({"id": "big", "op": "send", "data": {"to": "bob", "client_msg_id": "big", "body": text(&"y".repeat(70_000))}});
    alice.send_text(&big.to_string()).await;
    let code = alice.wait_closed(std::time::Duration::from_secs(5)).await;
    assert_eq!(code, Some(1009));

    let mut again = node.connect("alice", "phone").await;
    assert_eq!(again.expect_ok("history", json!({"conv_id": ab})).await["last_seq"], 1);
    // Just under the limit passes.
    let pad = 65_536 - 200;
    let near = json!({"id": "near", "op": "send", "data": {"to": "bob", "client_msg_id": "near", "body": {"type": "custom", "data": {"p": "z".repeat(pad.min(16_000))}}}});
    assert!(near.to_string().len() < 65_536);
    again.send_text(&near.to_string()).await;
    assert!(again.reply("\"near\"").await.get("error").is_none());
}

#[tokio::test]
async fn too_many_requests_in_flight() {
    let node = TestNode::with(&[("CONFAB__SESSION__MAX_INFLIGHT_REQUESTS", "1")]);
    let mut alice = node.connect("alice", "phone").await;
    alice.send_msg(json!({"to": "bob"}), "1", text("x")).await;
    let ab = direct_id("alice", "bob");
    // Many requests in one burst (one write, so they arrive together even on a loaded machine):
    // each gets exactly one reply, some are refused.
    const N: usize = 300;
    let keys: Vec<String> = (0..N).map(|i| format!("\"t{i}\"")).collect();
    let frames: Vec<String> =
        (0..N).map(|i| json!({"id": format!("t{i}"), "op": "history", "data": {"conv_id": ab}}).to_string()).collect();
    alice.send_batch(&frames).await;
    let (mut ok, mut refused) = (0, 0);
    for k in &keys {
        let r = alice.reply(k).await;
        match r["error"]["code"].as_str() {
            None => ok += 1,
            Some("too_many_requests") => refused += 1,
            Some(other) => panic!("unexpected {other}: {r}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    assert_eq!(ok + refused, N);
    alice.no_event_within(100).await;
}
