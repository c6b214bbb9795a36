//! One-to-one chat over WebSocket: send, fan-out to devices, idempotency, bodies, history,
//! conversations, read, recall, delete, changes, flags, replies.

use serde_json::{json, Value};

use crate::common::{direct_id, seqs, text, Client, TestNode};

#[tokio::test]
async fn direct_send_acks_and_fans_out_to_every_other_device() {
    let node = TestNode::start();
    let [mut a_phone, mut a_laptop, mut b_phone, mut b_tablet] =
        node.connect_each(["alice/phone", "alice/laptop", "bob/phone", "bob/tablet"]).await;
    let conv = direct_id("alice", "bob");
    assert!(conv.starts_with("d_") && conv.len() == 34, "{conv}");

    for i in 1..=3u64 {
        let m = a_phone.send_msg(json!({"to": "bob"}), &format!("a-{i}"), text(&format!("hi {i}"))).await;
        assert_eq!(m["seq"], i);
        assert_eq!(m["conv_id"], conv);
        assert_eq!(m["sender"], "alice");
        assert_eq!(m["client_msg_id"], format!("a-{i}"));
        assert_eq!(m["body"], text(&format!("hi {i}")));
        assert!(m["ts"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(m["ver"].as_u64().unwrap() > 0);
        assert!(m.get("reply_to").is_none());
        for c in [&mut b_phone, &mut b_tablet, &mut a_laptop] {
            let ev = c.next_event("message").await;
            assert_eq!(ev, m, "{}/{} got a different message", c.user, c.device);
        }
    }
    // The sending device got acks only; everyone else exactly one event per message.
    a_phone.no_event_within(200).await;
    for c in [&mut b_phone, &mut b_tablet, &mut a_laptop] {
        c.no_event_within(50).await;
    }

    // The same pair from the other side: the same conversation, next seq.
    let m = b_tablet.send_msg(json!({"to": "alice"}), "b-1", text("hey")).await;
    assert_eq!((m["conv_id"].as_str().unwrap(), m["seq"].as_u64().unwrap()), (conv.as_str(), 4));
    for c in [&mut a_phone, &mut a_laptop, &mut b_phone] {
        assert_eq!(c.next_event("message").await, m);
    }
    b_tablet.no_event_within(100).await;

    // Sending by conv_id works too.
    let m = b_phone.send_msg(json!({"conv_id": conv}), "b-2", text("by id")).await;
    assert_eq!(m["seq"], 5);
    let h = b_phone.expect_ok("history", json!({"conv_id": conv})).await;
    assert_eq!(seqs(&h["messages"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(h["last_seq"], 5);
    assert_eq!(h["has_more"], false);
}

#[tokio::test]
async fn a_user_may_write_to_themselves() {
    let node = TestNode::start();
    let [mut phone, mut laptop] = node.connect_each(["alice/phone", "alice/laptop"]).await;
    let m = phone.send_msg(json!({"to": "alice"}), "note-1", text("note")).await;
    assert_eq!(m["conv_id"], direct_id("alice", "alice"));
    assert_eq!(m["seq"], 1);
    assert_eq!(laptop.next_event("message").await, m);
    laptop.no_event_within(100).await;
    phone.no_event_within(50).await;
    let item = phone.expect_ok("conversation", json!({"conv_id": m["conv_id"]})).await;
    assert_eq!(item["members"], json!(["alice"]));
    assert_eq!(item["unread"], 0);
}

#[tokio::test]
async fn every_body_type_is_accepted_and_echoed_intact() {
    let node = TestNode::start();
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let bodies = vec![
        json!({"type": "text", "text": "héllo wörld ✓"}),
        json!({"type": "image", "url": "https://cdn.example/i.png", "width": 640, "height": 480, "size": 12345}),
        json!({"type": "image", "url": "https://cdn.example/min.png"}),
        json!({"type": "audio", "url": "https://cdn.example/a.ogg", "duration_ms": 3200, "size": 999}),
        json!({"type": "video", "url": "https://cdn.example/v.mp4", "duration_ms": 10000, "width": 1920, "height": 1080, "size": 1_000_000, "thumbnail_url": "https://cdn.example/t.jpg"}),
        json!({"type": "file", "url": "https://cdn.example/f.pdf", "name": "report.pdf", "size": 4096, "mime": "application/pdf"}),
        json!({"type": "code", "code": "fn main() {\n    println!(\"hi\");\n}", "lang": "rust"}),
        json!({"type": "location", "lat": -33.8568, "lng": 151.2153, "name": "Opera House", "address": "Bennelong Point"}),
        json!({"type": "location", "lat": 90.0, "lng": -180.0}),
        json!({"type": "custom", "data": {"kind": "poll", "options": ["a", "b"], "n": 2, "nested": {"x": null}}, "summary": "A poll"}),
        json!({"type": "custom", "data": [1, "two", 3.5]}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let m = alice.send_msg(json!({"to": "bob"}), &format!("m-{i}"), body.clone()).await;
        assert_eq!(&m["body"], body, "ack of body {i}");
        assert_eq!(m["seq"], i as u64 + 1);
        let ev = bob.next_event("message").await;
        assert_eq!(&ev["body"], body, "event of body {i}");
    }
    let h = bob.expect_ok("history", json!({"conv_id": direct_id("alice", "bob")})).await;
    let got: Vec<Value> = h["messages"].as_array().unwrap().iter().map(|m| m["body"].clone()).collect();
    assert_eq!(got, bodies);
}

#[tokio::test]
async fn resending_a_client_msg_id_returns_the_original_and_stores_nothing() {
    let node = TestNode::start();
    let [mut alice, mut laptop, mut bob] = node.connect_each(["alice/phone", "alice/laptop", "bob/phone"]).await;
    let conv = direct_id("alice", "bob");
    let first = alice.send_msg(json!({"to": "bob"}), "dup-1", text("once")).await;
    assert_eq!(bob.next_event("message").await, first);
    assert_eq!(laptop.next_event("message").await, first);
    let before = node.metric("confab_messages_in_total").await;

    // Same key, even with a different body: the original comes back, nothing new is stored.
    let again = alice.send_msg(json!({"to": "bob"}), "dup-1", text("twice?")).await;
    assert_eq!(again, first);
    let again = alice.send_msg(json!({"conv_id": conv}), "dup-1", text("thrice?")).await;
    assert_eq!(again, first);
    // From another device of the same user: the key is per sender.
    let again = laptop.send_msg(json!({"to": "bob"}), "dup-1", text("laptop")).await;
    assert_eq!(again, first);
    bob.no_event_within(200).await;
    laptop.no_event_within(50).await;
    alice.no_event_within(50).await;
    assert_eq!(node.metric("confab_messages_in_total").await, before);
    assert!(node.metric("confab_messages_duplicate_total").await >= 3.0);

    // Another sender may use the same key: it is a new message.
    let b = bob.send_msg(json!({"to": "alice"}), "dup-1", text("bob's own")).await;
    assert_eq!(b["seq"], 2);

    // Pipelined duplicates: one stored message, both acks carry it.
    let k1 = alice.send_req("send", json!({"to": "bob", "client_msg_id": "dup-2", "body": text("x")})).await;
    let k2 = alice.send_req("send", json!({"to": "bob", "client_msg_id": "dup-2", "body": text("x")})).await;
    let r1 = alice.reply(&k1).await;
    let r2 = alice.reply(&k2).await;
    assert_eq!(r1["result"]["message"]["seq"], 3, "{r1}");
    assert_eq!(r2["result"]["message"], r1["result"]["message"]);

    let h = alice.expect_ok("history", json!({"conv_id": conv})).await;
    assert_eq!(seqs(&h["messages"]), vec![1, 2, 3]);
    assert_eq!(h["messages"][0]["body"], text("once"));
    // bob saw seq 3 once.
    let evs = bob.drain_events(200).await;
    let threes = evs.iter().filter(|e| e["event"] == "message" && e["data"]["seq"] == 3).count();
    assert_eq!(threes, 1, "{evs:?}");
}

#[tokio::test]
async fn history_pages_latest_before_after_and_gap_fill() {
    let node = TestNode::start();
    let mut alice = node.connect("alice", "phone").await;
    let conv = direct_id("alice", "bob");
    // Pipelined: acks come back in order.
    let mut keys = Vec::new();
    for i in 1..=25 {
        keys.push(
            alice
                .send_req(
                    "send",
                    json!({"to": "bob", "client_msg_id": format!("h-{i}"), "body": text(&format!("{i}"))}),
                )
                .await,
        );
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(alice.reply(k).await["result"]["message"]["seq"], i as u64 + 1);
    }
    let page = |v: &Value| (seqs(&v["messages"]), v["last_seq"].as_u64().unwrap(), v["has_more"].as_bool().unwrap());

    let h = alice.expect_ok("history", json!({"conv_id": conv, "limit": 10})).await;
    assert_eq!(page(&h), ((16..=25).collect(), 25, true));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "before": 16, "limit": 10})).await;
    assert_eq!(page(&h), ((6..=15).collect(), 25, true));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "before": 6, "limit": 10})).await;
    assert_eq!(page(&h), ((1..=5).collect(), 25, false));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "before": 1})).await;
    assert_eq!(page(&h), (vec![], 25, false));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "after": 20, "limit": 3})).await;
    assert_eq!(page(&h), (vec![21, 22, 23], 25, true));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "after": 22, "limit": 10})).await;
    assert_eq!(page(&h), (vec![23, 24, 25], 25, false));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "after": 25})).await;
    assert_eq!(page(&h), (vec![], 25, false));
    let h = alice.expect_ok("history", json!({"conv_id": conv})).await;
    assert_eq!(page(&h), ((1..=25).collect(), 25, false));
    let h = alice.expect_ok("history", json!({"conv_id": conv, "limit": 100})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 25);
    assert_eq!(h["messages"][24]["body"], text("25"));

    // Gap fill from 7: after 7 until has_more is false gives 8..=25, contiguous.
    let mut held = 7u64;
    let mut rounds = 0;
    loop {
        let h = alice.expect_ok("history", json!({"conv_id": conv, "after": held, "limit": 4})).await;
        for s in seqs(&h["messages"]) {
            assert_eq!(s, held + 1);
            held = s;
        }
        rounds += 1;
        if !h["has_more"].as_bool().unwrap() {
            break;
        }
        assert!(rounds < 20);
    }
    assert_eq!((held, rounds), (25, 5));

    for bad in [
        json!({"conv_id": conv, "limit": 101}),
        json!({"conv_id": conv, "limit": 0}),
        json!({"conv_id": conv, "before": 3, "after": 1}),
    ] {
        alice.expect_err("history", bad, "invalid_request").await;
    }
    // Not a participant: not_member; no such conversation: not_found.
    let mut carol = node.connect("carol", "phone").await;
    carol.expect_err("history", json!({"conv_id": conv}), "not_member").await;
    carol.expect_err("history", json!({"conv_id": direct_id("carol", "dave")}), "not_found").await;
}

