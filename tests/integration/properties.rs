//! Property tests of the storage contract's sequence, read-cursor, unread and list-cursor rules.
//!
//! Each case drives a real store (through `Store` only) with a random sequence of operations over
//! four users, their one-to-one conversations (created by their first message) and two groups:
//! sends (some re-using a `client_msg_id`, some replies), read cursor moves to arbitrary seqs,
//! recalls, deletions for one user, flag changes, group creation and members added and removed.
//! After every step the whole store is compared with a small model kept here:
//!
//! - each conversation's history, paged with `After`, is exactly seqs `1..=last_seq` (no gap, no
//!   duplicate) holding the messages the model expects, so `last_seq` counts the stored messages;
//! - a re-sent `(sender, client_msg_id)` returns the stored original and writes nothing (nor
//!   creates a conversation, when sent elsewhere);
//! - read cursors only move forward, never pass `last_seq`, and a sender's cursor is at least the
//!   seq of their own last message; unread is `last_seq - read_seq` for active rows and 0 for
//!   inactive ones;
//! - paging a user's conversation list from their last `next_since` returns exactly the
//!   conversations that changed for them since, in strictly increasing `cursor` order, each with a
//!   larger cursor than the last time it was seen;
//! - every write returns a `ver` larger than any before it.
//!
//! Only operations the engine itself would make are generated (a group message from an active
//! member, reads and deletions on active rows), so the model follows the contract and not one
//! store's incidental behaviour.
//!
//! The embedded store runs `PROPTEST_CASES` cases (default 64) of up to 40 operations; MongoDB,
//! when `CONFAB_TEST_MONGODB_URI` is set, runs `CONFAB_PROPTEST_MONGODB_CASES` (default 8) of up
//! to 20: the emulator the tests use is slow. A failure prints the shrunk sequence of operations.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

use confab::store::EmbeddedStore;
use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::model::{
    direct_conv_id, group_conv_id, Body, ConvKind, Conversation, ConversationView, FlagsPatch, Group, Message,
    ReplyRef, Role, UserConvState,
};
use confab_actors::store::{HistoryQuery, MemberChange, NewGroup, NewMessage, StoreResult};

use crate::store::DynStore;

const USERS: [&str; 4] = ["ann", "ben", "cat", "dan"];
const GROUPS: [&str; 2] = ["g0", "g1"];
const TS: i64 = 1_700_000_000_000;
/// Page sizes small enough that paging is exercised.
const HISTORY_PAGE: usize = 3;
const LIST_PAGE: usize = 2;

// ---- operations ----

#[derive(Debug, Clone, Copy)]
enum Target {
    /// The one-to-one conversation with a user (possibly the sender: a note to self).
    Direct(usize),
    Group(usize),
}

#[derive(Debug, Clone, Copy)]
enum ConvSel {
    Direct(usize, usize),
    Group(usize),
}

