//! Durability across process restarts and crashes, with the real `confab` binary.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{direct_id, text, BinaryNode, Client};

/// Everything a user can see, for before/after comparisons.
async fn snapshot(c: &mut Client, convs: &[&str]) -> Value {
    let list = c.expect_ok("conversations", json!({"since": 0})).await;
    let mut histories = serde_json::Map::new();
    for conv in convs {
        let h = c.request("history", json!({"conv_id": conv})).await;
        let ch = c.request("changes", json!({"conv_id": conv, "since": 0})).await;
        histories.insert(
            conv.to_string(),
            json!({"history": h.get("result").or(h.get("error")), "changes": ch.get("result").or(ch.get("error"))}),
        );
    }
    let info = c.request("group_info", json!({"group_id": "team"})).await;
    let members = c.request("group_members", json!({"group_id": "team"})).await;
    json!({
        "list": list,
        "histories": histories,
        "group_info": info.get("result").or(info.get("error")),
        "group_members": members.get("result").or(members.get("error")),
    })
}

#[tokio::test]
async fn a_restart_keeps_conversations_history_cursors_and_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let ab = direct_id("alice", "bob");
    let node = BinaryNode::start(&dir, &[]).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "phone").await;
    let mut carol = node.connect("carol", "phone").await;
    for i in 1..=3 {
        alice.send_msg(json!({"to": "bob"}), &format!("a{i}"), text(&format!("a{i}"))).await;
    }
    bob.expect_ok("read", json!({"conv_id": ab, "seq": 2})).await;
    bob.expect_ok("set_flags", json!({"conv_id": ab, "pinned": true})).await;
    bob.expect_ok("delete", json!({"conv_id": ab, "seqs": [1]})).await;
    alice.expect_ok("recall", json!({"conv_id": ab, "seq": 3})).await;
    alice.expect_ok("group_create", json!({"group_id": "team", "name": "Team", "members": ["bob", "carol"]})).await;
    alice.expect_ok("group_add", json!({"group_id": "team", "members": ["dave"]})).await;
    alice.expect_ok("group_remove", json!({"group_id": "team", "members": ["carol"]})).await;
    bob.send_msg(json!({"conv_id": "g_team"}), "b1", text("in the group")).await;
    alice.expect_ok("read", json!({"conv_id": "g_team", "seq": 4})).await;

    let convs = [ab.as_str(), "g_team"];
    let mut before = HashMap::new();
    for c in [&mut alice, &mut bob, &mut carol] {
        before.insert(c.user.clone(), snapshot(c, &convs).await);
    }
    // Sanity: the snapshot holds what was done.
    assert_eq!(before["bob"]["list"]["conversations"].as_array().unwrap().len(), 2);
    assert_eq!(before["carol"]["group_info"]["code"], "not_member");
    for c in [alice, bob, carol] {
        c.close().await;
    }
    node.stop().await;

    let node = BinaryNode::start(&dir, &[]).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut bob = node.connect("bob", "phone").await;
    let mut carol = node.connect("carol", "phone").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        let after = snapshot(c, &convs).await;
        assert_eq!(after, before[&c.user], "{} sees something else after the restart", c.user);
    }
    let item = bob.expect_ok("conversation", json!({"conv_id": ab})).await;
    assert_eq!(
        (item["read_seq"].as_u64(), item["unread"].as_u64(), item["pinned"].as_bool()),
        (Some(2), Some(1), Some(true))
    );
    let h = bob.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "delete-for-me survives");
    assert_eq!(h["messages"][1]["body"], json!({"type": "recalled", "by": "alice"}));
    let m = bob.expect_ok("group_members", json!({"group_id": "team"})).await;
    let users: Vec<&str> = m["members"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, vec!["alice", "bob", "dave"]);

    // Idempotency keys survive too; new messages continue the sequence.
    let again = alice.send_msg(json!({"to": "bob"}), "a2", text("ignored")).await;
    assert_eq!((again["seq"].as_u64(), again["body"].clone()), (Some(2), text("a2")));
    let next = alice.send_msg(json!({"to": "bob"}), "a4", text("a4")).await;
    assert_eq!(next["seq"], 4);
    assert_eq!(bob.next_event("message").await, next);
    let g = bob.send_msg(json!({"conv_id": "g_team"}), "b2", text("still works")).await;
    assert_eq!(g["seq"], 5);
    carol
        .expect_err("send", json!({"conv_id": "g_team", "client_msg_id": "c1", "body": text("x")}), "not_member")
        .await;
    for c in [alice, bob, carol] {
        c.close().await;
    }
    node.stop().await;
}

