//! Contacts over WebSocket and the HTTP API: friend requests and their answers, remarks, blocks,
//! the `contacts` sync, `chat.who_may_message` and its staff exemption, and the refusals (each
//! with its code, changing nothing).

use serde_json::{json, Value};

use crate::common::{direct_id, text, Client, TestNode};
use crate::http_api::{node_with, ok, Req};

/// The caller's rows after `since`, every page.
async fn sync(c: &mut Client, since: u64) -> (Vec<Value>, u64) {
    let (mut rows, mut since) = (Vec::new(), since);
    loop {
        let r = c.expect_ok("contacts", json!({"since": since, "limit": 2})).await;
        rows.extend(r["contacts"].as_array().unwrap().iter().cloned());
        since = r["next_since"].as_u64().unwrap();
        if !r["has_more"].as_bool().unwrap() {
            return (rows, since);
        }
    }
}

/// Asserts a `contact` event with this change and the row's peer; returns the row.
async fn contact_event(c: &mut Client, change: &str, peer: &str) -> Value {
    let e = c.next_event("contact").await;
    assert_eq!((e["change"].as_str(), e["contact"]["user_id"].as_str()), (Some(change), Some(peer)), "{e}");
    e["contact"].clone()
}

#[tokio::test]
async fn friend_requests_answers_remarks_and_the_sync() {
    let node = TestNode::start();
    let [mut alice, mut alice2, mut bob] = node.connect_each(["alice/phone", "alice/tablet", "bob/phone"]).await;

    // Refusals before anything exists: stale answers, oneself, a bad id, a long message.
    alice.expect_err("friend_accept", json!({"user_id": "bob"}), "request_not_pending").await;
    alice.expect_err("friend_cancel", json!({"user_id": "bob"}), "request_not_pending").await;
    alice.expect_err("friend_delete", json!({"user_id": "bob"}), "not_friends").await;
    alice.expect_err("friend_request", json!({"user_id": "alice"}), "invalid_request").await;
    alice.expect_err("friend_request", json!({"user_id": "b b"}), "invalid_request").await;
    alice.expect_err("friend_request", json!({"user_id": "bob", "message": "x".repeat(201)}), "invalid_request").await;
    alice.expect_err("contact_update", json!({"user_id": "bob", "remark": "B"}), "not_friends").await;
    alice.expect_err("contacts", json!({"since": 0, "limit": 0}), "invalid_request").await;
    assert!(alice.expect_ok("contacts", json!({})).await["contacts"].as_array().unwrap().is_empty());
    assert_eq!(alice.expect_ok("contact", json!({"user_id": "bob"})).await["contact"], Value::Null);

    // alice asks: her row and bob's, each to its owner's devices.
    let mine = alice.expect_ok("friend_request", json!({"user_id": "bob", "message": "hi, it's Alice"})).await;
    assert_eq!(mine["contact"]["request"]["direction"], "outgoing");
    // The requesting device has the reply; the others get the event.
    assert_eq!(contact_event(&mut alice2, "friend_request", "bob").await, mine["contact"]);
    let theirs = contact_event(&mut bob, "friend_request", "alice").await;
    assert_eq!(
        (theirs["request"]["direction"].as_str(), theirs["request"]["message"].as_str()),
        (Some("incoming"), Some("hi, it's Alice"))
    );
    assert_eq!(bob.expect_ok("contact", json!({"user_id": "alice"})).await["contact"], theirs);

    // bob accepts once; the duplicate is refused and changes nothing.
    let accepted = bob.expect_ok("friend_accept", json!({"user_id": "alice"})).await["contact"].clone();
    assert_eq!((accepted["friend"].as_bool(), accepted.get("request")), (Some(true), None));
    bob.expect_err("friend_accept", json!({"user_id": "alice"}), "request_not_pending").await;
    assert_eq!(bob.expect_ok("contact", json!({"user_id": "alice"})).await["contact"], accepted);
    for c in [&mut alice, &mut alice2] {
        assert_eq!(contact_event(c, "friend_accept", "bob").await["friend"], true);
    }
    alice.expect_err("friend_request", json!({"user_id": "bob"}), "conflict").await;

    // A remark and tags: the owner's alone (no event to bob).
    let upd = alice
        .expect_ok("contact_update", json!({"user_id": "bob", "remark": "Bobby", "tags": ["work", "climbing"]}))
        .await;
    assert_eq!(
        (upd["contact"]["remark"].as_str(), &upd["contact"]["tags"]),
        (Some("Bobby"), &json!(["work", "climbing"]))
    );
    alice
        .expect_err(
            "contact_update",
            json!({"user_id": "bob", "tags": (0..21).map(|i| i.to_string()).collect::<Vec<_>>()}),
            "invalid_request",
        )
        .await;
    contact_event(&mut alice2, "contact_update", "bob").await;
    bob.no_event_within(200).await;
    alice.no_event_within(0).await;

    // The sync: one row per peer at its last change, pages in order, the cursor moves on.
    let (rows, cursor) = sync(&mut alice2, 0).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["remark"], "Bobby");
    assert_eq!(rows[0]["ver"].as_u64(), Some(cursor));
    alice.expect_ok("friend_request", json!({"user_id": "carol"})).await;
    alice.expect_ok("friend_request", json!({"user_id": "dave"})).await;
    alice.expect_ok("friend_cancel", json!({"user_id": "dave"})).await;
    let (more, _) = sync(&mut alice2, cursor).await;
    let peers: Vec<&str> = more.iter().map(|r| r["user_id"].as_str().unwrap()).collect();
    assert_eq!(peers, ["carol", "dave"]);
    assert_eq!(more[1].get("request"), None, "the cancelled request is gone");

    // Delete: both rows change; the conversation and its history stay.
    alice.send_msg(json!({"to": "bob"}), "m1", text("before")).await;
    let gone = bob.expect_ok("friend_delete", json!({"user_id": "alice"})).await["contact"].clone();
    assert_eq!(gone["friend"], false);
    let ex = contact_event(&mut alice, "friend_delete", "bob").await;
    assert_eq!((ex["friend"].as_bool(), ex.get("remark")), (Some(false), None));
    let h = alice.expect_ok("history", json!({"conv_id": direct_id("alice", "bob")})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    // Rejecting: carol says no; both rows lose the request.
    let mut carol = node.connect("carol", "phone").await;
    let r = carol.expect_ok("friend_reject", json!({"user_id": "alice"})).await;
    assert_eq!(r["contact"].get("request"), None);
    assert_eq!(alice.expect_ok("contact", json!({"user_id": "carol"})).await["contact"].get("request"), None);
}