impl ConvSel {
    fn id(self) -> String {
        match self {
            ConvSel::Direct(a, b) => direct_conv_id(USERS[a], USERS[b]),
            ConvSel::Group(g) => group_conv_id(GROUPS[g]),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `cmid` from a small set, so re-sends happen; `reply` picks a message of the conversation.
    Send {
        from: usize,
        to: Target,
        cmid: Option<u8>,
        reply: Option<u64>,
    },
    MarkRead {
        user: usize,
        conv: ConvSel,
        seq: u64,
    },
    Recall {
        conv: ConvSel,
        seq: u64,
        by: usize,
    },
    Delete {
        user: usize,
        conv: ConvSel,
        seqs: Vec<u64>,
    },
    SetFlags {
        user: usize,
        conv: ConvSel,
        pinned: Option<bool>,
        hidden: Option<bool>,
    },
    CreateGroup {
        group: usize,
        owner: usize,
        members: Vec<usize>,
    },
    ChangeMembers {
        group: usize,
        add: Vec<(usize, Role)>,
        remove: Vec<usize>,
    },
}

fn ops(max_len: usize) -> impl Strategy<Value = Vec<Op>> {
    let user = 0..USERS.len();
    let group = 0..GROUPS.len();
    // Mostly seqs near the conversations' sizes, sometimes anything (capping, far past the end).
    let seq = prop_oneof![4 => 0..12u64, 1 => any::<u64>()];
    let conv = prop_oneof![
        3 => (user.clone(), user.clone()).prop_map(|(a, b)| ConvSel::Direct(a, b)),
        2 => group.clone().prop_map(ConvSel::Group),
    ];
    let target = prop_oneof![
        3 => user.clone().prop_map(Target::Direct),
        2 => group.clone().prop_map(Target::Group),
    ];
    let role = prop_oneof![Just(Role::Member), Just(Role::Admin)];
    let op = prop_oneof![
        8 => (user.clone(), target, proptest::option::of(0..6u8), proptest::option::weighted(0.3, any::<u64>()))
            .prop_map(|(from, to, cmid, reply)| Op::Send { from, to, cmid, reply }),
        3 => (user.clone(), conv.clone(), seq.clone()).prop_map(|(user, conv, seq)| Op::MarkRead { user, conv, seq }),
        1 => (conv.clone(), 0..12u64, user.clone()).prop_map(|(conv, seq, by)| Op::Recall { conv, seq, by }),
        1 => (user.clone(), conv.clone(), vec(seq, 0..4))
            .prop_map(|(user, conv, seqs)| Op::Delete { user, conv, seqs }),
        1 => (user.clone(), conv, any::<Option<bool>>(), any::<Option<bool>>())
            .prop_map(|(user, conv, pinned, hidden)| Op::SetFlags { user, conv, pinned, hidden }),
        2 => (group.clone(), user.clone(), vec(user.clone(), 0..4))
            .prop_map(|(group, owner, members)| Op::CreateGroup { group, owner, members }),
        2 => (group, vec((user.clone(), role), 0..3), vec(user, 0..3))
            .prop_map(|(group, add, remove)| Op::ChangeMembers { group, add, remove }),
    ];
    vec(op, 1..=max_len)
}

// ---- the model ----

#[derive(Debug, Default)]
struct ConvModel {
    conv: Option<Conversation>,
    /// Index `i` holds seq `i + 1`.
    messages: Vec<Message>,
    rows: BTreeMap<String, UserConvState>,
    /// Recalled seqs, with the `ver` of their recall.
    recalls: BTreeMap<u64, u64>,
    /// Per user, the seqs they deleted for themselves, with the `ver` of the deletion.
    deleted: BTreeMap<String, BTreeMap<u64, u64>>,
}

impl ConvModel {
    fn last_seq(&self) -> u64 {
        self.messages.len() as u64
    }

    /// What `user` sees of the conversation: all of it while a member; a former member sees it
    /// as it was when they left (up to their `left_seq`, or their read cursor for rows that left
    /// before `left_seq` was kept), and no version newer than their row's.
    fn view(&self, user: &str) -> Option<ConversationView> {
        let mut conv = self.conv.clone()?;
        let state = self.rows.get(user)?.clone();
        if !state.active {
            let upto = if state.left_seq > 0 { state.left_seq } else { state.read_seq };
            conv.last_seq = upto.min(conv.last_seq);
            conv.ver = conv.ver.min(state.ver);
        }
        let last_message = conv.last_seq.checked_sub(1).and_then(|i| self.messages.get(i as usize)).cloned();
        Some(ConversationView { conv, state, last_message })
    }

    fn active(&self, user: &str) -> bool {
        self.rows.get(user).is_some_and(|r| r.active)
    }
}

#[derive(Debug, Default)]
struct Model {
    /// The largest `ver` any write returned.
    ver: u64,
    convs: BTreeMap<String, ConvModel>,
    /// Active members of each existing group.
    groups: BTreeMap<String, (Group, BTreeMap<String, Role>)>,
    /// `(sender, client_msg_id)` → `(conv_id, seq)` of the stored message.
    dedupe: HashMap<(String, String), (String, u64)>,
    /// Per user: the `next_since` of their last list walk, the cursor each conversation had when
    /// last listed, and the conversations changed for them since that walk.
    lists: BTreeMap<String, ListModel>,
    /// Makes every message body distinct.
    counter: u64,
}

#[derive(Debug, Default)]
struct ListModel {
    since: u64,
    seen: HashMap<String, u64>,
    changed: BTreeSet<String>,
}

impl Model {
    /// Takes a `ver` returned by a write: larger than every one before.
    fn take_ver(&mut self, ver: u64, what: &str) -> Result<u64, TestCaseError> {
        prop_assert!(ver > self.ver, "{what}: ver {ver} is not after {}", self.ver);
        self.ver = ver;
        Ok(ver)
    }

    /// A write to the conversation itself changes it for everyone with a row in it.
    /// A change of the conversation: news for its members (not for former members, who see it
    /// as it was when they left).
    fn touch_conv(&mut self, conv_id: &str) {
        let users: Vec<String> = self
            .convs
            .get(conv_id)
            .map(|c| c.rows.iter().filter(|(_, r)| r.active).map(|(u, _)| u.clone()).collect())
            .unwrap_or_default();
        for u in users {
            self.lists.entry(u).or_default().changed.insert(conv_id.to_owned());
        }
    }

    fn touch_row(&mut self, user: &str, conv_id: &str) {
        self.lists.entry(user.to_owned()).or_default().changed.insert(conv_id.to_owned());
    }

    fn message(&self, conv_id: &str, seq: u64) -> Option<&Message> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.convs.get(conv_id)?.messages.get(i)
    }

    fn conv_mut(&mut self, conv_id: &str) -> &mut ConvModel {
        self.convs.entry(conv_id.to_owned()).or_default()
    }
}

fn system(event: &str) -> Body {
    Body::System { event: event.to_owned(), data: serde_json::json!({ "event": event }) }
}

fn store_err<T: std::fmt::Debug>(what: &str, r: StoreResult<T>) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))
}