#[tokio::test]
async fn conversations_list_unread_paging_and_flags() {
    let node = TestNode::start();
    let [mut alice, mut carol, mut bob, mut bob2] =
        node.connect_each(["alice/phone", "carol/phone", "bob/phone", "bob/tablet"]).await;
    let ab = direct_id("alice", "bob");
    let cb = direct_id("carol", "bob");
    for i in 1..=3 {
        alice.send_msg(json!({"to": "bob"}), &format!("a{i}"), text(&format!("a{i}"))).await;
    }
    for i in 1..=2 {
        carol.send_msg(json!({"to": "bob"}), &format!("c{i}"), text(&format!("c{i}"))).await;
    }

    let l = bob.expect_ok("conversations", json!({"since": 0})).await;
    let items = l["conversations"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{l}");
    assert_eq!(l["has_more"], false);
    // Ascending by change: alice's conversation changed first.
    assert_eq!(items[0]["conv_id"], ab);
    assert_eq!(items[1]["conv_id"], cb);
    assert_eq!(items[0]["kind"], "direct");
    assert_eq!(items[0]["members"], json!(["alice", "bob"]));
    assert_eq!(items[0]["last_seq"], 3);
    assert_eq!(items[0]["last_message"]["body"], text("a3"));
    assert_eq!((items[0]["read_seq"].as_u64(), items[0]["unread"].as_u64()), (Some(0), Some(3)));
    assert_eq!((items[1]["read_seq"].as_u64(), items[1]["unread"].as_u64()), (Some(0), Some(2)));
    for f in ["pinned", "muted", "hidden"] {
        assert_eq!(items[0][f], false);
    }
    assert_eq!(items[0]["active"], true);
    assert!(items[0]["cursor"].as_u64().unwrap() < items[1]["cursor"].as_u64().unwrap());
    assert_eq!(l["next_since"], items[1]["cursor"]);
    // The argument form with no data at all works too.
    let l2 = bob.expect_ok("conversations", Value::Null).await;
    assert_eq!(l2["conversations"].as_array().unwrap().len(), 2);

    // Own messages are never unread.
    let a = alice.expect_ok("conversations", json!({})).await;
    assert_eq!(a["conversations"][0]["unread"], 0);
    assert_eq!(a["conversations"][0]["read_seq"], 3);

    // Unread follows the read cursor.
    bob.expect_ok("read", json!({"conv_id": ab, "seq": 2})).await;
    let item = bob.expect_ok("conversation", json!({"conv_id": ab})).await;
    assert_eq!((item["read_seq"].as_u64(), item["unread"].as_u64()), (Some(2), Some(1)));

    // Cursor paging: one at a time.
    let p1 = bob.expect_ok("conversations", json!({"since": 0, "limit": 1})).await;
    assert_eq!(p1["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(p1["conversations"][0]["conv_id"], cb);
    assert_eq!(p1["has_more"], true);
    let p2 = bob.expect_ok("conversations", json!({"since": p1["next_since"], "limit": 1})).await;
    assert_eq!(p2["conversations"][0]["conv_id"], ab);
    // That was the last one: has_more is exact, no empty round trip needed.
    assert_eq!(p2["has_more"], false);
    let p3 = bob.expect_ok("conversations", json!({"since": p2["next_since"], "limit": 1})).await;
    assert_eq!(p3["conversations"], json!([]));
    assert_eq!(p3["has_more"], false);
    assert_eq!(p3["next_since"], p2["next_since"]);
    let since = p2["next_since"].clone();

    // Only what changed since then.
    carol.send_msg(json!({"to": "bob"}), "c3", text("c3")).await;
    let l = bob.expect_ok("conversations", json!({"since": since})).await;
    assert_eq!(l["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(l["conversations"][0]["conv_id"], cb);
    assert_eq!(l["conversations"][0]["unread"], 3);

    // Flags: the other device hears about them.
    bob.drain_events(50).await;
    let item = bob.expect_ok("set_flags", json!({"conv_id": cb, "pinned": true, "muted": true})).await;
    assert_eq!(
        (item["pinned"].as_bool(), item["muted"].as_bool(), item["hidden"].as_bool()),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(item["conv_id"], cb);
    let ev = bob2.next_event("conversation").await;
    assert_eq!(ev, item);
    bob.no_event_within(100).await;
    let item = bob.expect_ok("set_flags", json!({"conv_id": cb, "muted": false})).await;
    assert_eq!((item["pinned"].as_bool(), item["muted"].as_bool()), (Some(true), Some(false)));
    assert_eq!(bob2.next_event("conversation").await, item);
    // carol's row is untouched.
    let c = carol.expect_ok("conversation", json!({"conv_id": cb})).await;
    assert_eq!((c["pinned"].as_bool(), c["muted"].as_bool()), (Some(false), Some(false)));

    bob.expect_err("set_flags", json!({"conv_id": cb}), "invalid_request").await;
    bob.expect_err("set_flags", json!({"conv_id": direct_id("bob", "zed")}), "invalid_request").await;
    bob.expect_err("set_flags", json!({"conv_id": direct_id("bob", "zed"), "pinned": true}), "not_found").await;
    bob.expect_err("conversation", json!({"conv_id": direct_id("bob", "zed")}), "not_found").await;
    bob.expect_err("conversations", json!({"limit": 101}), "invalid_request").await;
}

#[tokio::test]
async fn hidden_lasts_until_a_new_message() {
    let node = TestNode::start();
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    alice.send_msg(json!({"to": "bob"}), "1", text("1")).await;
    let item = bob.expect_ok("set_flags", json!({"conv_id": ab, "hidden": true})).await;
    assert_eq!(item["hidden"], true);
    // Reading or other flag changes do not un-hide it.
    bob.expect_ok("read", json!({"conv_id": ab, "seq": 1})).await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["hidden"], true);

    // A new message from the peer un-hides it...
    alice.send_msg(json!({"to": "bob"}), "2", text("2")).await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["hidden"], false);
    // ...and it stays visible when bob then reads or pins it.
    bob.expect_ok("read", json!({"conv_id": ab, "seq": 2})).await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["hidden"], false);
    let item = bob.expect_ok("set_flags", json!({"conv_id": ab, "pinned": true})).await;
    assert_eq!(item["hidden"], false);
    let l = bob.expect_ok("conversations", json!({})).await;
    assert_eq!(l["conversations"][0]["hidden"], false);

    // Hiding again, then writing in it oneself also un-hides it.
    assert_eq!(bob.expect_ok("set_flags", json!({"conv_id": ab, "hidden": true})).await["hidden"], true);
    bob.send_msg(json!({"to": "alice"}), "b1", text("back")).await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["hidden"], false);
}

/// A node where alice (on her phone) has sent bob `n` messages (texts and client ids `1`..=`n`)
/// and bob's phone and tablet have received them: the node, the three clients (alice, bob's phone,
/// bob's tablet) and the conversation's id.
async fn alice_wrote_to_bob(n: u64) -> (TestNode, [Client; 3], String) {
    let node = TestNode::start();
    let [mut alice, mut bob, mut bob2] = node.connect_each(["alice/phone", "bob/phone", "bob/tablet"]).await;
    for i in 1..=n {
        alice.send_msg(json!({"to": "bob"}), &format!("{i}"), text(&format!("{i}"))).await;
    }
    bob.drain_events(100).await;
    bob2.drain_events(50).await;
    (node, [alice, bob, bob2], direct_id("alice", "bob"))
}

#[tokio::test]
async fn read_moves_forward_only_and_sends_receipts() {
    let (node, [mut alice, mut bob, mut bob2], ab) = alice_wrote_to_bob(3).await;

    assert_eq!(bob.expect_ok("read", json!({"conv_id": ab, "seq": 2})).await, json!({"read_seq": 2}));
    let want = json!({"conv_id": ab, "user_id": "bob", "read_seq": 2});
    assert_eq!(bob2.next_event("read").await, want);
    assert_eq!(alice.next_event("read").await, want, "one-to-one read receipt");
    bob.no_event_within(100).await;

    // Backwards: nothing moves, nobody is told.
    assert_eq!(bob.expect_ok("read", json!({"conv_id": ab, "seq": 1})).await, json!({"read_seq": 2}));
    assert_eq!(bob.expect_ok("read", json!({"conv_id": ab, "seq": 2})).await, json!({"read_seq": 2}));
    bob2.no_event_within(150).await;
    alice.no_event_within(50).await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["read_seq"], 2);

    // Beyond the end: capped at the last message.
    assert_eq!(bob.expect_ok("read", json!({"conv_id": ab, "seq": 99})).await, json!({"read_seq": 3}));
    assert_eq!(bob2.next_event("read").await["read_seq"], 3);
    let item = bob.expect_ok("conversation", json!({"conv_id": ab})).await;
    assert_eq!((item["read_seq"].as_u64(), item["unread"].as_u64()), (Some(3), Some(0)));

    let mut carol = node.connect("carol", "phone").await;
    carol.expect_err("read", json!({"conv_id": ab, "seq": 1}), "not_member").await;
    alice.expect_err("read", json!({"conv_id": ab}), "invalid_request").await;
}

#[tokio::test]
async fn recall_by_sender_reaches_every_device_and_history() {
    let node = TestNode::start();
    let [mut alice, mut alice2, mut bob] = node.connect_each(["alice/phone", "alice/laptop", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    alice.send_msg(json!({"to": "bob"}), "1", text("oops")).await;
    alice.send_msg(json!({"to": "bob"}), "2", text("fine")).await;
    bob.drain_events(100).await;
    alice2.drain_events(50).await;
    let before = bob.expect_ok("changes", json!({"conv_id": ab, "since": 0})).await;
    assert_eq!((before["recalled"].clone(), before["deleted"].clone()), (json!([]), json!([])));

    let since = bob.expect_ok("conversations", json!({})).await["next_since"].clone();

    // Someone else's message: forbidden, nothing changes.
    bob.expect_err("recall", json!({"conv_id": ab, "seq": 1}), "forbidden").await;
    alice.no_event_within(100).await;

    let r = alice.expect_ok("recall", json!({"conv_id": ab, "seq": 1})).await;
    let m = &r["message"];
    assert_eq!(m["body"], json!({"type": "recalled", "by": "alice"}));
    assert_eq!((m["seq"].as_u64(), m["sender"].as_str()), (Some(1), Some("alice")));
    for c in [&mut alice, &mut alice2, &mut bob] {
        assert_eq!(&c.next_event("recall").await, m, "{}/{}", c.user, c.device);
    }
    // The recall moves the conversation in everyone's list.
    let l = bob.expect_ok("conversations", json!({"since": since})).await;
    assert_eq!(l["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(l["conversations"][0]["conv_id"], ab);
    let h = bob.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(h["messages"][0]["body"], json!({"type": "recalled", "by": "alice"}));
    assert_eq!(h["messages"][1]["body"], text("fine"));
    assert_eq!(h["last_seq"], 2);
    let ch = bob.expect_ok("changes", json!({"conv_id": ab, "since": before["ver"]})).await;
    assert_eq!(ch["recalled"], json!([1]));
    assert_eq!(ch["ver"], m["ver"]);
    let ch2 = bob.expect_ok("changes", json!({"conv_id": ab, "since": ch["ver"]})).await;
    assert_eq!((ch2["recalled"].clone(), ch2["ver"].clone()), (json!([]), ch["ver"].clone()));

    // Again: no change, no event.
    let again = alice.expect_ok("recall", json!({"conv_id": ab, "seq": 1})).await;
    assert_eq!(again["message"], *m);
    bob.no_event_within(150).await;
    alice2.no_event_within(50).await;

    alice.expect_err("recall", json!({"conv_id": ab, "seq": 9}), "not_found").await;
    let mut carol = node.connect("carol", "phone").await;
    carol.expect_err("recall", json!({"conv_id": ab, "seq": 2}), "not_member").await;
    carol.expect_err("recall", json!({"conv_id": direct_id("carol", "zed"), "seq": 1}), "not_found").await;
    assert_eq!(bob.expect_ok("history", json!({"conv_id": ab})).await["messages"][1]["body"], text("fine"));
}

#[tokio::test]
async fn recall_after_the_window_is_refused() {
    let node = TestNode::with(&[("CONFAB__CHAT__RECALL_WINDOW_SECS", "1")]);
    let mut alice = node.connect("alice", "phone").await;
    let ab = direct_id("alice", "bob");
    alice.send_msg(json!({"to": "bob"}), "1", text("old")).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    alice.send_msg(json!({"to": "bob"}), "2", text("new")).await;
    alice.expect_err("recall", json!({"conv_id": ab, "seq": 1}), "recall_window_expired").await;
    assert_eq!(alice.expect_ok("history", json!({"conv_id": ab})).await["messages"][0]["body"], text("old"));
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": 2})).await;
}

#[tokio::test]
async fn delete_for_me_hides_only_for_that_user() {
    let (node, [mut alice, mut bob, mut bob2], ab) = alice_wrote_to_bob(4).await;
    let v0 = bob.expect_ok("changes", json!({"conv_id": ab})).await["ver"].clone();

    assert_eq!(bob.expect_ok("delete", json!({"conv_id": ab, "seqs": [2, 3]})).await, json!({"deleted": 2}));
    assert_eq!(bob2.next_event("deleted").await, json!({"conv_id": ab, "seqs": [2, 3]}));
    bob.no_event_within(100).await;
    alice.no_event_within(50).await;

    let h = bob2.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(seqs(&h["messages"]), vec![1, 4]);
    assert_eq!(h["last_seq"], 4);
    let h = alice.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(seqs(&h["messages"]), vec![1, 2, 3, 4]);

    let ch = bob.expect_ok("changes", json!({"conv_id": ab, "since": v0})).await;
    assert_eq!((ch["deleted"].clone(), ch["recalled"].clone()), (json!([2, 3]), json!([])));
    assert!(ch["ver"].as_u64().unwrap() > v0.as_u64().unwrap());
    let ch = alice.expect_ok("changes", json!({"conv_id": ab, "since": 0})).await;
    assert_eq!(ch["deleted"], json!([]));

    // Duplicates and seqs that do not exist are not counted (nor announced).
    assert_eq!(bob.expect_ok("delete", json!({"conv_id": ab, "seqs": [4, 4, 0, 99]})).await, json!({"deleted": 1}));
    assert_eq!(bob2.next_event("deleted").await, json!({"conv_id": ab, "seqs": [4]}));
    assert_eq!(bob.expect_ok("delete", json!({"conv_id": ab, "seqs": [99]})).await, json!({"deleted": 0}));
    bob2.no_event_within(100).await;
    assert_eq!(seqs(&bob.expect_ok("history", json!({"conv_id": ab})).await["messages"]), vec![1]);

    for bad in [json!({"conv_id": ab, "seqs": []}), json!({"conv_id": ab, "seqs": (1..=101).collect::<Vec<u64>>()})] {
        bob.expect_err("delete", bad, "invalid_request").await;
    }
    let mut carol = node.connect("carol", "phone").await;
    carol.expect_err("delete", json!({"conv_id": ab, "seqs": [1]}), "not_member").await;
    assert_eq!(seqs(&alice.expect_ok("history", json!({"conv_id": ab})).await["messages"]), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn clear_empties_the_history_for_that_user_only() {
    let (node, [mut alice, mut bob, mut bob2], ab) = alice_wrote_to_bob(4).await;
    let item = bob.expect_ok("clear", json!({"conv_id": ab})).await;
    assert_eq!((item["cleared_seq"].as_u64(), item["unread"].as_u64()), (Some(4), Some(0)));
    assert_eq!(item["last_message"], Value::Null);
    let ev = bob2.next_event("conversation").await;
    assert_eq!((ev["conv_id"].as_str(), ev["cleared_seq"].as_u64()), (Some(ab.as_str()), Some(4)));
    alice.no_event_within(50).await;
    for q in [json!({"conv_id": ab}), json!({"conv_id": ab, "before": 3}), json!({"conv_id": ab, "after": 0})] {
        let h = bob2.expect_ok("history", q).await;
        assert_eq!((h["messages"].clone(), h["has_more"].clone()), (json!([]), json!(false)));
    }
    assert_eq!(seqs(&alice.expect_ok("history", json!({"conv_id": ab})).await["messages"]), vec![1, 2, 3, 4]);

    // What comes after shows as usual, and paging stops at the clearing.
    alice.send_msg(json!({"to": "bob"}), "c5", text("five")).await;
    alice.send_msg(json!({"to": "bob"}), "c6", text("six")).await;
    let h = bob.expect_ok("history", json!({"conv_id": ab, "limit": 1})).await;
    assert_eq!((seqs(&h["messages"]), h["has_more"].clone()), (vec![6], json!(true)));
    let h = bob.expect_ok("history", json!({"conv_id": ab, "before": 6})).await;
    assert_eq!((seqs(&h["messages"]), h["has_more"].clone()), (vec![5], json!(false)));
    let item = bob.expect_ok("conversation", json!({"conv_id": ab})).await;
    assert_eq!((item["unread"].as_u64(), item["last_message"]["seq"].as_u64()), (Some(2), Some(6)));

    let mut carol = node.connect("carol", "phone").await;
    carol.expect_err("clear", json!({"conv_id": ab}), "not_member").await;
    carol.expect_err("clear", json!({"conv_id": "d_nobody"}), "invalid_request").await;
    bob.expect_err("clear", json!({"conv_id": ab, "seq": 1}), "invalid_request").await;
    assert_eq!(bob.expect_ok("conversation", json!({"conv_id": ab})).await["cleared_seq"], 4);
}

#[tokio::test]
async fn reply_to_stores_a_quote() {
    let node = TestNode::start();
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let ab = direct_id("alice", "bob");
    let long = "x".repeat(100);
    alice.send_msg(json!({"to": "bob"}), "1", text(&long)).await;
    alice.send_msg(json!({"to": "bob"}), "2", json!({"type": "image", "url": "https://i/1.png"})).await;
    let mut data = json!({"conv_id": ab, "reply_to": 1});
    data["client_msg_id"] = json!("b1");
    data["body"] = text("re");
    let m = bob.expect_ok("send", data).await["message"].clone();
    assert_eq!(m["seq"], 3);
    assert_eq!(m["reply_to"], json!({"seq": 1, "sender": "alice", "quote": "x".repeat(80)}));
    let ev = alice.next_event("message").await;
    assert_eq!(ev["reply_to"], m["reply_to"]);
    let m =
        bob.expect_ok("send", json!({"to": "alice", "client_msg_id": "b2", "body": text("nice"), "reply_to": 2})).await;
    assert_eq!(m["message"]["reply_to"], json!({"seq": 2, "sender": "alice", "quote": "[image]"}));

    bob.expect_err(
        "send",
        json!({"to": "alice", "client_msg_id": "b3", "body": text("?"), "reply_to": 99}),
        "not_found",
    )
    .await;
    let h = bob.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(h["last_seq"], 4);
    assert_eq!(h["messages"][2]["reply_to"]["quote"], "x".repeat(80));
    bob.assert_key_unused(json!({"to": "alice"}), "b3", text("ok"), 5).await;
}

#[tokio::test]
async fn ping_op_answers_server_time() {
    let node = TestNode::start();
    let mut alice = node.connect("alice", "phone").await;
    let r = alice.expect_ok("ping", Value::Null).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((r["ts"].as_i64().unwrap() - now).abs() < 5000, "{r}");
    alice.expect_err("ping", json!({"x": 1}), "invalid_request").await;
}