#[tokio::test]
async fn a_block_refuses_messages_and_requests_at_once_and_says_nothing_to_the_blocked() {
    let node = TestNode::start();
    let [mut alice, mut bob, mut bob2] = node.connect_each(["alice/phone", "bob/phone", "bob/tablet"]).await;
    let conv = direct_id("alice", "bob");
    // The conversation's actor is live (it caches the relation) when bob blocks.
    alice.send_msg(json!({"to": "bob"}), "a1", text("hi")).await;
    bob.next_event("message").await;
    bob2.next_event("message").await;
    let b = bob.expect_ok("block", json!({"user_id": "alice"})).await["contact"].clone();
    assert_eq!(b["blocked"], true);
    contact_event(&mut bob2, "block", "alice").await;
    alice.no_event_within(200).await;
    assert_eq!(
        alice.expect_ok("contact", json!({"user_id": "bob"})).await["contact"],
        Value::Null,
        "alice is not told"
    );

    // Refused at once, stores nothing, consumes no key.
    alice.expect_err("send", json!({"to": "bob", "client_msg_id": "a2", "body": text("hello?")}), "blocked").await;
    alice.expect_err("send", json!({"conv_id": conv, "client_msg_id": "a3", "body": text("?")}), "blocked").await;
    alice.expect_err("friend_request", json!({"user_id": "bob"}), "blocked").await;
    bob.no_event_within(200).await;
    let h = bob.expect_ok("history", json!({"conv_id": conv})).await;
    assert_eq!(h["last_seq"], 1);
    // The blocker may still write (and unblocking is theirs to do).
    bob.send_msg(json!({"to": "alice"}), "b1", text("I blocked you")).await;
    assert_eq!(alice.next_event("message").await["seq"], 2);
    bob2.next_event("message").await;
    // A block is independent of friendship; blocking twice changes nothing (no event).
    bob.expect_ok("block", json!({"user_id": "alice"})).await;
    bob2.no_event_within(200).await;

    bob.expect_ok("unblock", json!({"user_id": "alice"})).await;
    alice.assert_key_unused(json!({"to": "bob"}), "a2", text("hello?"), 3).await;
}

#[tokio::test]
async fn who_may_message_friends_only_with_staff_exempt() {
    let node = node_with(&[("CONFAB__CHAT__WHO_MAY_MESSAGE", "friends"), ("CONFAB__CHAT__STAFF", "support")]);
    let [mut alice, mut bob, mut support] = node.connect_each(["alice/phone", "bob/phone", "support/desk"]).await;
    let refused =
        alice.expect_err("send", json!({"to": "bob", "client_msg_id": "a1", "body": text("hi")}), "not_friends").await;
    assert!(refused["message"].is_string());
    // Through the HTTP API as alice: the same rule.
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "h1", "body": text("hi")});
    let (status, v) = Req::new("POST", "/api/v1/messages", Some(send)).send(node.addr).await;
    assert_eq!((status, v["error"]["code"].as_str()), (403, Some("not_friends")), "{v}");
    bob.no_event_within(200).await;
    // Staff either way round, and the API's system user.
    alice.send_msg(json!({"to": "support"}), "s1", text("help")).await;
    support.send_msg(json!({"to": "alice"}), "s2", text("sure")).await;
    let system = json!({"from": null, "to": "bob", "client_msg_id": "sys1", "body": text("welcome")});
    ok(&node, "POST", "/api/v1/messages", Some(system)).await;
    // Friends (imported by the backend) may talk; the refused key was not used.
    let import = json!({"friendships": [["alice", "bob"], ["alice", "alice"]]});
    let r = ok(&node, "POST", "/api/v1/contacts/import", Some(import)).await;
    assert_eq!(r["results"][0]["ok"], true);
    assert_eq!(
        (r["results"][1]["ok"].as_bool(), r["results"][1]["error"].as_str()),
        (Some(false), Some("invalid_request"))
    );
    let m = alice.send_msg(json!({"to": "bob"}), "a1", text("hi")).await;
    assert_eq!(m["seq"], 1, "the refused send stored nothing");
    // Unfriended: refused again at once.
    bob.expect_ok("friend_delete", json!({"user_id": "alice"})).await;
    alice.expect_err("send", json!({"to": "bob", "client_msg_id": "a2", "body": text("?")}), "not_friends").await;
}