fn expect_not_found<T: std::fmt::Debug>(what: &str, r: StoreResult<T>) -> Result<(), TestCaseError> {
    match r {
        Err(StoreError::NotFound(_)) => Ok(()),
        other => Err(TestCaseError::fail(format!("{what}: expected NotFound, got {other:?}"))),
    }
}

// ---- one step ----

async fn step(s: &DynStore, m: &mut Model, op: &Op, ts: i64) -> Result<(), TestCaseError> {
    match *op {
        Op::Send { from, to, cmid, reply } => send(s, m, from, to, cmid, reply, ts).await,
        Op::MarkRead { user, conv, seq } => {
            let (user, conv_id) = (USERS[user], conv.id());
            let Some(c) = m.convs.get(&conv_id).filter(|c| c.rows.contains_key(user)) else {
                return expect_not_found("mark_read without a row", s.mark_read(user, &conv_id, seq).await);
            };
            if !c.active(user) {
                return Ok(()); // the engine refuses (not_member)
            }
            let (read_seq, target) = (c.rows[user].read_seq, seq.min(c.last_seq()));
            let got = store_err("mark_read", s.mark_read(user, &conv_id, seq).await)?;
            if target <= read_seq {
                prop_assert_eq!(got, None, "mark_read({}) with the cursor at {}: nothing to move", seq, read_seq);
                return Ok(());
            }
            let Some(state) = got else {
                return Err(TestCaseError::fail(format!("mark_read({seq}) did not move the cursor from {read_seq}")));
            };
            let ver = m.take_ver(state.ver, "mark_read")?;
            let row = m.conv_mut(&conv_id).rows.get_mut(user).expect("row");
            row.read_seq = target;
            row.ver = ver;
            prop_assert_eq!(&state, row);
            m.touch_row(user, &conv_id);
            Ok(())
        }
        Op::Recall { conv, seq, by } => {
            let conv_id = conv.id();
            let Some(before) = m.message(&conv_id, seq).cloned() else {
                return expect_not_found("recall of no message", s.recall(&conv_id, seq, USERS[by]).await);
            };
            let recalled = store_err("recall", s.recall(&conv_id, seq, USERS[by]).await)?;
            if before.is_recalled() {
                prop_assert!(!recalled.changed, "recalling again changes nothing");
                prop_assert_eq!(recalled.message, before, "recalling again changes nothing");
                return Ok(());
            }
            prop_assert!(recalled.changed, "the first recall changes the message");
            let got = recalled.message;
            let ver = m.take_ver(got.ver, "recall")?;
            let expected = Message { body: Body::Recalled { by: USERS[by].to_owned() }, ver, ..before };
            prop_assert_eq!(&got, &expected);
            let c = m.conv_mut(&conv_id);
            c.messages[(seq - 1) as usize] = expected;
            // Replies to it no longer quote its text (their `ver` stays).
            for reply in &mut c.messages {
                if let Some(r) = reply.reply_to.as_mut().filter(|r| r.seq == seq) {
                    r.scrub();
                }
            }
            c.recalls.insert(seq, ver);
            if let Some(conv) = &mut c.conv {
                conv.ver = ver;
            }
            m.touch_conv(&conv_id);
            Ok(())
        }
        Op::Delete { user, conv, ref seqs } => {
            let (user, conv_id) = (USERS[user], conv.id());
            let Some(c) = m.convs.get(&conv_id).filter(|c| c.rows.contains_key(user)) else {
                return expect_not_found(
                    "delete_for_user without a row",
                    s.delete_for_user(user, &conv_id, seqs).await,
                );
            };
            if !c.active(user) {
                return Ok(()); // the engine refuses (not_member)
            }
            let state = store_err("delete_for_user", s.delete_for_user(user, &conv_id, seqs).await)?;
            let ver = m.take_ver(state.ver, "delete_for_user")?;
            let c = m.conv_mut(&conv_id);
            let last_seq = c.last_seq();
            let deleted = c.deleted.entry(user.to_owned()).or_default();
            for &seq in seqs.iter().filter(|s| (1..=last_seq).contains(*s)) {
                deleted.entry(seq).or_insert(ver);
            }
            let row = c.rows.get_mut(user).expect("row");
            row.ver = ver;
            prop_assert_eq!(&state, row);
            m.touch_row(user, &conv_id);
            Ok(())
        }
        Op::SetFlags { user, conv, pinned, hidden } => {
            let (user, conv_id) = (USERS[user], conv.id());
            let patch = FlagsPatch { pinned, muted: None, hidden };
            if !m.convs.get(&conv_id).is_some_and(|c| c.rows.contains_key(user)) {
                return expect_not_found("set_flags without a row", s.set_flags(user, &conv_id, patch).await);
            }
            let state = store_err("set_flags", s.set_flags(user, &conv_id, patch).await)?;
            let ver = m.take_ver(state.ver, "set_flags")?;
            let row = m.conv_mut(&conv_id).rows.get_mut(user).expect("row");
            row.pinned = pinned.unwrap_or(row.pinned);
            row.hidden = hidden.unwrap_or(row.hidden);
            row.ver = ver;
            prop_assert_eq!(&state, row);
            m.touch_row(user, &conv_id);
            Ok(())
        }
        Op::CreateGroup { group, owner, ref members } => {
            let (gid, owner) = (GROUPS[group], USERS[owner]);
            let conv_id = group_conv_id(gid);
            let g = NewGroup {
                id: gid.to_owned(),
                name: format!("group {gid}"),
                owner: owner.to_owned(),
                members: members.iter().map(|u| USERS[*u].to_owned()).collect(),
                ts,
                system_body: system("group_created"),
            };
            if m.groups.contains_key(gid) {
                return match s.create_group(g).await {
                    Err(StoreError::Conflict(_)) => Ok(()),
                    other => Err(TestCaseError::fail(format!("create_group of a taken id: {other:?}"))),
                };
            }
            let (group, msg) = store_err("create_group", s.create_group(g).await)?;
            let ver = m.take_ver(msg.ver, "create_group")?;
            let mut roles = BTreeMap::from([(owner.to_owned(), Role::Owner)]);
            for u in members {
                roles.entry(USERS[*u].to_owned()).or_insert(Role::Member);
            }
            let expected_group =
                Group::new(gid.to_owned(), format!("group {gid}"), owner.to_owned(), ts, roles.len() as u64);
            prop_assert_eq!(&group, &expected_group);
            let expected_msg = Message {
                conv_id: conv_id.clone(),
                seq: 1,
                sender: None,
                client_msg_id: None,
                body: system("group_created"),
                reply_to: None,
                ts,
                ver,
            };
            prop_assert_eq!(&msg, &expected_msg);
            let c = m.conv_mut(&conv_id);
            c.conv = Some(Conversation {
                conv_id: conv_id.clone(),
                kind: ConvKind::Group,
                members: Vec::new(),
                group_id: Some(gid.to_owned()),
                last_seq: 1,
                ver,
            });
            c.messages.push(expected_msg);
            for u in roles.keys() {
                c.rows.insert(u.clone(), UserConvState { active: true, ver, ..UserConvState::default() });
            }
            m.groups.insert(gid.to_owned(), (expected_group, roles));
            m.touch_conv(&conv_id);
            Ok(())
        }
        Op::ChangeMembers { group, ref add, ref remove } => {
            let gid = GROUPS[group];
            let conv_id = group_conv_id(gid);
            let change = MemberChange {
                group_id: gid.to_owned(),
                add: add.iter().map(|(u, r)| (USERS[*u].to_owned(), *r)).collect(),
                remove: remove.iter().map(|u| USERS[*u].to_owned()).collect(),
                ban: Vec::new(),
                unban: Vec::new(),
                ts,
                system_body: system("members_changed"),
            };
            if !m.groups.contains_key(gid) {
                return expect_not_found("change_members of no group", s.change_members(change).await);
            }
            let msg = store_err("change_members", s.change_members(change).await)?;
            let ver = m.take_ver(msg.ver, "change_members")?;
            let c = m.convs.get_mut(&conv_id).expect("a group has a conversation");
            let seq = c.last_seq() + 1;
            let (group_row, roles) = m.groups.get_mut(gid).expect("group");
            for (u, role) in add {
                let u = USERS[*u];
                if roles.contains_key(u) {
                    continue; // active members are left as they are
                }
                roles.insert(u.to_owned(), *role);
                let row = c.rows.entry(u.to_owned()).or_default();
                row.active = true;
                row.left_seq = 0;
                row.read_seq = row.read_seq.max(seq - 1);
                row.ver = ver;
            }
            let mut left = Vec::new();
            for u in remove {
                let u = USERS[*u];
                roles.remove(u);
                // A former member keeps seeing the conversation up to the message that removed
                // them, unhidden (the removal is news).
                if let Some(row) = c.rows.get_mut(u).filter(|r| r.active) {
                    row.active = false;
                    row.left_seq = seq;
                    row.hidden = false;
                    row.ver = ver;
                    left.push(u);
                }
            }
            group_row.member_count = roles.len() as u64;
            let expected_msg = Message {
                conv_id: conv_id.clone(),
                seq,
                sender: None,
                client_msg_id: None,
                body: system("members_changed"),
                reply_to: None,
                ts,
                ver,
            };
            prop_assert_eq!(&msg, &expected_msg);
            c.messages.push(expected_msg);
            if let Some(conv) = &mut c.conv {
                conv.last_seq = seq;
                conv.ver = ver;
            }
            m.touch_conv(&conv_id);
            for u in left {
                m.touch_row(u, &conv_id);
            }
            Ok(())
        }
    }
}