/// kill -9 while a client streams pipelined sends: every acknowledged message is there after the
/// restart, under the same seq; seqs are contiguous; acked keys are still de-duplicated.
#[tokio::test]
async fn kill_9_loses_no_acknowledged_message() {
    const N: usize = 2000;
    const WINDOW: usize = 32;
    const KILL_AFTER: usize = 150;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let conv = direct_id("alice", "bob");
    let mut node = Some(BinaryNode::start(&dir, crate::common::NO_RATE_LIMITS).await);
    let mut alice = node.as_ref().unwrap().connect("alice", "phone").await;

    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut inflight: VecDeque<(String, String)> = VecDeque::new();
    let mut sent = 0;
    'outer: loop {
        while inflight.len() < WINDOW && sent < N {
            let cmid = format!("k-{sent}");
            let Some(key) = alice
                .try_send_req("send", json!({"to": "bob", "client_msg_id": cmid, "body": text(&format!("n{sent}"))}))
                .await
            else {
                break 'outer;
            };
            inflight.push_back((key, cmid));
            sent += 1;
        }
        let Some((key, cmid)) = inflight.pop_front() else { break };
        let Some(r) = alice.try_reply(&key, Duration::from_secs(5)).await else {
            inflight.push_front((key, cmid));
            break;
        };
        assert!(r.get("error").is_none(), "{r}");
        let m = &r["result"]["message"];
        assert_eq!(m["client_msg_id"], cmid.as_str());
        acked.push((cmid, m["seq"].as_u64().unwrap()));
        if acked.len() == KILL_AFTER {
            // Mid-stream: WINDOW sends are in flight right now.
            node.take().unwrap().kill_9().await;
        }
    }
    assert!(node.is_none(), "the stream ended before the kill");
    assert!(acked.len() >= KILL_AFTER);
    assert!(acked.len() < N, "everything was acked before the kill took effect");
    for (i, (_, seq)) in acked.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "acks are in seq order");
    }

    let node = BinaryNode::start(&dir, &[]).await;
    let mut alice = node.connect("alice", "phone").await;
    let mut stored: Vec<Value> = Vec::new();
    loop {
        let h = alice.expect_ok("history", json!({"conv_id": conv, "after": stored.len(), "limit": 100})).await;
        stored.extend(h["messages"].as_array().unwrap().iter().cloned());
        if !h["has_more"].as_bool().unwrap() {
            assert_eq!(h["last_seq"].as_u64().unwrap(), stored.len() as u64);
            break;
        }
    }
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["seq"].as_u64().unwrap(), i as u64 + 1, "seqs are contiguous");
        assert_eq!(m["client_msg_id"], format!("k-{i}"), "stored in the order sent");
    }
    assert!(stored.len() >= acked.len(), "acked {} but only {} stored", acked.len(), stored.len());
    for (cmid, seq) in &acked {
        assert_eq!(stored[*seq as usize - 1]["client_msg_id"], cmid.as_str());
    }

    // Re-sending acked keys returns the same message; re-sending the unanswered ones stores each
    // at most once.
    let (cmid, seq) = &acked[acked.len() - 1];
    let again = alice.send_msg(json!({"to": "bob"}), cmid, text("again")).await;
    assert_eq!(again["seq"], *seq);
    assert_eq!(again, stored[*seq as usize - 1]);
    let before = stored.len() as u64;
    for (_, cmid) in &inflight {
        let i: u64 = cmid.trim_start_matches("k-").parse().unwrap();
        let m = alice.send_msg(json!({"to": "bob"}), cmid, text(&format!("n{i}"))).await;
        assert_eq!(m["body"], text(&format!("n{i}")));
        if i < before {
            assert_eq!(m["seq"], i + 1, "{cmid} was stored before the kill");
        }
    }
    let h = alice.expect_ok("history", json!({"conv_id": conv, "after": before, "limit": 100})).await;
    let after: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    let added =
        inflight.iter().filter(|(_, c)| c.trim_start_matches("k-").parse::<u64>().unwrap() >= before).count() as u64;
    assert_eq!(after, (before + 1..=before + added).collect::<Vec<_>>());
    alice.close().await;
    node.stop().await;
}