#[tokio::test]
async fn who_may_message_friends_or_groups() {
    let node = TestNode::with(&[("CONFAB__CHAT__WHO_MAY_MESSAGE", "friends_or_groups")]);
    let [mut alice, mut carol, mut dave] = node.connect_each(["alice/phone", "carol/phone", "dave/phone"]).await;
    alice.expect_ok("group_create", json!({"group_id": "club", "name": "Club", "members": ["carol"]})).await;
    alice.send_msg(json!({"to": "carol"}), "c1", text("hi carol")).await;
    alice.expect_err("send", json!({"to": "dave", "client_msg_id": "d1", "body": text("hi")}), "not_friends").await;
    // Joining a group lets them talk: a refusal re-checks the groups once its lookup is 1 s old.
    alice.expect_ok("group_add", json!({"group_id": "club", "members": ["dave"]})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    alice.send_msg(json!({"to": "dave"}), "d1", text("hi dave")).await;
    dave.next_event("message").await;
    carol.next_event("message").await;
}

#[tokio::test]
async fn contacts_over_the_http_api() {
    let node = node_with(&[]);
    let mut bob = node.connect("bob", "phone").await;
    let change = |peer: &str, body: Value| (format!("/api/v1/users/alice/contacts/{peer}"), body);
    let (path, body) = change("bob", json!({"action": "request", "message": "from the backend"}));
    let r = ok(&node, "POST", &path, Some(body)).await;
    assert_eq!(r["contact"]["request"]["direction"], "outgoing");
    contact_event(&mut bob, "friend_request", "alice").await;
    let r = ok(&node, "POST", "/api/v1/users/bob/contacts/alice", Some(json!({"action": "accept"}))).await;
    assert_eq!(r["contact"]["friend"], true);
    // Refusals: a stale accept, an unknown action, oneself, an unknown field, the wrong scope.
    for (body, status, code) in [
        (json!({"action": "accept"}), 409, "request_not_pending"),
        (json!({"action": "befriend", "extra": 1}), 400, "invalid_request"),
        (json!({"action": "hug"}), 400, "invalid_request"),
    ] {
        let (s, v) = Req::new("POST", "/api/v1/users/bob/contacts/alice", Some(body)).send(node.addr).await;
        assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{v}");
    }
    let (s, v) =
        Req::new("POST", "/api/v1/users/bob/contacts/bob", Some(json!({"action": "block"}))).send(node.addr).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{v}");
    let (s, _) = Req::new("GET", "/api/v1/users/bob/contacts", None)
        .key("nobody", "x".repeat(20).as_str())
        .send(node.addr)
        .await;
    assert_eq!(s, 401);
    // Read back: one row, and the page cursor.
    let list = ok(&node, "GET", "/api/v1/users/bob/contacts?since=0&limit=10", None).await;
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1);
    let next = list["next_since"].as_u64().unwrap();
    let empty = ok(&node, "GET", &format!("/api/v1/users/bob/contacts?since={next}"), None).await;
    assert!(empty["contacts"].as_array().unwrap().is_empty());
    let one = ok(&node, "GET", "/api/v1/users/bob/contacts/alice", None).await;
    assert_eq!(one["contact"]["friend"], true);
    // Bulk import: idempotent, a result per pair; too many is refused whole.
    let pairs: Vec<[String; 2]> = (0..3).map(|i| ["imp".to_string(), format!("f{i}")]).collect();
    for _ in 0..2 {
        let r = ok(&node, "POST", "/api/v1/contacts/import", Some(json!({"friendships": pairs}))).await;
        assert!(r["results"].as_array().unwrap().iter().all(|x| x["ok"] == true), "{r}");
    }
    let rows = ok(&node, "GET", "/api/v1/users/imp/contacts", None).await;
    assert_eq!(rows["contacts"].as_array().unwrap().len(), 3);
    let many: Vec<[String; 2]> = (0..1001).map(|i| ["x".to_string(), format!("y{i}")]).collect();
    let (s, v) = Req::new("POST", "/api/v1/contacts/import", Some(json!({"friendships": many}))).send(node.addr).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_request")), "{v}");
}