async fn send(
    s: &DynStore,
    m: &mut Model,
    from: usize,
    to: Target,
    cmid: Option<u8>,
    reply: Option<u64>,
    ts: i64,
) -> Result<(), TestCaseError> {
    let sender = USERS[from];
    let (conv_id, direct_members, group_exists) = match to {
        Target::Direct(peer) => {
            (direct_conv_id(sender, USERS[peer]), Some((sender.to_owned(), USERS[peer].to_owned())), false)
        }
        Target::Group(g) => {
            let conv_id = group_conv_id(GROUPS[g]);
            let exists = m.groups.contains_key(GROUPS[g]);
            if exists && !m.convs.get(&conv_id).is_some_and(|c| c.active(sender)) {
                return Ok(()); // the engine refuses (not_member)
            }
            (conv_id, None, exists)
        }
    };
    let client_msg_id = cmid.map(|k| format!("c{k}"));
    let reply_to = match (reply, m.convs.get(&conv_id)) {
        (Some(r), Some(c)) if c.last_seq() > 0 => {
            let quoted = &c.messages[(r % c.last_seq()) as usize];
            Some(ReplyRef::of(quoted))
        }
        _ => None,
    };
    m.counter += 1;
    let body = Body::text(format!("message {}", m.counter));
    let new = NewMessage {
        conv_id: conv_id.clone(),
        direct_members: direct_members.clone(),
        sender: Some(sender.to_owned()),
        client_msg_id: client_msg_id.clone(),
        body: body.clone(),
        reply_to: reply_to.clone(),
        ts,
    };
    let result = s.append(new).await;

    // A re-send: the original comes back, wherever it was sent, and nothing is written.
    let key = client_msg_id.clone().map(|k| (sender.to_owned(), k));
    if let Some((orig_conv, orig_seq)) = key.as_ref().and_then(|k| m.dedupe.get(k)) {
        let appended = store_err("append (re-send)", result)?;
        prop_assert!(appended.duplicate, "a re-sent client_msg_id is reported as a duplicate");
        let original = m.message(orig_conv, *orig_seq).expect("deduplicated message");
        prop_assert_eq!(&appended.message, original, "a re-send returns the stored original");
        return Ok(());
    }
    if direct_members.is_none() && !group_exists {
        return expect_not_found("append to no group", result);
    }
    let appended = store_err("append", result)?;
    prop_assert!(!appended.duplicate, "a new message reported as a duplicate");
    let ver = m.take_ver(appended.message.ver, "append")?;
    let c = m.conv_mut(&conv_id);
    let seq = c.last_seq() + 1;
    let expected = Message {
        conv_id: conv_id.clone(),
        seq,
        sender: Some(sender.to_owned()),
        client_msg_id,
        body,
        reply_to,
        ts,
        ver,
    };
    prop_assert_eq!(&appended.message, &expected);
    if let Some((a, b)) = &direct_members {
        let mut members = vec![a.clone(), b.clone()];
        members.sort();
        members.dedup();
        let conv = c.conv.get_or_insert_with(|| Conversation {
            conv_id: conv_id.clone(),
            kind: ConvKind::Direct,
            members: members.clone(),
            group_id: None,
            last_seq: 0,
            ver: 0,
        });
        conv.last_seq = seq;
        conv.ver = ver;
        for u in members {
            c.rows.entry(u).or_insert(UserConvState { active: true, ver, ..UserConvState::default() });
        }
    } else if let Some(conv) = &mut c.conv {
        conv.last_seq = seq;
        conv.ver = ver;
    }
    if let Some(row) = c.rows.get_mut(sender) {
        row.read_seq = row.read_seq.max(seq);
        row.ver = ver;
    }
    c.messages.push(expected);
    if let Some(k) = key {
        m.dedupe.insert(k, (conv_id.clone(), seq));
    }
    m.touch_conv(&conv_id);
    Ok(())
}

// ---- the whole store against the model ----

async fn check(s: &DynStore, m: &mut Model) -> Result<(), TestCaseError> {
    // Conversations that were never created do not exist (a re-send elsewhere creates nothing).
    let mut all_ids: Vec<String> = GROUPS.iter().map(|g| group_conv_id(g)).collect();
    for (a, ua) in USERS.iter().enumerate() {
        all_ids.extend(USERS[a..].iter().map(|ub| direct_conv_id(ua, ub)));
    }
    for conv_id in &all_ids {
        let expected = m.convs.get(conv_id).and_then(|c| c.conv.clone());
        prop_assert_eq!(store_err("conversation", s.conversation(conv_id).await)?, expected, "{}", conv_id);
    }

    for (conv_id, c) in &m.convs {
        let Some(conv) = &c.conv else { continue };
        prop_assert_eq!(conv.last_seq, c.last_seq());
        // Gap fill from 0: seqs 1..=last_seq, each once, each the message the model expects.
        let mut history = Vec::new();
        let mut after = 0;
        loop {
            let q = HistoryQuery::After { seq: after, limit: HISTORY_PAGE };
            let page = store_err("history", s.history(conv_id, None, q).await)?;
            prop_assert!(page.len() <= HISTORY_PAGE);
            let Some(last) = page.last() else { break };
            prop_assert!(last.seq > after, "history After {} returned seq {}", after, last.seq);
            after = last.seq;
            history.extend(page);
        }
        let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
        prop_assert_eq!(seqs, (1..=conv.last_seq).collect::<Vec<u64>>(), "{} is not contiguous", conv_id);
        prop_assert_eq!(&history, &c.messages, "{}", conv_id);

        let mut cursors = store_err("read_cursors", s.read_cursors(conv_id).await)?;
        cursors.sort();
        let expected: Vec<(String, u64)> =
            c.rows.iter().filter(|(_, r)| r.active).map(|(u, r)| (u.clone(), r.read_seq)).collect();
        prop_assert_eq!(cursors, expected, "read cursors of {}", conv_id);

        for (user, row) in &c.rows {
            prop_assert!(row.read_seq <= conv.last_seq, "{} read {} of {}", user, row.read_seq, conv_id);
            let own_last = c.messages.iter().rev().find(|m| m.sender.as_deref() == Some(user.as_str()));
            if let Some(own) = own_last {
                prop_assert!(
                    row.read_seq >= own.seq,
                    "{}'s cursor {} is before their message {}",
                    user,
                    row.read_seq,
                    own.seq
                );
            }
            let stored = store_err("user_conv", s.user_conv(user, conv_id).await)?;
            prop_assert_eq!(stored.as_ref(), Some(row), "{}'s row in {}", user, conv_id);
            let view = store_err("conversation_view", s.conversation_view(user, conv_id).await)?;
            let expected_view = c.view(user);
            prop_assert_eq!(&view, &expected_view, "{}'s view of {}", user, conv_id);
            let unread = if row.active { conv.last_seq - row.read_seq } else { 0 };
            prop_assert_eq!(view.map(|v| v.unread()), Some(unread), "{}'s unread in {}", user, conv_id);

            let deleted = c.deleted.get(user);
            let visible: Vec<u64> =
                (1..=conv.last_seq).filter(|seq| !deleted.is_some_and(|d| d.contains_key(seq))).collect();
            let q = HistoryQuery::Latest { limit: 100 };
            let own_history = store_err("history for a user", s.history(conv_id, Some(user), q).await)?;
            prop_assert_eq!(own_history.iter().map(|m| m.seq).collect::<Vec<_>>(), visible, "{}'s history", user);

            let ch = store_err("changes", s.changes(user, conv_id, 0).await)?;
            let mut recalled = ch.recalled.clone();
            recalled.sort();
            let mut del = ch.deleted.clone();
            del.sort();
            prop_assert_eq!(recalled, c.recalls.keys().copied().collect::<Vec<_>>(), "recalls in {}", conv_id);
            prop_assert_eq!(
                del,
                deleted.map(|d| d.keys().copied().collect::<Vec<_>>()).unwrap_or_default(),
                "{}'s deletions",
                user
            );
            let ver = c.recalls.values().chain(deleted.into_iter().flat_map(|d| d.values())).copied().max();
            prop_assert_eq!(ch.ver, ver.unwrap_or(0), "changes ver of {} in {}", user, conv_id);
        }
    }

    for (gid, (group, roles)) in &m.groups {
        let stored = store_err("group", s.group(gid).await)?;
        prop_assert_eq!(stored.as_ref(), Some(group));
        let mut members: Vec<(String, Role)> =
            store_err("members", s.members(gid).await)?.into_iter().map(|m| (m.user_id, m.role)).collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let expected: Vec<(String, Role)> = roles.iter().map(|(u, r)| (u.clone(), *r)).collect();
        prop_assert_eq!(members, expected, "members of {}", gid);
    }

    for user in USERS {
        check_list(s, m, user).await?;
    }
    Ok(())
}

/// Walks `user`'s conversation list from the `next_since` of their previous walk.
async fn check_list(s: &DynStore, m: &mut Model, user: &str) -> Result<(), TestCaseError> {
    let list = m.lists.entry(user.to_owned()).or_default();
    let mut since = list.since;
    let mut walked: Vec<ConversationView> = Vec::new();
    for _ in 0..=all_convs() {
        let page = store_err("list_conversations", s.list_conversations(user, since, LIST_PAGE).await)?;
        prop_assert!(page.len() <= LIST_PAGE);
        let Some(next_since) = page.iter().map(ConversationView::cursor).max() else { break };
        for v in &page {
            let last = walked.last().map_or(since, ConversationView::cursor);
            prop_assert!(v.cursor() > last, "{}'s list: cursor {} after {}", user, v.cursor(), last);
        }
        walked.extend(page);
        since = next_since;
    }
    let listed: BTreeSet<String> = walked.iter().map(|v| v.conv.conv_id.clone()).collect();
    prop_assert_eq!(listed.len(), walked.len(), "{}'s list repeats a conversation", user);
    prop_assert_eq!(&listed, &list.changed, "{}'s list since {}: exactly what changed", user, list.since);
    for v in &walked {
        if let Some(prev) = list.seen.insert(v.conv.conv_id.clone(), v.cursor()) {
            prop_assert!(
                v.cursor() > prev,
                "{} changed but its cursor went from {} to {}",
                v.conv.conv_id,
                prev,
                v.cursor()
            );
        }
    }
    list.since = since;
    list.changed.clear();
    for v in &walked {
        let expected = m.convs.get(&v.conv.conv_id).and_then(|c| c.view(user));
        prop_assert_eq!(Some(v), expected.as_ref(), "{}'s listed view of {}", user, v.conv.conv_id);
    }
    // The whole list at once: every row the user has, ascending by cursor.
    let all = store_err("list_conversations", s.list_conversations(user, 0, 100).await)?;
    prop_assert!(all.windows(2).all(|w| w[0].cursor() < w[1].cursor()), "{}'s list is not ascending", user);
    let ids: BTreeSet<String> = all.iter().map(|v| v.conv.conv_id.clone()).collect();
    let expected: BTreeSet<String> =
        m.convs.iter().filter(|(_, c)| c.rows.contains_key(user)).map(|(id, _)| id.clone()).collect();
    prop_assert_eq!(ids, expected, "{}'s conversations", user);
    Ok(())
}

/// How many conversations there can be: a bound on list pages.
fn all_convs() -> usize {
    GROUPS.len() + USERS.len() * (USERS.len() + 1) / 2
}

// ---- running cases ----

async fn run_case<F, Fut>(open: &F, ops: &[Op]) -> Result<(), TestCaseError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = (DynStore, Option<tempfile::TempDir>)>,
{
    let (s, _dir) = open().await;
    let mut m = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let ts = TS + i as i64;
        step(&s, &mut m, op, ts).await.map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        check(&s, &mut m).await.map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
    }
    Ok(())
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run<F, Fut>(cases: u32, max_ops: usize, open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (DynStore, Option<tempfile::TempDir>)>,
{
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // No regression files: a failure prints the shrunk operations, to turn into a test. Shrinking
    // replays whole cases on a fresh store each; two minutes of it is enough to read a failure.
    let config = Config { cases, failure_persistence: None, max_shrink_time: 120_000, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let result = runner.run(&ops(max_ops), |ops| rt.block_on(run_case(&open, &ops)));
    match result {
        Ok(()) => eprintln!("{cases} cases of up to {max_ops} operations in {:.1?}", started.elapsed()),
        Err(TestError::Fail(why, ops)) => panic!("{why}\nshrunk to these operations:\n{ops:#?}"),
        Err(TestError::Abort(why)) => panic!("aborted: {why}"),
    }
}

#[test]
fn embedded_store_keeps_seq_and_unread_invariants() {
    run(env_number("PROPTEST_CASES", 64), 40, || async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path(), Arc::new(Metrics::default())).expect("open the embedded store");
        (Arc::new(store) as DynStore, Some(dir))
    });
}

#[test]
fn mongodb_store_keeps_seq_and_unread_invariants() {
    let Some(uri) = crate::store_mongo::test_uri() else { return };
    run(env_number("CONFAB_PROPTEST_MONGODB_CASES", 8), 20, || {
        let uri = uri.clone();
        async move {
            let db = crate::store_mongo::fresh_db();
            let store = crate::store_mongo::open(&uri, &db, Arc::new(Metrics::default())).await;
            (Arc::new(store) as DynStore, None)
        }
    });
}
