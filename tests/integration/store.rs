//! The storage conformance suite.
//!
//! Every `check_*` function takes an `Arc<dyn Store>` on an empty store and panics when the store
//! breaks the contract in `confab_actors::store`, so the same checks can run against every adapter
//! (the embedded store and MongoDB). `mod embedded` runs each check on a fresh `EmbeddedStore` in a
//! temporary directory, plus the checks that only make sense for it (persistence across a reopen,
//! closing, metrics, submission order). `mod mongodb` runs each check on a `MongoStore` over a
//! fresh database (see `store_mongo.rs` for the MongoDB-only checks and for how the tests find a
//! MongoDB: `CONFAB_TEST_MONGODB_URI`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use confab_actors::error::StoreError;
use confab_actors::model::{direct_conv_id, group_conv_id, Body, ConvKind, FlagsPatch, Message, Role};
use confab_actors::store::{HistoryQuery, MemberChange, NewGroup, NewMessage, Store};

pub type DynStore = Arc<dyn Store>;

pub(crate) const TS: i64 = 1_700_000_000_000;

fn text(s: &str) -> Body {
    Body::text(s)
}

fn system(event: &str) -> Body {
    Body::System { event: event.to_owned(), data: serde_json::json!({ "event": event }) }
}

/// A direct message from `from` to `to`.
pub(crate) fn direct(from: &str, to: &str, cmid: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        conv_id: direct_conv_id(from, to),
        direct_members: Some((from.to_owned(), to.to_owned())),
        sender: Some(from.to_owned()),
        client_msg_id: cmid.map(str::to_owned),
        body: text(body),
        reply_to: None,
        ts: TS,
    }
}

/// A message from `from` to group `group_id`.
pub(crate) fn to_group(group_id: &str, from: &str, body: &str) -> NewMessage {
    NewMessage {
        conv_id: group_conv_id(group_id),
        direct_members: None,
        sender: Some(from.to_owned()),
        client_msg_id: None,
        body: text(body),
        reply_to: None,
        ts: TS,
    }
}

pub(crate) fn new_group(id: &str, owner: &str, members: &[&str]) -> NewGroup {
    NewGroup {
        id: id.to_owned(),
        name: format!("group {id}"),
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ts: TS,
        system_body: system("group_created"),
    }
}

pub(crate) fn change(group_id: &str, add: &[(&str, Role)], remove: &[&str], ts: i64) -> MemberChange {
    MemberChange {
        group_id: group_id.to_owned(),
        add: add.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect(),
        remove: remove.iter().map(|u| (*u).to_owned()).collect(),
        ban: Vec::new(),
        unban: Vec::new(),
        ts,
        system_body: system("members_changed"),
    }
}

fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn body_text(m: &Message) -> &str {
    match &m.body {
        Body::Text { text, .. } => text,
        other => panic!("expected a text body, got {other:?}"),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

async fn send(s: &DynStore, m: NewMessage) -> Message {
    let a = s.append(m).await.expect("append");
    assert!(!a.duplicate, "a new message must not be reported as a duplicate");
    a.message
}

/// 200 concurrent appends to one conversation get exactly the seqs 1..=200, and history matches.
pub async fn check_concurrent_appends_are_contiguous(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    let mut handles = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        let (from, to) = if i % 2 == 0 { ("alice", "bob") } else { ("bob", "alice") };
        let m = direct(from, to, Some(&format!("c{i}")), &format!("m{i}"));
        handles.push(tokio::spawn(async move { s.append(m).await }));
    }
    let mut by_seq: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    for (i, h) in handles.into_iter().enumerate() {
        let a = h.await.expect("join").expect("append");
        assert!(!a.duplicate);
        assert_eq!(a.message.conv_id, conv);
        assert_eq!(body_text(&a.message), format!("m{i}"));
        let prev = by_seq.insert(a.message.seq, (format!("m{i}"), a.message.ver));
        assert!(prev.is_none(), "seq {} assigned twice", a.message.seq);
    }
    assert_eq!(by_seq.keys().copied().collect::<Vec<_>>(), (1..=200).collect::<Vec<u64>>());
    let vers: BTreeSet<u64> = by_seq.values().map(|v| v.1).collect();
    assert_eq!(vers.len(), 200, "every append gets its own ver");

    let hist = s.history(&conv, None, HistoryQuery::After { seq: 0, limit: 500 }).await.expect("history");
    assert_eq!(seqs(&hist), (1..=200).collect::<Vec<u64>>());
    for m in &hist {
        let (body, ver) = &by_seq[&m.seq];
        assert_eq!(body_text(m), body, "history body of seq {}", m.seq);
        assert_eq!(m.ver, *ver, "history ver of seq {}", m.seq);
    }
    let c = s.conversation(&conv).await.expect("conversation").expect("conversation exists");
    assert_eq!(c.last_seq, 200);
    assert_eq!(Some(&c.ver), vers.iter().max(), "the conversation carries the ver of its last change");
    let cursors = sorted(s.read_cursors(&conv).await.expect("read_cursors"));
    assert_eq!(cursors.len(), 2, "one row per participant even with racing first messages: {cursors:?}");
}

/// A re-send with the same `(sender, client_msg_id)` returns the original and stores nothing.
pub async fn check_dedupe(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    let first = send(&s, direct("alice", "bob", Some("k1"), "hello")).await;
    assert_eq!(first.seq, 1);
    assert_eq!(first.client_msg_id.as_deref(), Some("k1"));
    let conv_before = s.conversation(&conv).await.expect("conversation").expect("exists");

    let again = s.append(direct("alice", "bob", Some("k1"), "changed")).await.expect("append");
    assert!(again.duplicate);
    assert_eq!(again.message, first, "the duplicate answer is the stored original");
    let conv_after = s.conversation(&conv).await.expect("conversation").expect("exists");
    assert_eq!(conv_after, conv_before, "a duplicate writes nothing");
    let hist = s.history(&conv, None, HistoryQuery::Latest { limit: 10 }).await.expect("history");
    assert_eq!(hist, vec![first.clone()]);

    // The key is per sender.
    let other = send(&s, direct("bob", "alice", Some("k1"), "bob's")).await;
    assert_eq!(other.seq, 2);

    // The key is unique per sender across conversations: the original comes back, nothing is created.
    let cross = s.append(direct("alice", "carol", Some("k1"), "elsewhere")).await.expect("append");
    assert!(cross.duplicate);
    assert_eq!(cross.message, first);
    assert!(s.conversation(&direct_conv_id("alice", "carol")).await.expect("conversation").is_none());
    assert!(s.user_conv("carol", &direct_conv_id("alice", "carol")).await.expect("user_conv").is_none());

    // Without a client_msg_id nothing is de-duplicated.
    assert_eq!(send(&s, direct("alice", "bob", None, "x")).await.seq, 3);
    assert_eq!(send(&s, direct("alice", "bob", None, "x")).await.seq, 4);
}

/// The first direct message creates the conversation and both participants' rows.
pub async fn check_direct_auto_creation(s: DynStore) {
    let conv = direct_conv_id("bob", "alice");
    assert!(s.conversation(&conv).await.expect("conversation").is_none());
    assert!(s.user_conv("alice", &conv).await.expect("user_conv").is_none());
    assert!(s.conversation_view("alice", &conv).await.expect("view").is_none());

    let m = send(&s, direct("bob", "alice", None, "hi")).await;
    assert_eq!((m.seq, m.sender.as_deref()), (1, Some("bob")));
    assert!(m.ver > 0);
    let c = s.conversation(&conv).await.expect("conversation").expect("created");
    assert_eq!(c.conv_id, conv);
    assert_eq!(c.kind, ConvKind::Direct);
    assert_eq!(c.members, vec!["alice".to_owned(), "bob".to_owned()], "members are sorted");
    assert_eq!(c.group_id, None);
    assert_eq!((c.last_seq, c.ver), (1, m.ver));

    let bob = s.user_conv("bob", &conv).await.expect("user_conv").expect("sender row");
    assert!(bob.active);
    assert_eq!(bob.read_seq, 1, "sending implies having read");
    assert_eq!(bob.ver, m.ver);
    let alice = s.user_conv("alice", &conv).await.expect("user_conv").expect("recipient row");
    assert!(alice.active);
    assert_eq!(alice.read_seq, 0);
    assert!(!alice.pinned && !alice.muted && !alice.hidden);

    let view = s.conversation_view("alice", &conv).await.expect("view").expect("exists");
    assert_eq!(view.unread(), 1);
    assert_eq!(view.last_message.as_ref(), Some(&m));
    assert_eq!(view.conv, c);
    let bob_view = s.conversation_view("bob", &conv).await.expect("view").expect("exists");
    assert_eq!(bob_view.unread(), 0);
    assert_eq!(
        sorted(s.read_cursors(&conv).await.expect("read_cursors")),
        vec![("alice".to_owned(), 0), ("bob".to_owned(), 1)]
    );

    // The reply goes to the same conversation and creates nothing new.
    let r = send(&s, direct("alice", "bob", None, "hello")).await;
    assert_eq!((r.conv_id.as_str(), r.seq), (conv.as_str(), 2));
    assert_eq!(s.user_conv("alice", &conv).await.expect("user_conv").expect("row").read_seq, 2);
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv").expect("row").read_seq, 1);

    // A note to self has one participant.
    let note = direct_conv_id("carol", "carol");
    send(&s, direct("carol", "carol", None, "memo")).await;
    let c = s.conversation(&note).await.expect("conversation").expect("created");
    assert_eq!(c.members, vec!["carol".to_owned()]);
    assert_eq!(s.read_cursors(&note).await.expect("read_cursors"), vec![("carol".to_owned(), 1)]);
}

/// Operations on things that do not exist fail with `NotFound` and create nothing.
pub async fn check_not_found(s: DynStore) {
    let err = s.append(to_group("nope", "alice", "hi")).await.expect_err("group must exist");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.conversation(&group_conv_id("nope")).await.expect("conversation").is_none());
    assert!(s.user_conv("alice", &group_conv_id("nope")).await.expect("user_conv").is_none());

    let mut m = direct("alice", "bob", None, "hi");
    m.direct_members = None;
    let err = s.append(m).await.expect_err("no direct_members, no conversation");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.conversation(&direct_conv_id("alice", "bob")).await.expect("conversation").is_none());

    let conv = direct_conv_id("alice", "bob");
    send(&s, direct("alice", "bob", None, "hi")).await;
    let err = s.recall(&conv, 2, "alice").await.expect_err("no seq 2");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.recall("g_missing", 1, "alice").await.expect_err("no conversation");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.mark_read("carol", &conv, 1).await.expect_err("carol has no row");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.set_flags("carol", &conv, FlagsPatch::default()).await.expect_err("carol has no row");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.delete_for_user("carol", &conv, &[1]).await.expect_err("carol has no row");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = s.change_members(change("nope", &[("bob", Role::Member)], &[], TS)).await.expect_err("no group");
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(s.group("nope").await.expect("group").is_none());
    assert!(s.members("nope").await.expect("members").is_empty());
    assert!(s.message(&conv, 2).await.expect("message").is_none());
    assert!(s.history("g_missing", None, HistoryQuery::Latest { limit: 10 }).await.expect("history").is_empty());
    assert!(s.read_cursors("g_missing").await.expect("read_cursors").is_empty());
    // The failed operations did not disturb the conversation.
    let c = s.conversation(&conv).await.expect("conversation").expect("exists");
    assert_eq!(c.last_seq, 1);
}

/// Latest / Before / After pages are ascending, exclusive and limited.
pub async fn check_history_paging(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    let mut sent = Vec::new();
    for i in 1..=10 {
        sent.push(send(&s, direct("alice", "bob", None, &format!("m{i}"))).await);
    }
    let h = |q| {
        let s = s.clone();
        let conv = conv.clone();
        async move { s.history(&conv, None, q).await.expect("history") }
    };
    let latest = h(HistoryQuery::Latest { limit: 3 }).await;
    assert_eq!(seqs(&latest), vec![8, 9, 10]);
    assert_eq!(latest, sent[7..10].to_vec(), "history returns the stored messages");
    assert_eq!(seqs(&h(HistoryQuery::Latest { limit: 100 }).await), (1..=10).collect::<Vec<u64>>());
    assert!(h(HistoryQuery::Latest { limit: 0 }).await.is_empty());
    assert_eq!(seqs(&h(HistoryQuery::Before { seq: 8, limit: 3 }).await), vec![5, 6, 7]);
    assert_eq!(seqs(&h(HistoryQuery::Before { seq: 3, limit: 5 }).await), vec![1, 2]);
    assert!(h(HistoryQuery::Before { seq: 1, limit: 5 }).await.is_empty());
    assert_eq!(seqs(&h(HistoryQuery::Before { seq: 100, limit: 2 }).await), vec![9, 10]);
    assert_eq!(seqs(&h(HistoryQuery::After { seq: 7, limit: 2 }).await), vec![8, 9]);
    assert_eq!(seqs(&h(HistoryQuery::After { seq: 0, limit: 3 }).await), vec![1, 2, 3]);
    assert_eq!(seqs(&h(HistoryQuery::After { seq: 9, limit: 5 }).await), vec![10]);
    assert!(h(HistoryQuery::After { seq: 10, limit: 5 }).await.is_empty());
    assert!(h(HistoryQuery::After { seq: 3, limit: 0 }).await.is_empty());
    // Paging backwards from the latest page walks the whole conversation exactly once.
    let mut all = Vec::new();
    let mut page = h(HistoryQuery::Latest { limit: 4 }).await;
    while let Some(first) = page.first().map(|m| m.seq) {
        all.splice(0..0, seqs(&page));
        page = h(HistoryQuery::Before { seq: first, limit: 4 }).await;
    }
    assert_eq!(all, (1..=10).collect::<Vec<u64>>());
    // Other conversations do not leak in.
    send(&s, direct("alice", "carol", None, "other")).await;
    assert_eq!(seqs(&h(HistoryQuery::After { seq: 0, limit: 100 }).await), (1..=10).collect::<Vec<u64>>());
}

/// Delete-for-me hides messages from that user only and shows up in `changes`.
pub async fn check_delete_for_user_and_changes(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    for i in 1..=5 {
        send(&s, direct("alice", "bob", None, &format!("m{i}"))).await;
    }
    let before = s.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    let st = s.delete_for_user("bob", &conv, &[2, 4, 99]).await.expect("delete");
    assert!(st.ver > before.ver, "deleting bumps the row ver");
    assert_eq!(st.read_seq, before.read_seq);
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv"), Some(st.clone()));

    let latest = |user: Option<&'static str>, limit| {
        let s = s.clone();
        let conv = conv.clone();
        async move { seqs(&s.history(&conv, user, HistoryQuery::Latest { limit }).await.expect("history")) }
    };
    assert_eq!(latest(Some("bob"), 10).await, vec![1, 3, 5]);
    assert_eq!(latest(Some("bob"), 2).await, vec![5], "a page may hold fewer than limit");
    assert_eq!(latest(Some("alice"), 10).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(latest(None, 10).await, vec![1, 2, 3, 4, 5]);
    let after = s.history(&conv, Some("bob"), HistoryQuery::After { seq: 1, limit: 3 }).await.expect("history");
    assert_eq!(seqs(&after), vec![3]);

    let ch = s.changes("bob", &conv, 0).await.expect("changes");
    assert_eq!(sorted(ch.deleted.clone()), vec![2, 4]);
    assert!(ch.recalled.is_empty());
    assert_eq!(ch.ver, st.ver);
    let ch = s.changes("bob", &conv, st.ver).await.expect("changes");
    assert!(ch.deleted.is_empty() && ch.recalled.is_empty());
    assert_eq!(ch.ver, st.ver, "with nothing new, ver stays at since");
    let ch = s.changes("alice", &conv, 0).await.expect("changes");
    assert!(ch.deleted.is_empty() && ch.recalled.is_empty(), "deletions are per user");
    assert_eq!(ch.ver, 0);

    let st2 = s.delete_for_user("bob", &conv, &[3]).await.expect("delete");
    assert!(st2.ver > st.ver);
    let ch = s.changes("bob", &conv, st.ver).await.expect("changes");
    assert_eq!(ch.deleted, vec![3]);
    assert_eq!(ch.ver, st2.ver);
    assert_eq!(latest(Some("bob"), 10).await, vec![1, 5]);

    // Deleting nothing still succeeds and bumps the row.
    let st3 = s.delete_for_user("bob", &conv, &[]).await.expect("delete");
    assert!(st3.ver > st2.ver);
}

/// Clearing a conversation for one user: up to its last message now, for them only; it reads
/// everything, moves only forward, and keeps the last message out of their list item.
pub async fn check_clear_for_user(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    for i in 1..=3 {
        send(&s, direct("alice", "bob", None, &format!("m{i}"))).await;
    }
    let before = s.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    let st = s.clear_for_user("bob", &conv).await.expect("clear");
    assert_eq!((st.cleared_seq, st.read_seq), (3, 3));
    assert!(st.ver > before.ver, "clearing bumps the row ver");
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv"), Some(st.clone()));
    let view = s.conversation_view("bob", &conv).await.expect("view").expect("a view");
    assert_eq!((view.conv.last_seq, view.last_message.is_none()), (3, true));
    assert_eq!(view.unread(), 0);
    let alice = s.conversation_view("alice", &conv).await.expect("view").expect("a view");
    assert_eq!((alice.state.cleared_seq, alice.last_message.map(|m| m.seq)), (0, Some(3)), "only bob's row");
    let listed = s.list_conversations("bob", 0, 10).await.expect("list");
    assert_eq!((listed.len(), listed[0].last_message.is_none()), (1, true));

    // Later messages show; a second clear moves up to them; nobody's row is needed for a stranger.
    send(&s, direct("alice", "bob", None, "m4")).await;
    let view = s.conversation_view("bob", &conv).await.expect("view").expect("a view");
    assert_eq!((view.last_message.as_ref().map(|m| m.seq), view.unread()), (Some(4), 1));
    let st2 = s.clear_for_user("bob", &conv).await.expect("clear");
    assert_eq!((st2.cleared_seq, st2.read_seq), (4, 4));
    assert!(st2.ver > st.ver);
    assert!(matches!(s.clear_for_user("carol", &conv).await, Err(StoreError::NotFound(_))));
}

/// Statistics: users with a record, live groups, and per day the messages stored (a re-send
/// counted once, group-change notices not at all) and the users recorded active.
pub async fn check_stats(s: DynStore) {
    use confab_actors::store::{day_of, DayStats, GroupDismiss, Stats};
    let day = day_of(TS);
    let empty = |day| DayStats { day, messages: 0, active_users: 0 };
    assert_eq!(s.stats(day, day).await.unwrap(), Stats { users: 0, groups: 0, days: vec![empty(day)] });
    for cmid in ["a", "b"] {
        send(&s, direct("alice", "bob", Some(cmid), "hi")).await;
    }
    assert!(s.append(direct("alice", "bob", Some("a"), "hi")).await.unwrap().duplicate);
    let mut tomorrow = direct("bob", "alice", None, "later");
    tomorrow.ts = TS + 86_400_000;
    send(&s, tomorrow).await;
    for g in ["g1", "g2"] {
        s.create_group(new_group(g, "alice", &["bob"])).await.unwrap();
    }
    send(&s, to_group("g1", "bob", "in the group")).await;
    s.dismiss_group(GroupDismiss { group_id: "g2".into(), ts: TS, system_body: system("group_dismissed") })
        .await
        .unwrap();
    for u in ["u1", "u2"] {
        let p = confab_actors::model::UserPatch { id: u.into(), nickname: None, avatar: None, ext: None, ts: TS };
        s.upsert_user(p).await.unwrap();
    }
    s.record_active(day, &["alice".into(), "bob".into()]).await.unwrap();
    s.record_active(day, &["alice".into(), "carol".into()]).await.unwrap();
    s.record_active(day + 1, &["bob".into()]).await.unwrap();
    let st = s.stats(day - 1, day + 1).await.unwrap();
    let want = Stats {
        users: 2,
        groups: 1,
        days: vec![
            empty(day - 1),
            DayStats { day, messages: 3, active_users: 3 },
            DayStats { day: day + 1, messages: 1, active_users: 1 },
        ],
    };
    assert_eq!(st, want);
}

/// Search by name prefix, ignoring case: a renamed user or group is found by its new name only,
/// dismissed groups not at all.
pub async fn check_name_search(s: DynStore) {
    use confab_actors::model::{GroupPatch, UserPatch};
    use confab_actors::store::{GroupDismiss, GroupUpdate};
    let nick =
        |id: &str, n: &str| UserPatch { id: id.into(), nickname: Some(n.into()), avatar: None, ext: None, ts: TS };
    for (id, n) in [("u1", "Alice"), ("u2", "alicia"), ("u3", "Bob"), ("u4", "张三"), ("u5", "张四"), ("u0", "ALIBI")]
    {
        s.upsert_user(nick(id, n)).await.unwrap();
    }
    s.upsert_user(UserPatch { id: "u6".into(), nickname: None, avatar: None, ext: None, ts: TS }).await.unwrap();
    let ids = |users: Vec<confab_actors::model::User>| users.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(s.search_users("ali", 10).await.unwrap()), ["u0", "u1", "u2"], "by key, then id");
    assert_eq!(ids(s.search_users("ali", 2).await.unwrap()), ["u0", "u1"]);
    assert_eq!(ids(s.search_users("张", 10).await.unwrap()), ["u4", "u5"]);
    s.upsert_user(nick("u1", "Zed")).await.unwrap();
    assert_eq!(ids(s.search_users("alic", 10).await.unwrap()), ["u2"], "the old name is gone");
    assert_eq!(ids(s.search_users("z", 10).await.unwrap()), ["u1"]);
    assert!(s.search_users("q", 10).await.unwrap().is_empty());

    for (id, name) in [("g1", "Rust Club"), ("g2", "rust lovers"), ("g3", "Go")] {
        let mut g = new_group(id, "u1", &[]);
        g.name = name.into();
        s.create_group(g).await.unwrap();
    }
    let gids = |groups: Vec<confab_actors::model::Group>| groups.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(gids(s.search_groups("rust", 10).await.unwrap()), ["g1", "g2"]);
    let patch = GroupPatch { name: Some("Gophers".into()), ..GroupPatch::default() };
    s.update_group(GroupUpdate { group_id: "g2".into(), patch, ts: TS, system_body: system("x") }).await.unwrap();
    s.dismiss_group(GroupDismiss { group_id: "g3".into(), ts: TS, system_body: system("y") }).await.unwrap();
    assert_eq!(gids(s.search_groups("rust", 10).await.unwrap()), ["g1"]);
    assert_eq!(gids(s.search_groups("go", 10).await.unwrap()), ["g2"], "dismissed groups are left out");
}

/// Recall replaces the body, bumps message and conversation ver, and shows up in `changes`.
pub async fn check_recall_and_changes(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    for i in 1..=3 {
        send(&s, direct("alice", "bob", Some(&format!("r{i}")), &format!("m{i}"))).await;
    }
    let since = s.conversation(&conv).await.expect("conversation").expect("exists").ver;
    let r = s.recall(&conv, 2, "alice").await.expect("recall");
    assert!(r.changed, "the first recall changes the message");
    let r = r.message;
    assert_eq!(r.seq, 2);
    assert_eq!(r.body, Body::Recalled { by: "alice".to_owned() });
    assert_eq!(r.sender.as_deref(), Some("alice"));
    assert!(r.ver > since);
    assert!(r.is_recalled());
    assert_eq!(s.message(&conv, 2).await.expect("message"), Some(r.clone()));
    let c = s.conversation(&conv).await.expect("conversation").expect("exists");
    assert_eq!(c.ver, r.ver, "the conversation ver follows the recall");
    assert_eq!(c.last_seq, 3, "a recall is not a new message");

    let ch = s.changes("bob", &conv, since).await.expect("changes");
    assert_eq!(ch.recalled, vec![2]);
    assert!(ch.deleted.is_empty());
    assert_eq!(ch.ver, r.ver);
    let ch = s.changes("alice", &conv, 0).await.expect("changes");
    assert_eq!(ch.recalled, vec![2], "recalls are visible to every participant");
    assert!(s.changes("bob", &conv, r.ver).await.expect("changes").recalled.is_empty());

    // Recalling again changes nothing.
    let again = s.recall(&conv, 2, "bob").await.expect("recall");
    assert!(!again.changed, "a second recall changes nothing, and says so");
    assert_eq!(again.message, r);
    assert_eq!(s.conversation(&conv).await.expect("conversation").expect("exists").ver, r.ver);

    // The recall moves the conversation past list cursors.
    let listed = s.list_conversations("bob", since, 10).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].conv.conv_id, conv);

    // Recalling the last message shows in the list's last message.
    let r3 = s.recall(&conv, 3, "alice").await.expect("recall").message;
    let view = s.conversation_view("bob", &conv).await.expect("view").expect("exists");
    assert_eq!(view.last_message, Some(r3.clone()));
    let ch = s.changes("bob", &conv, since).await.expect("changes");
    assert_eq!(sorted(ch.recalled), vec![2, 3]);
    assert_eq!(ch.ver, r3.ver);
    // A deduplicated re-send of a recalled message returns it recalled.
    let dup = s.append(direct("alice", "bob", Some("r3"), "m3")).await.expect("append");
    assert!(dup.duplicate);
    assert_eq!(dup.message, r3);
}

/// A recall scrubs the quote of every stored reply to the message, and a reply appended with a
/// quote taken before the recall is stored scrubbed (the store re-checks in its transaction).
pub async fn check_recall_scrubs_quotes(s: DynStore) {
    use confab_actors::model::ReplyRef;
    let conv = direct_conv_id("alice", "bob");
    let secret = send(&s, direct("alice", "bob", Some("q1"), "the secret")).await;
    let other = send(&s, direct("alice", "bob", Some("q2"), "harmless")).await;
    let reply = |cmid: &str, quoted: &Message| NewMessage {
        reply_to: Some(ReplyRef::of(quoted)),
        ..direct("bob", "alice", Some(cmid), "re")
    };
    let r1 = send(&s, reply("q3", &secret)).await;
    let r2 = send(&s, reply("q4", &other)).await;
    assert_eq!(r1.reply_to.as_ref().map(|r| r.quote.as_str()), Some("the secret"));
    let recalled = s.recall(&conv, secret.seq, "alice").await.expect("recall");
    assert!(recalled.changed);
    let stored = s.message(&conv, r1.seq).await.expect("message").expect("exists");
    let q = stored.reply_to.expect("still a reply");
    assert_eq!((q.seq, q.sender.as_deref(), q.recalled), (secret.seq, Some("alice"), true));
    assert!(!q.quote.contains("secret"), "{q:?}");
    let untouched = s.message(&conv, r2.seq).await.expect("message").expect("exists");
    assert_eq!(untouched.reply_to.map(|r| (r.quote, r.recalled)), Some(("harmless".to_owned(), false)));
    // A reply whose quote was taken before the recall committed.
    let late = send(&s, reply("q5", &secret)).await;
    let q = late.reply_to.expect("a reply");
    assert!(q.recalled && !q.quote.contains("secret"), "{q:?}");
    let page = s.history(&conv, None, HistoryQuery::Latest { limit: 10 }).await.expect("history");
    assert!(page.iter().all(|m| !format!("{m:?}").contains("secret")), "{page:?}");
}

/// A member who leaves keeps an inactive row that records where they left (`left_seq`); their
/// view of the conversation (item, list, cursor) stops there, whatever is said after.
pub async fn check_former_members_see_up_to_their_leaving(s: DynStore) {
    let conv = group_conv_id("gl");
    s.create_group(new_group("gl", "alice", &["bob", "carol"])).await.expect("create");
    send(&s, to_group("gl", "alice", "hello")).await; // seq 2
    let since = s.list_conversations("carol", 0, 10).await.expect("list")[0].cursor();
    let removal = s.change_members(change("gl", &[], &["carol"], TS + 1)).await.expect("remove"); // seq 3
    let state = s.user_conv("carol", &conv).await.expect("row").expect("exists");
    assert_eq!((state.active, state.left_seq), (false, removal.seq));
    let listed = s.list_conversations("carol", since, 10).await.expect("list");
    assert_eq!(listed.len(), 1, "her removal shows in her list");
    let cursor = listed[0].cursor();
    send(&s, to_group("gl", "bob", "after carol")).await; // seq 4
    let view = s.conversation_view("carol", &conv).await.expect("view").expect("exists");
    assert_eq!(view.conv.last_seq, removal.seq);
    assert_eq!(view.last_message.as_ref().map(|m| m.seq), Some(removal.seq));
    assert!(view.cursor() <= cursor, "her cursor does not move with later messages");
    assert!(s.list_conversations("carol", cursor, 10).await.expect("list").is_empty());
    let all = s.list_conversations("carol", 0, 10).await.expect("list");
    assert_eq!(all[0].conv.last_seq, removal.seq);
    // Bob still sees everything.
    assert_eq!(s.conversation_view("bob", &conv).await.expect("view").expect("exists").conv.last_seq, 4);
    // Re-added: active again, everything visible.
    s.change_members(change("gl", &[("carol", Role::Member)], &[], TS + 2)).await.expect("add");
    let state = s.user_conv("carol", &conv).await.expect("row").expect("exists");
    assert_eq!((state.active, state.left_seq), (true, 0));
    assert_eq!(s.conversation_view("carol", &conv).await.expect("view").expect("exists").conv.last_seq, 5);
    // A dismissal is every member's leaving, at the dismissal message.
    let (_, d) = s
        .dismiss_group(confab_actors::store::GroupDismiss {
            group_id: "gl".into(),
            ts: TS + 3,
            system_body: system("group_dismissed"),
        })
        .await
        .expect("dismiss");
    for u in ["alice", "bob", "carol"] {
        let st = s.user_conv(u, &conv).await.expect("row").expect("exists");
        assert_eq!((st.active, st.left_seq, st.hidden), (false, d.seq, false), "{u}");
        assert_eq!(s.conversation_view(u, &conv).await.expect("view").expect("exists").conv.last_seq, d.seq);
    }
}

/// The read cursor only moves forward and never past the last message.
pub async fn check_mark_read(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    for i in 1..=5 {
        send(&s, direct("alice", "bob", None, &format!("m{i}"))).await;
    }
    let before = s.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    assert_eq!(before.read_seq, 0);
    let st = s.mark_read("bob", &conv, 3).await.expect("mark_read").expect("moved");
    assert_eq!(st.read_seq, 3);
    assert!(st.ver > before.ver);
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv"), Some(st.clone()));
    assert_eq!(s.mark_read("bob", &conv, 2).await.expect("mark_read"), None, "never backwards");
    assert_eq!(s.mark_read("bob", &conv, 3).await.expect("mark_read"), None, "unchanged");
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv"), Some(st.clone()), "nothing written");
    let capped = s.mark_read("bob", &conv, 100).await.expect("mark_read").expect("moved");
    assert_eq!(capped.read_seq, 5, "capped at last_seq");
    assert!(capped.ver > st.ver);
    assert_eq!(s.mark_read("bob", &conv, 100).await.expect("mark_read"), None);
    assert_eq!(s.mark_read("alice", &conv, 5).await.expect("mark_read"), None, "the sender has read all");
    let view = s.conversation_view("bob", &conv).await.expect("view").expect("exists");
    assert_eq!(view.unread(), 0);
    assert_eq!(
        sorted(s.read_cursors(&conv).await.expect("read_cursors")),
        vec![("alice".to_owned(), 5), ("bob".to_owned(), 5)]
    );
    // A new message makes it unread again.
    send(&s, direct("alice", "bob", None, "m6")).await;
    let view = s.conversation_view("bob", &conv).await.expect("view").expect("exists");
    assert_eq!(view.unread(), 1);
}

/// Flags change one at a time, each with a new ver, for one user only.
pub async fn check_set_flags(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    send(&s, direct("alice", "bob", None, "hi")).await;
    let before = s.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    let alice_before = s.user_conv("alice", &conv).await.expect("user_conv").expect("row");

    let st =
        s.set_flags("bob", &conv, FlagsPatch { pinned: Some(true), ..FlagsPatch::default() }).await.expect("set_flags");
    assert!(st.pinned && !st.muted && !st.hidden);
    assert!(st.ver > before.ver);
    assert_eq!(st.read_seq, before.read_seq);
    assert!(st.active);

    let st2 =
        s.set_flags("bob", &conv, FlagsPatch { muted: Some(true), ..FlagsPatch::default() }).await.expect("set_flags");
    assert!(st2.pinned && st2.muted && !st2.hidden, "unset fields are left alone");
    assert!(st2.ver > st.ver);

    let st3 = s
        .set_flags("bob", &conv, FlagsPatch { pinned: Some(false), hidden: Some(true), muted: None })
        .await
        .expect("set_flags");
    assert!(!st3.pinned && st3.muted && st3.hidden);
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv"), Some(st3.clone()));
    assert_eq!(s.user_conv("alice", &conv).await.expect("user_conv"), Some(alice_before), "other rows untouched");

    let listed = s.list_conversations("bob", st2.ver, 10).await.expect("list");
    assert_eq!(listed.len(), 1, "a flag change moves the row past the cursor");
    assert!(listed[0].state.hidden, "hidden rows are listed (clients filter)");
}

/// Cursor paging over the conversation list sees every conversation exactly once, and a change
/// moves a conversation past the cursor.
pub async fn check_list_conversations_paging(s: DynStore) {
    let peers: Vec<String> = (1..=5).map(|i| format!("u{i}")).collect();
    for p in &peers {
        send(&s, direct("alice", p, None, "hi")).await;
    }
    let expected: BTreeSet<String> = peers.iter().map(|p| direct_conv_id("alice", p)).collect();

    let mut since = 0;
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..10 {
        let page = s.list_conversations("alice", since, 2).await.expect("list");
        assert!(page.len() <= 2, "limit respected");
        if page.is_empty() {
            break;
        }
        let cursors: Vec<u64> = page.iter().map(|v| v.cursor()).collect();
        assert!(cursors.iter().all(|c| *c > since), "every row is after the cursor");
        assert!(cursors.windows(2).all(|w| w[0] < w[1]), "ascending by cursor: {cursors:?}");
        for v in &page {
            assert_eq!(v.last_message.as_ref().map(|m| m.seq), Some(1));
            assert_eq!(v.state.read_seq, 1);
            assert_eq!(v.conv.kind, ConvKind::Direct);
        }
        seen.extend(page.iter().map(|v| v.conv.conv_id.clone()));
        since = cursors.iter().copied().max().unwrap_or(since);
    }
    assert_eq!(seen.len(), 5, "each conversation exactly once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(s.list_conversations("alice", 0, 100).await.expect("list").len(), 5);
    assert!(s.list_conversations("alice", since, 10).await.expect("list").is_empty());
    assert!(s.list_conversations("alice", 0, 0).await.expect("list").is_empty());
    assert_eq!(s.list_conversations("u1", 0, 10).await.expect("list").len(), 1, "lists are per user");
    assert!(s.list_conversations("nobody", 0, 10).await.expect("list").is_empty());

    // A new message moves its conversation past the cursor.
    let conv1 = direct_conv_id("alice", "u1");
    let m = send(&s, direct("u1", "alice", None, "again")).await;
    let page = s.list_conversations("alice", since, 10).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].conv.conv_id, conv1);
    assert_eq!(page[0].last_message.as_ref(), Some(&m));
    assert_eq!(page[0].unread(), 1);
    assert_eq!(page[0].cursor(), m.ver);
    assert!(s.list_conversations("alice", m.ver, 10).await.expect("list").is_empty());

    // An own-row change (read cursor) does too.
    s.mark_read("alice", &conv1, 2).await.expect("mark_read").expect("moved");
    let page = s.list_conversations("alice", m.ver, 10).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].conv.conv_id, conv1);
    assert_eq!(page[0].unread(), 0);
}

/// Creating a group writes the group, its members, its conversation, the rows and message 1.
pub async fn check_create_group(s: DynStore) {
    let (g, m) = s.create_group(new_group("g1", "alice", &["bob", "alice", "carol", "bob"])).await.expect("create");
    assert_eq!(g.id, "g1");
    assert_eq!(g.name, "group g1");
    assert_eq!(g.owner, "alice");
    assert_eq!(g.created_at, TS);
    assert_eq!(g.member_count, 3, "members are de-duplicated");
    let conv = group_conv_id("g1");
    assert_eq!(m.conv_id, conv);
    assert_eq!(m.seq, 1);
    assert_eq!(m.sender, None);
    assert_eq!(m.client_msg_id, None);
    assert_eq!(m.body, system("group_created"));
    assert!(m.ver > 0);
    assert_eq!(s.group("g1").await.expect("group"), Some(g.clone()));
    assert_eq!(s.message(&conv, 1).await.expect("message"), Some(m.clone()));

    let c = s.conversation(&conv).await.expect("conversation").expect("created");
    assert_eq!(c.kind, ConvKind::Group);
    assert!(c.members.is_empty());
    assert_eq!(c.group_id.as_deref(), Some("g1"));
    assert_eq!((c.last_seq, c.ver), (1, m.ver));

    let mut members = s.members("g1").await.expect("members");
    members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let roles: Vec<(&str, Role, i64)> = members.iter().map(|m| (m.user_id.as_str(), m.role, m.joined_at)).collect();
    assert_eq!(roles, vec![("alice", Role::Owner, TS), ("bob", Role::Member, TS), ("carol", Role::Member, TS)]);

    for u in ["alice", "bob", "carol"] {
        let row = s.user_conv(u, &conv).await.expect("user_conv").expect("row");
        assert!(row.active, "{u} active");
        assert_eq!(row.read_seq, 0, "{u} sees the system message as unread");
        let view = s.conversation_view(u, &conv).await.expect("view").expect("exists");
        assert_eq!(view.unread(), 1);
        assert_eq!(view.last_message.as_ref(), Some(&m));
        assert_eq!(s.list_conversations(u, 0, 10).await.expect("list").len(), 1);
    }
    assert_eq!(
        sorted(s.read_cursors(&conv).await.expect("read_cursors")),
        vec![("alice".to_owned(), 0), ("bob".to_owned(), 0), ("carol".to_owned(), 0)]
    );

    // The id is taken: Conflict, and nothing changes.
    let err = s.create_group(new_group("g1", "dave", &["erin"])).await.expect_err("id taken");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(s.group("g1").await.expect("group"), Some(g));
    assert_eq!(s.members("g1").await.expect("members").len(), 3);
    assert!(s.user_conv("dave", &conv).await.expect("user_conv").is_none());
    assert!(s.user_conv("erin", &conv).await.expect("user_conv").is_none());
    assert_eq!(s.conversation(&conv).await.expect("conversation"), Some(c));

    // A group of one (owner only) works, and members can now post.
    let (solo, _) = s.create_group(new_group("solo", "zoe", &[])).await.expect("create");
    assert_eq!(solo.member_count, 1);
    let posted = send(&s, to_group("g1", "bob", "hello group")).await;
    assert_eq!(posted.seq, 2);
    assert_eq!(s.user_conv("bob", &conv).await.expect("user_conv").expect("row").read_seq, 2);
    assert_eq!(s.user_conv("carol", &conv).await.expect("user_conv").expect("row").read_seq, 0);
}

/// Adding, removing and re-adding members.
pub async fn check_change_members(s: DynStore) {
    let conv = group_conv_id("g2");
    let (_, m1) = s.create_group(new_group("g2", "alice", &["bob", "carol"])).await.expect("create");

    let m2 = s
        .change_members(change("g2", &[("dave", Role::Member), ("bob", Role::Admin)], &[], TS + 1))
        .await
        .expect("add");
    assert_eq!((m2.seq, m2.sender.as_deref(), m2.conv_id.as_str()), (2, None, conv.as_str()));
    assert_eq!(m2.body, system("members_changed"));
    assert_eq!(m2.ts, TS + 1);
    assert!(m2.ver > m1.ver);
    assert_eq!(s.message(&conv, 2).await.expect("message"), Some(m2.clone()));
    assert_eq!(s.group("g2").await.expect("group").expect("exists").member_count, 4);
    let members = s.members("g2").await.expect("members");
    let role =
        |members: &[confab_actors::model::Member], u: &str| members.iter().find(|m| m.user_id == u).map(|m| m.role);
    assert_eq!(role(&members, "bob"), Some(Role::Member), "active members are left as they are");
    assert_eq!(role(&members, "dave"), Some(Role::Member));
    assert_eq!(members.iter().find(|m| m.user_id == "dave").map(|m| m.joined_at), Some(TS + 1));
    let dave = s.user_conv("dave", &conv).await.expect("user_conv").expect("row");
    assert!(dave.active);
    assert_eq!(dave.read_seq, 1, "an added user's cursor sits just before the system message");
    assert_eq!(dave.ver, m2.ver);
    assert_eq!(s.conversation_view("dave", &conv).await.expect("view").expect("exists").unread(), 1);
    assert_eq!(s.read_cursors(&conv).await.expect("read_cursors").len(), 4);

    let m3 = s.change_members(change("g2", &[], &["carol"], TS + 2)).await.expect("remove");
    assert_eq!(m3.seq, 3);
    let carol = s.user_conv("carol", &conv).await.expect("user_conv").expect("row kept");
    assert!(!carol.active);
    assert_eq!(carol.ver, m3.ver);
    assert_eq!(s.group("g2").await.expect("group").expect("exists").member_count, 3);
    let members = s.members("g2").await.expect("members");
    assert_eq!(role(&members, "carol"), None);
    assert_eq!(members.len(), 3);
    let cursors = sorted(s.read_cursors(&conv).await.expect("read_cursors"));
    assert_eq!(cursors.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), vec!["alice", "bob", "dave"]);
    let carol_view = s.conversation_view("carol", &conv).await.expect("view").expect("row kept");
    assert!(!carol_view.state.active);
    assert_eq!(carol_view.unread(), 0);
    assert!(
        s.list_conversations("carol", m2.ver, 10).await.expect("list").iter().any(|v| v.conv.conv_id == conv),
        "the removal moves the row past the cursor so the user sees they left"
    );

    let m4 = s.change_members(change("g2", &[("carol", Role::Admin)], &[], TS + 3)).await.expect("re-add");
    assert_eq!(m4.seq, 4);
    let carol = s.user_conv("carol", &conv).await.expect("user_conv").expect("row");
    assert!(carol.active);
    assert_eq!(carol.read_seq, 3);
    assert_eq!(carol.ver, m4.ver);
    let members = s.members("g2").await.expect("members");
    assert_eq!(role(&members, "carol"), Some(Role::Admin));
    assert_eq!(s.group("g2").await.expect("group").expect("exists").member_count, 4);
    let c = s.conversation(&conv).await.expect("conversation").expect("exists");
    assert_eq!((c.last_seq, c.ver), (4, m4.ver));

    // Removing a non-member changes no count but still records the message.
    let m5 = s.change_members(change("g2", &[], &["zed"], TS + 4)).await.expect("remove nobody");
    assert_eq!(m5.seq, 5);
    assert_eq!(s.group("g2").await.expect("group").expect("exists").member_count, 4);
    assert!(s.user_conv("zed", &conv).await.expect("user_conv").is_none());

    // Add and remove in one change.
    let m6 = s.change_members(change("g2", &[("erin", Role::Member)], &["dave"], TS + 5)).await.expect("swap");
    assert_eq!(m6.seq, 6);
    let cursors = sorted(s.read_cursors(&conv).await.expect("read_cursors"));
    assert_eq!(
        cursors,
        vec![("alice".to_owned(), 0), ("bob".to_owned(), 0), ("carol".to_owned(), 3), ("erin".to_owned(), 5)]
    );
    assert_eq!(s.group("g2").await.expect("group").expect("exists").member_count, 4);
    assert_eq!(send(&s, to_group("g2", "erin", "hi all")).await.seq, 7);
    let hist = s.history(&conv, None, HistoryQuery::Latest { limit: 100 }).await.expect("history");
    assert_eq!(seqs(&hist), (1..=7).collect::<Vec<u64>>());
}

/// Every write gets a strictly larger `ver` than the one before it.
pub async fn check_users(s: DynStore) {
    use confab_actors::model::UserPatch;
    assert!(s.user("u1").await.unwrap().is_none(), "no record until created");
    let patch = |nick: Option<&str>, ext: Option<serde_json::Value>, ts: i64| UserPatch {
        id: "u1".into(),
        nickname: nick.map(str::to_owned),
        avatar: None,
        ext,
        ts,
    };
    let u = s.upsert_user(patch(Some("Ann"), None, TS)).await.unwrap();
    assert_eq!(u.nickname.as_deref(), Some("Ann"));
    assert_eq!(u.ext, serde_json::json!({}));
    assert!(!u.disabled);
    assert_eq!((u.tokens_valid_after, u.created_at, u.updated_at), (0, TS, TS));
    // A patch keeps the fields it does not name.
    let ext = serde_json::json!({ "$k.x": [1, { "a": null }] });
    let u = s.upsert_user(patch(None, Some(ext.clone()), TS + 5)).await.unwrap();
    assert_eq!((u.nickname.as_deref(), &u.ext, u.created_at, u.updated_at), (Some("Ann"), &ext, TS, TS + 5));
    assert_eq!(s.user("u1").await.unwrap().as_ref(), Some(&u));

    // Disable / enable, creating the record when needed.
    let d = s.set_user_disabled("u2", true, TS).await.unwrap();
    assert!(d.disabled);
    assert_eq!((d.nickname.as_ref(), d.created_at), (None, TS));
    assert!(s.user("u2").await.unwrap().unwrap().disabled);
    assert!(!s.set_user_disabled("u2", false, TS + 1).await.unwrap().disabled);
    let d = s.set_user_disabled("u1", true, TS + 6).await.unwrap();
    assert!(d.disabled);
    assert_eq!(d.nickname.as_deref(), Some("Ann"), "disabling keeps the profile");

    // Revocation (to the millisecond) only moves forward; the seconds field is its second.
    let r = s.revoke_tokens("u1", 1_000_500, TS + 7).await.unwrap();
    assert_eq!((r.tokens_valid_after_ms, r.tokens_valid_after, r.revoked_before_ms()), (1_000_500, 1000, 1_000_500));
    let r = s.revoke_tokens("u1", 900_000, TS + 8).await.unwrap();
    assert_eq!((r.tokens_valid_after_ms, r.tokens_valid_after), (1_000_500, 1000));
    // A device's revocation only moves forward too, and is listed by user.
    assert_eq!(s.revoke_device("u1", "phone", 2_000).await.unwrap(), 2_000);
    assert_eq!(s.revoke_device("u1", "phone", 1_000).await.unwrap(), 2_000);
    assert_eq!(s.revoke_device("u1", "pad.2", 3_000).await.unwrap(), 3_000);
    assert_eq!(s.revoke_device("u10", "phone", 5_000).await.unwrap(), 5_000);
    let mut listed = s.device_revocations(&["u1".into(), "u2".into()]).await.unwrap();
    listed.sort();
    assert_eq!(listed, [("u1".into(), "pad.2".into(), 3_000), ("u1".into(), "phone".into(), 2_000)]);
    assert!(s.device_revocations(&["u2".into()]).await.unwrap().is_empty());
    let r = s.revoke_tokens("u3", 50_000, TS).await.unwrap();
    assert_eq!((r.tokens_valid_after, r.tokens_valid_after_ms, r.disabled), (50, 50_000, false));
    let u1 = s.user("u1").await.unwrap().unwrap();
    assert!(u1.disabled && u1.nickname.as_deref() == Some("Ann") && u1.ext == ext);

    // Many at once; unknown ids are left out.
    let ids: Vec<String> = ["u1", "u2", "nobody", "u3"].iter().map(|x| (*x).to_owned()).collect();
    let mut got: Vec<String> = s.users(&ids).await.unwrap().into_iter().map(|u| u.id).collect();
    got.sort();
    assert_eq!(got, ["u1", "u2", "u3"]);
    assert!(s.users(&[]).await.unwrap().is_empty());

    // Listing by id: a prefix, a page after an id.
    let ids = |v: Vec<confab_actors::model::User>| v.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_users("", "", 10).await.unwrap()), ["u1", "u2", "u3"]);
    assert_eq!(ids(s.list_users("", "u1", 1).await.unwrap()), ["u2"]);
    assert_eq!(ids(s.list_users("u3", "", 10).await.unwrap()), ["u3"]);
    assert!(s.list_users("v", "", 10).await.unwrap().is_empty());
    s.create_group(new_group("ga", "u1", &[])).await.unwrap();
    s.create_group(new_group("gb", "u1", &[])).await.unwrap();
    let groups: Vec<String> = s.list_groups("g", "ga", 10).await.unwrap().into_iter().map(|g| g.id).collect();
    assert_eq!(groups, ["gb"]);
}

pub async fn check_group_update_roles_dismiss(s: DynStore) {
    use confab_actors::model::GroupPatch;
    use confab_actors::store::{GroupDismiss, GroupUpdate, RoleChange};
    let conv = group_conv_id("g1");
    s.create_group(new_group("g1", "owner", &["a", "b"])).await.unwrap();
    let before = s.group("g1").await.unwrap().unwrap();
    assert_eq!(
        (before.avatar.as_ref(), before.notice.as_ref(), before.ext.as_ref(), before.dismissed),
        (None, None, None, false)
    );

    // Profile update: absent fields kept, a system message at the next seq.
    let patch = GroupPatch {
        name: None,
        avatar: Some("https://x/a.png".into()),
        notice: Some("hello".into()),
        ext: Some(serde_json::json!({ "k": 1 })),
        join_mode: None,
        invite_mode: None,
        notice_confirm: None,
    };
    let (g, m) = s
        .update_group(GroupUpdate { group_id: "g1".into(), patch, ts: TS + 1, system_body: system("group_updated") })
        .await
        .unwrap();
    assert_eq!(
        (g.name.as_str(), g.avatar.as_deref(), g.notice.as_deref()),
        ("group g1", Some("https://x/a.png"), Some("hello"))
    );
    assert_eq!(g.ext, Some(serde_json::json!({ "k": 1 })));
    assert_eq!((m.seq, m.sender.as_ref()), (2, None));
    assert_eq!(s.group("g1").await.unwrap().unwrap(), g);
    assert_eq!(s.conversation(&conv).await.unwrap().unwrap().last_seq, 2);
    let clear = GroupPatch { name: Some("renamed".into()), notice: Some(String::new()), ..GroupPatch::default() };
    let (g, _) = s
        .update_group(GroupUpdate { group_id: "g1".into(), patch: clear, ts: TS + 2, system_body: system("x") })
        .await
        .unwrap();
    assert_eq!((g.name.as_str(), g.notice.as_ref(), g.avatar.as_deref()), ("renamed", None, Some("https://x/a.png")));

    // Roles: an admin, then an ownership transfer.
    let (_, m) = s
        .set_roles(RoleChange {
            group_id: "g1".into(),
            roles: vec![("a".into(), Role::Admin)],
            ts: TS,
            system_body: system("r"),
        })
        .await
        .unwrap();
    assert_eq!(m.seq, 4);
    let role_of = |ms: &[confab_actors::model::Member], u: &str| ms.iter().find(|m| m.user_id == u).map(|m| m.role);
    let ms = s.members("g1").await.unwrap();
    assert_eq!(role_of(&ms, "a"), Some(Role::Admin));
    let (g, _) = s
        .set_roles(RoleChange {
            group_id: "g1".into(),
            roles: vec![("b".into(), Role::Owner), ("owner".into(), Role::Admin)],
            ts: TS,
            system_body: system("r"),
        })
        .await
        .unwrap();
    assert_eq!(g.owner, "b");
    assert_eq!(s.group("g1").await.unwrap().unwrap().owner, "b");
    let ms = s.members("g1").await.unwrap();
    assert_eq!((role_of(&ms, "b"), role_of(&ms, "owner")), (Some(Role::Owner), Some(Role::Admin)));
    let bad = RoleChange {
        group_id: "g1".into(),
        roles: vec![("zed".into(), Role::Admin)],
        ts: TS,
        system_body: system("r"),
    };
    assert!(matches!(s.set_roles(bad).await, Err(StoreError::NotFound(_))));
    assert_eq!(s.conversation(&conv).await.unwrap().unwrap().last_seq, 5, "a refused change writes nothing");

    // Dismiss: last message, members gone, rows inactive, further changes refused.
    let (g, m) = s
        .dismiss_group(GroupDismiss { group_id: "g1".into(), ts: TS, system_body: system("group_dismissed") })
        .await
        .unwrap();
    assert!(g.dismissed);
    assert_eq!((g.member_count, m.seq), (0, 6));
    let stored = s.group("g1").await.unwrap().unwrap();
    assert!(stored.dismissed && stored.member_count == 0 && stored.owner == "b");
    assert!(s.members("g1").await.unwrap().is_empty());
    for u in ["owner", "a", "b"] {
        let row = s.user_conv(u, &conv).await.unwrap().unwrap();
        assert!(!row.active, "{u}'s row must be inactive");
        assert_eq!(row.ver, m.ver);
    }
    assert!(s.read_cursors(&conv).await.unwrap().is_empty());
    let again = GroupDismiss { group_id: "g1".into(), ts: TS, system_body: system("x") };
    assert!(matches!(s.dismiss_group(again).await, Err(StoreError::Conflict(_))));
    let upd = GroupUpdate { group_id: "g1".into(), patch: GroupPatch::default(), ts: TS, system_body: system("x") };
    assert!(matches!(s.update_group(upd).await, Err(StoreError::Conflict(_))));
    assert!(matches!(
        s.change_members(change("g1", &[("c", Role::Member)], &[], TS)).await,
        Err(StoreError::Conflict(_))
    ));
    let none = GroupDismiss { group_id: "nope".into(), ts: TS, system_body: system("x") };
    assert!(matches!(s.dismiss_group(none).await, Err(StoreError::NotFound(_))));
    assert_eq!(s.conversation(&conv).await.unwrap().unwrap().last_seq, 6);
}

/// The webhook outbox: nothing is written while it is off; once on, each change writes its event
/// in the same transaction (a re-send or a second recall writes none); ids increase; deliveries
/// are queued once per event, listed, saved, and replayed; the lease has one holder at a time.
pub async fn check_outbox(s: DynStore, o: Arc<dyn confab_actors::outbox::Outbox>) {
    use confab_actors::outbox::{Attempt, DeliveryQuery, DeliveryState, NewEvent, Replay};
    send(&s, direct("alice", "bob", Some("off"), "before")).await;
    assert!(o.events_after(0, 10).await.expect("events").is_empty(), "no outbox rows while webhooks are off");
    o.enable();
    let ab = direct_conv_id("alice", "bob");
    let m = send(&s, direct("alice", "bob", Some("on"), "after")).await;
    assert!(s.append(direct("alice", "bob", Some("on"), "after")).await.expect("re-send").duplicate);
    s.recall(&ab, m.seq, "alice").await.expect("recall");
    s.recall(&ab, m.seq, "alice").await.expect("recall again");
    s.create_group(new_group("team", "alice", &["bob"])).await.expect("create");
    s.change_members(change("team", &[("carol", Role::Member)], &[], TS + 1)).await.expect("add");
    let pushed = o.push_event(NewEvent::presence("alice", true, TS)).await.expect("push");
    let events = o.events_after(0, 100).await.expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["message.sent", "message.recalled", "group.created", "group.members_changed", "user.online"],
        "{events:#?}"
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(events.last().map(|e| e.id), Some(pushed));
    assert_eq!(events[0].conv_id.as_deref(), Some(ab.as_str()));
    assert_eq!(events[0].seq, Some(m.seq));
    assert_eq!(events[0].data["message"]["body"]["text"], "after");
    assert_eq!(events[1].data["message"]["body"]["type"], "recalled");
    assert_eq!(events[2].data["group"]["id"], "team");
    assert_eq!(o.events_after(events[1].id, 2).await.expect("page").len(), 2);
    assert_eq!(o.event(events[0].id).await.expect("event"), Some(events[0].clone()));

    // Deliveries: queued once, in order, then saved, listed and replayed.
    assert_eq!(o.cursor("ep").await.expect("cursor"), 0);
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    o.enqueue("ep", &ids, pushed).await.expect("enqueue");
    o.enqueue("ep", &ids[..2], ids[1]).await.expect("enqueue again changes nothing");
    assert_eq!(o.cursor("ep").await.expect("cursor"), pushed, "the cursor never moves back");
    let pending = o.pending("ep", 100).await.expect("pending");
    assert_eq!(pending.iter().map(|(d, _)| d.event_id).collect::<Vec<_>>(), ids);
    assert!(pending.iter().all(|(d, e)| d.state == DeliveryState::Pending && d.event_id == e.id));
    let (mut d, _) = pending[0].clone();
    d.record(
        Attempt { at: TS, status: Some(500), error: Some("HTTP 500".into()), ms: 3 },
        DeliveryState::Pending,
        TS + 10,
    );
    o.save_delivery(&d).await.expect("save");
    d.record(Attempt { at: TS + 10, status: Some(200), error: None, ms: 2 }, DeliveryState::Delivered, 0);
    o.save_delivery(&d).await.expect("save");
    let (mut f, _) = pending[1].clone();
    f.record(Attempt { at: TS, status: None, error: Some("timed out".into()), ms: 500 }, DeliveryState::Failed, 0);
    o.save_delivery(&f).await.expect("save");
    assert_eq!(o.pending("ep", 100).await.expect("pending").len(), ids.len() - 2);
    let all = o.event_deliveries(ids[0]).await.expect("deliveries");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, DeliveryState::Delivered);
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[0].log.len(), 2);
    assert_eq!(all[0].log[0].status, Some(500));
    let q = |state| DeliveryQuery { endpoint: Some("ep".into()), state: Some(state), after_id: 0, limit: 100 };
    assert_eq!(o.deliveries(&q(DeliveryState::Delivered)).await.expect("log").len(), 1);
    let failed = o.deliveries(&q(DeliveryState::Failed)).await.expect("log");
    assert_eq!(failed.iter().map(|d| d.event_id).collect::<Vec<_>>(), [ids[1]]);
    let other = DeliveryQuery { endpoint: Some("other".into()), state: None, after_id: 0, limit: 100 };
    assert!(o.deliveries(&other).await.expect("log").is_empty());
    let replay = Replay { endpoint: None, from_id: 0, to_id: u64::MAX, only_failed: true };
    assert_eq!(o.replay(&replay).await.expect("replay"), 1);
    let replay = Replay { endpoint: Some("ep".into()), from_id: ids[0], to_id: ids[0], only_failed: false };
    assert_eq!(o.replay(&replay).await.expect("replay"), 1);
    let pending = o.pending("ep", 100).await.expect("pending");
    assert_eq!(pending.len(), ids.len());
    assert_eq!(pending[0].0.attempts, 0, "a replay starts over");
    assert_eq!(pending[0].0.log.len(), 2, "and keeps the log");

    // Ids past one digit page like the rest (numbers compare as numbers; the embedded store's ids
    // count from 1, so its 10th to 12th events have them).
    for _ in 0..7 {
        o.push_event(NewEvent::presence("bob", true, TS)).await.expect("push");
    }
    let all: Vec<u64> = o.events_after(0, 100).await.expect("events").iter().map(|e| e.id).collect();
    assert_eq!(all.len(), 12);
    let page: Vec<u64> = o.events_after(all[8], 3).await.expect("page").iter().map(|e| e.id).collect();
    assert_eq!(page, all[9..12]);
    o.enqueue("ep", &page, page[2]).await.expect("enqueue");
    let mut first = o.event_deliveries(all[0]).await.expect("deliveries").remove(0);
    first.record(Attempt { at: TS, status: Some(200), error: None, ms: 1 }, DeliveryState::Delivered, 0);
    o.save_delivery(&first).await.expect("save");
    for id in [all[0], page[0], page[1], page[2]] {
        let ds = o.event_deliveries(id).await.expect("deliveries");
        assert_eq!(ds.iter().map(|d| d.event_id).collect::<Vec<_>>(), [id], "saving one delivery touches no other");
    }

    // The lease.
    assert!(o.lease("webhooks", "n1", TS, 1000).await.expect("lease"));
    assert!(!o.lease("webhooks", "n2", TS + 500, 1000).await.expect("lease"), "held by n1");
    assert!(o.lease("webhooks", "n1", TS + 600, 1000).await.expect("renew"));
    assert!(!o.lease("webhooks", "n2", TS + 1500, 1000).await.expect("lease"), "renewed until 1600");
    assert!(o.lease("webhooks", "n2", TS + 1700, 1000).await.expect("expired: taken over"));
}

/// The webhook retention: old events every endpoint is done with go, with their deliveries;
/// recent ones, ones still pending for some endpoint, ones with a recent attempt and ones not yet
/// passed by every cursor stay; steps are bounded and resume; a second pass removes nothing.
pub async fn check_outbox_trim(o: Arc<dyn confab_actors::outbox::Outbox>) {
    use confab_actors::outbox::{Attempt, Delivery, DeliveryState, NewEvent, Replay, Trim, Trimmed};
    let old = TS;
    let before_ts = TS + 1000;
    let recent = TS + 5000;
    let push = |ts| {
        let o = o.clone();
        async move { o.push_event(NewEvent::presence("alice", true, ts)).await.expect("push") }
    };
    // e1: delivered to A and B. e2: delivered to A, still pending for B. e3: failed for A, not
    // for B (its filter). e4: delivered to A and B, but A's was replayed and delivered again
    // lately. e5: for neither. e6: recent. e7: old again, after a recent one.
    let (e1, e2, e3, e4, e5) = (push(old).await, push(old).await, push(old).await, push(old).await, push(old).await);
    let (e6, e7) = (push(recent).await, push(old).await);
    o.enqueue("A", &[e1, e2, e3, e4, e6, e7], e7).await.expect("enqueue");
    o.enqueue("B", &[e1, e2, e4, e6, e7], e7).await.expect("enqueue");
    let settle = |ep: &str, id, state, at| {
        let mut d = Delivery::new(ep, id);
        d.record(Attempt { at, status: Some(200), error: None, ms: 1 }, state, 0);
        let o = o.clone();
        async move { o.save_delivery(&d).await.expect("save") }
    };
    let delivered = DeliveryState::Delivered;
    settle("A", e1, delivered, old).await;
    settle("B", e1, delivered, old).await;
    settle("A", e2, delivered, old).await;
    settle("A", e3, DeliveryState::Failed, old).await;
    settle("A", e4, delivered, recent).await;
    settle("B", e4, delivered, old).await;
    settle("A", e6, delivered, recent).await;
    settle("B", e6, delivered, recent).await;
    settle("A", e7, delivered, old).await;
    settle("B", e7, delivered, old).await;
    let trim = |endpoints: &[&str], after, limit| {
        let t = Trim { before_ts, endpoints: endpoints.iter().map(|e| e.to_string()).collect(), after, limit };
        let o = o.clone();
        async move { o.trim(&t).await.expect("trim") }
    };

    // An endpoint that has queued nothing yet (cursor 0) holds every event back.
    assert_eq!(trim(&["A", "B", "C"], 0, 100).await, Trimmed::default());
    assert_eq!(o.events_after(0, 100).await.expect("events").len(), 7);

    // Bounded steps: two events examined, then on from the second.
    let step = trim(&["A", "B"], 0, 2).await;
    assert_eq!(step, Trimmed { examined: 2, last_id: e2, events: 1, deliveries: 2 });
    let step = trim(&["A", "B"], e2, 100).await;
    assert_eq!(step, Trimmed { examined: 3, last_id: e5, events: 2, deliveries: 1 }, "stops before e6");
    let ids: Vec<u64> = o.events_after(0, 100).await.expect("events").iter().map(|e| e.id).collect();
    assert_eq!(ids, [e2, e4, e6, e7]);
    assert_eq!(o.event(e1).await.expect("event"), None);
    assert!(o.event_deliveries(e1).await.expect("deliveries").is_empty());
    assert!(o.event_deliveries(e3).await.expect("deliveries").is_empty());
    assert_eq!(o.event_deliveries(e2).await.expect("deliveries").len(), 2, "a pending event keeps its whole log");
    assert_eq!(o.event_deliveries(e4).await.expect("deliveries").len(), 2);
    let log = o.deliveries(&confab_actors::outbox::DeliveryQuery { limit: 100, ..Default::default() }).await;
    let logged: Vec<u64> = log.expect("log").iter().map(|d| d.event_id).collect();
    assert_eq!(logged, [e2, e2, e4, e4, e6, e6, e7, e7]);
    let pending: Vec<u64> = o.pending("B", 100).await.expect("pending").iter().map(|(d, _)| d.event_id).collect();
    assert_eq!(pending, [e2]);

    // A second pass removes nothing more; a removed event cannot be replayed.
    let again = trim(&["A", "B"], 0, 100).await;
    assert_eq!((again.examined, again.events, again.deliveries), (2, 0, 0));
    let replay = Replay { endpoint: None, from_id: e1, to_id: e1, only_failed: false };
    assert_eq!(o.replay(&replay).await.expect("replay"), 0);

    // Once its last delivery is done (long enough ago), the pending event goes too.
    settle("B", e2, DeliveryState::Failed, old).await;
    let last = trim(&["A", "B"], 0, 100).await;
    assert_eq!((last.events, last.deliveries), (1, 2));
    let ids: Vec<u64> = o.events_after(0, 100).await.expect("events").iter().map(|e| e.id).collect();
    assert_eq!(ids, [e4, e6, e7]);
    assert!(o.pending("B", 100).await.expect("pending").is_empty());
    // Ids are never handed out again.
    assert!(push(old).await > e7);
}

pub async fn check_system_dedupe(s: DynStore) {
    s.create_group(new_group("g1", "owner", &["a"])).await.unwrap();
    s.create_group(new_group("g2", "owner", &["a"])).await.unwrap();
    let sys = |g: &str, key: Option<&str>| NewMessage {
        conv_id: group_conv_id(g),
        direct_members: None,
        sender: None,
        client_msg_id: key.map(str::to_owned),
        body: system("announce"),
        reply_to: None,
        ts: TS,
    };
    let first = s.append(sys("g1", Some("k1"))).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!((first.message.seq, first.message.client_msg_id.as_deref()), (2, Some("k1")));
    let again = s.append(sys("g1", Some("k1"))).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    // Unique among system messages across conversations, like a user's keys.
    let elsewhere = s.append(sys("g2", Some("k1"))).await.unwrap();
    assert!(elsewhere.duplicate && elsewhere.message.conv_id == group_conv_id("g1"));
    // A user's key of the same text is another key; system messages without a key never clash.
    let mut user = to_group("g1", "a", "hi");
    user.client_msg_id = Some("k1".into());
    assert!(!s.append(user).await.unwrap().duplicate);
    assert!(!s.append(sys("g1", None)).await.unwrap().duplicate);
    assert!(!s.append(sys("g1", None)).await.unwrap().duplicate);
    assert_eq!(s.conversation(&group_conv_id("g1")).await.unwrap().unwrap().last_seq, 5);
}

pub async fn check_ver_increases(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    let mut vers = Vec::new();
    vers.push(send(&s, direct("alice", "bob", None, "1")).await.ver);
    vers.push(send(&s, direct("bob", "alice", None, "2")).await.ver);
    vers.push(s.mark_read("alice", &conv, 2).await.expect("mark_read").expect("moved").ver);
    vers.push(s.set_flags("bob", &conv, FlagsPatch::default()).await.expect("flags").ver);
    vers.push(s.delete_for_user("bob", &conv, &[1]).await.expect("delete").ver);
    vers.push(s.recall(&conv, 1, "alice").await.expect("recall").message.ver);
    vers.push(s.create_group(new_group("gv", "alice", &["bob"])).await.expect("create").1.ver);
    vers.push(s.change_members(change("gv", &[("carol", Role::Member)], &[], TS)).await.expect("change").ver);
    vers.push(send(&s, to_group("gv", "carol", "3")).await.ver);
    assert!(vers.windows(2).all(|w| w[0] < w[1]), "vers: {vers:?}");
}

/// Once closed (by `close`, the adapter's own), a store refuses writes and `ping` but still
/// answers reads; closing again is harmless.
pub async fn check_close_stops_writes_but_not_reads(s: DynStore, close: impl AsyncFn()) {
    let m = s.append(direct("alice", "bob", None, "hi")).await.expect("append").message;
    close().await;
    let err = s.append(direct("alice", "bob", None, "late")).await.expect_err("closed");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(s.ping().await.is_err(), "a closed store is not ready");
    assert_eq!(s.message(&m.conv_id, 1).await.expect("read after close"), Some(m));
    close().await; // idempotent
}

/// Writes everything `check_persisted_read` expects to find after a restart.
pub async fn check_persisted_write(s: DynStore) {
    let conv = direct_conv_id("alice", "bob");
    for i in 1..=3 {
        send(&s, direct("alice", "bob", Some(&format!("p{i}")), &format!("m{i}"))).await;
    }
    s.recall(&conv, 2, "alice").await.expect("recall");
    s.delete_for_user("bob", &conv, &[3]).await.expect("delete");
    s.mark_read("bob", &conv, 1).await.expect("mark_read").expect("moved");
    s.set_flags("bob", &conv, FlagsPatch { pinned: Some(true), ..FlagsPatch::default() }).await.expect("flags");
    s.create_group(new_group("gp", "alice", &["bob"])).await.expect("create");
    s.change_members(change("gp", &[("carol", Role::Admin)], &[], TS)).await.expect("change");
}

/// Checks what `check_persisted_write` wrote, on a store opened afresh.
pub async fn check_persisted_read(s: DynStore) {
    s.ping().await.expect("ping");
    let conv = direct_conv_id("alice", "bob");
    let c = s.conversation(&conv).await.expect("conversation").expect("persisted");
    assert_eq!(c.last_seq, 3);
    assert_eq!(c.members, vec!["alice".to_owned(), "bob".to_owned()]);
    let hist = s.history(&conv, None, HistoryQuery::Latest { limit: 10 }).await.expect("history");
    assert_eq!(seqs(&hist), vec![1, 2, 3]);
    assert_eq!(body_text(&hist[0]), "m1");
    assert_eq!(hist[1].body, Body::Recalled { by: "alice".to_owned() });
    let bob_hist = s.history(&conv, Some("bob"), HistoryQuery::Latest { limit: 10 }).await.expect("history");
    assert_eq!(seqs(&bob_hist), vec![1, 2]);
    let bob = s.user_conv("bob", &conv).await.expect("user_conv").expect("row");
    assert_eq!(bob.read_seq, 1);
    assert!(bob.pinned && bob.active);
    let ch = s.changes("bob", &conv, 0).await.expect("changes");
    assert_eq!((ch.recalled.clone(), ch.deleted.clone()), (vec![2], vec![3]));

    let dup = s.append(direct("alice", "bob", Some("p1"), "again")).await.expect("append");
    assert!(dup.duplicate, "the dedupe index survives a restart");
    assert_eq!(dup.message.seq, 1);

    let g = s.group("gp").await.expect("group").expect("persisted");
    assert_eq!(g.member_count, 3);
    assert_eq!(s.members("gp").await.expect("members").len(), 3);
    let gc = s.conversation(&group_conv_id("gp")).await.expect("conversation").expect("persisted");
    assert_eq!(gc.last_seq, 2);
    assert_eq!(s.user_conv("carol", &group_conv_id("gp")).await.expect("user_conv").expect("row").read_seq, 1);
    let bob_list = s.list_conversations("bob", 0, 10).await.expect("list");
    assert_eq!(bob_list.len(), 2);
    let max_ver = bob_list.iter().map(|v| v.cursor()).max().unwrap_or(0).max(gc.ver);

    // Counters continue where they were.
    let next = send(&s, direct("bob", "alice", None, "after restart")).await;
    assert_eq!(next.seq, 4);
    assert!(next.ver > max_ver, "ver continues after a restart: {} <= {max_ver}", next.ver);
}

/// Runs every generic check on a fresh embedded store, plus the embedded-only checks.
/// The conformance checks every store passes, listed once: `checks!(m)` calls `m!(check, …)`.
/// Friend requests and their answers, friendship, remarks, blocks; refusals write nothing; each
/// change gives the rows it writes one new `ver`; `list_contacts` pages by `ver`.
pub async fn check_contacts(s: DynStore) {
    use confab_actors::error::ErrorCode;
    use confab_actors::model::{ContactOp, RequestDirection};
    use confab_actors::store::ContactChange;
    let change =
        |user: &str, peer: &str, op: ContactOp, ts: i64| ContactChange { user: user.into(), peer: peer.into(), op, ts };
    let refused = |r: Result<_, StoreError>, want: ErrorCode| match r {
        Err(StoreError::Refused(code, _)) => assert_eq!(code, want),
        other => panic!("expected {want:?}, got {other:?}"),
    };
    let request = |msg: &str| ContactOp::Request { message: msg.into() };

    // Nothing to answer yet: refused, nothing written.
    refused(s.change_contact(change("bob", "ann", ContactOp::Accept, TS)).await, ErrorCode::RequestNotPending);
    assert!(s.contact("bob", "ann").await.unwrap().is_none());
    assert!(s.list_contacts("bob", 0, 10).await.unwrap().is_empty());

    // ann asks bob: both rows, one version.
    let p = s.change_contact(change("ann", "bob", request("hi"), TS)).await.unwrap();
    assert!(p.changed);
    let theirs = p.peer.clone().expect("bob's row is written");
    assert_eq!(
        p.user.request.as_ref().map(|r| (r.direction, r.message.as_str())),
        Some((RequestDirection::Outgoing, "hi"))
    );
    assert_eq!(theirs.request.as_ref().map(|r| r.direction), Some(RequestDirection::Incoming));
    assert_eq!(p.user.ver, theirs.ver);
    assert_eq!(s.contact("bob", "ann").await.unwrap(), Some(theirs.clone()));
    let v1 = p.user.ver;

    // A stale answer the other way round, and a cancel by the wrong side: refused.
    refused(s.change_contact(change("ann", "bob", ContactOp::Accept, TS + 1)).await, ErrorCode::RequestNotPending);
    refused(s.change_contact(change("bob", "ann", ContactOp::Cancel, TS + 1)).await, ErrorCode::RequestNotPending);
    refused(s.change_contact(change("ann", "bob", ContactOp::Delete, TS + 1)).await, ErrorCode::NotFriends);
    assert_eq!(s.contact("bob", "ann").await.unwrap(), Some(theirs));

    // bob accepts: friends both ways; a duplicated accept is refused.
    let p = s.change_contact(change("bob", "ann", ContactOp::Accept, TS + 2)).await.unwrap();
    assert!(p.user.friend && p.user.request.is_none() && p.user.friend_since == Some(TS + 2));
    let ann = p.peer.expect("ann's row changes too");
    assert!(ann.friend && ann.request.is_none());
    assert!(p.user.ver > v1);
    refused(s.change_contact(change("bob", "ann", ContactOp::Accept, TS + 3)).await, ErrorCode::RequestNotPending);
    refused(s.change_contact(change("ann", "bob", request("again"), TS + 3)).await, ErrorCode::Conflict);

    // Remark and tags are the owner's alone.
    let upd = ContactOp::Update { remark: Some("Bobby".into()), tags: Some(vec!["work".into()]) };
    let p = s.change_contact(change("ann", "bob", upd, TS + 4)).await.unwrap();
    assert!(p.peer.is_none());
    assert_eq!((p.user.remark.as_deref(), p.user.tags.as_slice()), (Some("Bobby"), &["work".to_owned()][..]));
    assert_eq!(s.contact("bob", "ann").await.unwrap().unwrap().remark, None);

    // A block is the blocker's alone, independent of friendship; blocking twice writes nothing.
    let p = s.change_contact(change("bob", "ann", ContactOp::Block, TS + 5)).await.unwrap();
    assert!(p.user.blocked && p.user.friend && p.peer.is_none());
    let again = s.change_contact(change("bob", "ann", ContactOp::Block, TS + 6)).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.user.ver, p.user.ver);
    assert!(!s.contact("ann", "bob").await.unwrap().unwrap().blocked);

    // Delete: both rows, remark and tags gone. Then the blocked ann may not ask again.
    let p = s.change_contact(change("ann", "bob", ContactOp::Delete, TS + 7)).await.unwrap();
    assert!(!p.user.friend && p.user.remark.is_none() && p.user.tags.is_empty());
    assert!(!p.peer.expect("bob's row").friend);
    refused(s.change_contact(change("ann", "bob", request("please"), TS + 8)).await, ErrorCode::Blocked);
    s.change_contact(change("bob", "ann", ContactOp::Unblock, TS + 9)).await.unwrap();

    // Both ask: the second request accepts the first.
    s.change_contact(change("cat", "ann", request(""), TS + 10)).await.unwrap();
    let p = s.change_contact(change("ann", "cat", request(""), TS + 11)).await.unwrap();
    assert!(p.user.friend && p.peer.expect("cat's row").friend);
    // A rejected request leaves both rows without it; a cancelled one too.
    s.change_contact(change("dan", "ann", request("x"), TS + 12)).await.unwrap();
    let p = s.change_contact(change("ann", "dan", ContactOp::Reject, TS + 13)).await.unwrap();
    assert!(p.user.request.is_none() && p.peer.expect("dan's row").request.is_none());
    s.change_contact(change("ann", "eve", request("x"), TS + 14)).await.unwrap();
    s.change_contact(change("ann", "eve", ContactOp::Cancel, TS + 15)).await.unwrap();
    assert!(s.contact("eve", "ann").await.unwrap().unwrap().request.is_none());
    // Befriend (the import) is idempotent.
    let p = s.change_contact(change("fay", "gus", ContactOp::Befriend, TS + 16)).await.unwrap();
    assert!(p.changed && p.user.friend && p.peer.unwrap().friend);
    assert!(!s.change_contact(change("gus", "fay", ContactOp::Befriend, TS + 17)).await.unwrap().changed);

    // ann's rows by version: bob, cat, dan, eve, each once, at its last change; paging by `ver`.
    let all = s.list_contacts("ann", 0, 100).await.unwrap();
    let peers: Vec<&str> = all.iter().map(|c| c.user_id.as_str()).collect();
    assert_eq!(peers, ["bob", "cat", "dan", "eve"]);
    assert!(all.windows(2).all(|w| w[0].ver < w[1].ver));
    let first = s.list_contacts("ann", 0, 2).await.unwrap();
    assert_eq!(first, all[..2]);
    let rest = s.list_contacts("ann", first[1].ver, 100).await.unwrap();
    assert_eq!(rest, all[2..]);
    assert!(s.list_contacts("ann", all[3].ver, 100).await.unwrap().is_empty());
}

/// Mutes are stored on members and the group; bans are recorded with a removal, refuse adds
/// (writing nothing) and end with an unban.
pub async fn check_mutes_and_bans(s: DynStore) {
    use confab_actors::error::ErrorCode;
    use confab_actors::model::GroupBan;
    use confab_actors::store::MuteChange;
    s.create_group(new_group("g1", "own", &["bob", "carol"])).await.unwrap();
    let mute = |mutes: Vec<(&str, Option<i64>)>, all: Option<bool>, ts: i64| MuteChange {
        group_id: "g1".into(),
        mutes: mutes.into_iter().map(|(u, t)| (u.to_owned(), t)).collect(),
        all,
        ts,
        system_body: system("members_muted"),
    };
    let (g, m) = s.mute_members(mute(vec![("bob", Some(TS + 60_000))], Some(true), TS + 1)).await.unwrap();
    assert!(g.mute_all);
    assert_eq!(m.seq, 2);
    assert!(s.group("g1").await.unwrap().unwrap().mute_all);
    let members = s.members("g1").await.unwrap();
    let muted = |who: &str| members.iter().find(|x| x.user_id == who).unwrap().muted_until;
    assert_eq!((muted("bob"), muted("carol")), (Some(TS + 60_000), None));
    match s.mute_members(mute(vec![("zed", Some(TS + 5))], None, TS + 2)).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("muting a non-member: {other:?}"),
    }
    let (g, _) = s.mute_members(mute(vec![("bob", None)], Some(false), TS + 3)).await.unwrap();
    assert!(!g.mute_all);
    assert!(s.members("g1").await.unwrap().iter().all(|x| x.muted_until.is_none()));

    // Ban bob (a member) and dave (not one): bob is removed; neither can be added back.
    let mut ban = change("g1", &[], &["bob"], TS + 4);
    ban.ban = ["bob", "dave"].iter().map(|u| GroupBan { user_id: (*u).into(), by: "own".into(), ts: TS + 4 }).collect();
    s.change_members(ban).await.unwrap();
    let mut banned: Vec<String> = s.bans("g1").await.unwrap().into_iter().map(|b| b.user_id).collect();
    banned.sort();
    assert_eq!(banned, ["bob", "dave"]);
    assert_eq!(s.group("g1").await.unwrap().unwrap().member_count, 2);
    let last = s.conversation("g_g1").await.unwrap().unwrap().last_seq;
    match s.change_members(change("g1", &[("dave", Role::Member), ("erin", Role::Member)], &[], TS + 5)).await {
        Err(StoreError::Refused(ErrorCode::Banned, _)) => {}
        other => panic!("adding a banned user: {other:?}"),
    }
    assert_eq!(s.conversation("g_g1").await.unwrap().unwrap().last_seq, last, "a refused add writes nothing");
    assert_eq!(s.group("g1").await.unwrap().unwrap().member_count, 2);
    let mut unban = change("g1", &[], &[], TS + 6);
    unban.unban = vec!["bob".into()];
    s.change_members(unban).await.unwrap();
    s.change_members(change("g1", &[("bob", Role::Member)], &[], TS + 7)).await.unwrap();
    assert_eq!(s.bans("g1").await.unwrap().len(), 1);
    assert!(s.bans("nope").await.unwrap().is_empty());
}

/// Join requests: one per user (a new one replaces the old), refused for banned users and
/// missing groups, removed by a rejection or by adding the user.
pub async fn check_join_requests(s: DynStore) {
    use confab_actors::error::ErrorCode;
    use confab_actors::model::{GroupBan, JoinRequest, RequestKind};
    let req = |user: &str, by: &str, message: &str| JoinRequest {
        user_id: user.into(),
        kind: if user == by { RequestKind::Application } else { RequestKind::Invitation },
        by: by.into(),
        message: message.into(),
        ts: TS,
    };
    s.create_group(new_group("g1", "own", &["bob"])).await.unwrap();
    match s.put_join_requests("nope", vec![req("a", "a", "")]).await {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("a request to no group: {other:?}"),
    }
    s.put_join_requests("g1", vec![req("a", "a", "first"), req("c", "bob", "")]).await.unwrap();
    s.put_join_requests("g1", vec![req("a", "a", "second")]).await.unwrap();
    let mut all = s.join_requests("g1").await.unwrap();
    all.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(all, [req("a", "a", "second"), req("c", "bob", "")]);
    assert_eq!(s.remove_join_request("g1", "a").await.unwrap(), Some(req("a", "a", "second")));
    assert_eq!(s.remove_join_request("g1", "a").await.unwrap(), None);
    s.change_members(change("g1", &[("c", Role::Member)], &[], TS + 1)).await.unwrap();
    assert!(s.join_requests("g1").await.unwrap().is_empty(), "adding c settled c's request");
    let mut ban = change("g1", &[], &[], TS + 2);
    ban.ban = vec![GroupBan { user_id: "z".into(), by: "own".into(), ts: TS + 2 }];
    s.change_members(ban).await.unwrap();
    match s.put_join_requests("g1", vec![req("y", "y", ""), req("z", "z", "")]).await {
        Err(StoreError::Refused(ErrorCode::Banned, _)) => {}
        other => panic!("a banned user's request: {other:?}"),
    }
    assert!(s.join_requests("g1").await.unwrap().is_empty(), "a refused batch writes nothing");
}

/// `share_group`: only active members of the same group.
pub async fn check_share_group(s: DynStore) {
    assert!(!s.share_group("a", "b").await.unwrap());
    s.create_group(new_group("g1", "a", &["b"])).await.unwrap();
    s.create_group(new_group("g2", "c", &["d"])).await.unwrap();
    assert!(s.share_group("a", "b").await.unwrap());
    assert!(s.share_group("b", "a").await.unwrap());
    assert!(!s.share_group("a", "c").await.unwrap());
    s.change_members(change("g1", &[], &["b"], TS + 1)).await.unwrap();
    assert!(!s.share_group("a", "b").await.unwrap(), "b left");
}

/// Push registrations: one token per device, a token on one device, a conditional removal;
/// push jobs: a burst folds into one job, planning again adds nothing, the due order, a finish
/// that lost the race to a newer message leaves the job pending.
pub async fn check_push_tokens_and_jobs(s: DynStore) {
    use confab_actors::push::{Finish, Planned, PushRegistration};
    let reg = |user: &str, device: &str, token: &str| PushRegistration {
        user: user.into(),
        device: device.into(),
        provider: "fcm".into(),
        token: token.into(),
        updated_at: 1,
    };
    let v0 = s.push_tokens_version().await.unwrap();
    s.set_push_token(&reg("pa", "phone", "t1")).await.unwrap();
    let v1 = s.push_tokens_version().await.unwrap();
    assert_ne!(v0, v1, "a registration moves the version");
    assert!(!s.remove_push_token("pa", "phone", Some("other")).await.unwrap());
    assert_eq!(s.push_tokens_version().await.unwrap(), v1, "nothing removed, nothing moved");
    s.set_push_token(&reg("pa", "tablet", "t2")).await.unwrap();
    s.set_push_token(&reg("pb", "phone", "t3")).await.unwrap();
    // A new token replaces the device's old one.
    s.set_push_token(&reg("pa", "phone", "t1b")).await.unwrap();
    let tokens = |v: Vec<PushRegistration>| {
        v.into_iter().map(|r| format!("{}/{}={}", r.user, r.device, r.token)).collect::<Vec<_>>()
    };
    assert_eq!(tokens(s.push_tokens(&["pa".into()]).await.unwrap()), ["pa/phone=t1b", "pa/tablet=t2"]);
    // The phone changed hands: its token moves to the new user's device.
    s.set_push_token(&reg("pc", "phone", "t3")).await.unwrap();
    assert!(s.push_tokens(&["pb".into()]).await.unwrap().is_empty());
    assert_eq!(tokens(s.push_tokens(&["pc".into(), "pa".into()]).await.unwrap()).len(), 3);
    // Removal only while the token is the one named.
    assert!(!s.remove_push_token("pa", "tablet", Some("stale")).await.unwrap());
    assert!(s.remove_push_token("pa", "tablet", Some("t2")).await.unwrap());
    assert!(!s.remove_push_token("pa", "tablet", None).await.unwrap());
    let v2 = s.push_tokens_version().await.unwrap();
    assert!(s.remove_push_token("pa", "phone", None).await.unwrap());
    assert_ne!(s.push_tokens_version().await.unwrap(), v2, "a removal moves the version");
    // The token is free again for another device.
    s.set_push_token(&reg("pd", "web", "t1b")).await.unwrap();
    assert_eq!(tokens(s.push_tokens(&["pd".into()]).await.unwrap()), ["pd/web=t1b"]);

    let planned = |user: &str, conv: &str, seq: u64, event: u64, due_at: i64| Planned {
        user: user.into(),
        device: "phone".into(),
        conv_id: conv.into(),
        seq,
        sender: "x".into(),
        count: 1,
        mention_seq: if seq == 2 { 2 } else { 0 },
        event,
        ts: 100,
        due_at,
    };
    let done = Finish::Done { requeue_at: 8000 };
    let burst = [planned("pa", "d_1", 1, 1, 500), planned("pa", "d_1", 2, 2, 600), planned("pb", "d_2", 1, 3, 400)];
    s.plan_pushes(&burst, 3).await.unwrap();
    // Planned again (a crash before the cursor moved): nothing changes.
    s.plan_pushes(&burst, 3).await.unwrap();
    assert!(s.due_pushes(0, 10).await.unwrap().is_empty(), "nothing is due before its time");
    let due = s.due_pushes(1000, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|j| (j.user.as_str(), j.seq, j.count, j.due_at)).collect::<Vec<_>>(),
        [("pb", 1, 1, 400), ("pa", 2, 2, 500)]
    );
    assert_eq!(due[1].mention_seq, 2);
    assert_eq!(s.due_pushes(1000, 1).await.unwrap().len(), 1, "the limit holds");
    // Sent while a newer message was folded in: that one stays, due in a window of its own.
    let read = due[1].clone();
    s.plan_pushes(&[planned("pa", "d_1", 3, 4, 700)], 4).await.unwrap();
    assert!(s.finish_push(&read, done, 0).await.unwrap());
    assert_eq!(s.due_pushes(1000, 10).await.unwrap().len(), 1, "only pb is due now");
    let pa = s.due_pushes(8000, 10).await.unwrap().into_iter().find(|j| j.user == "pa").unwrap();
    assert_eq!((pa.seq, pa.count, pa.mention_seq, pa.due_at), (3, 1, 0, 8000));
    // A retry moves it later; done (its event after the cursor given) keeps it as done.
    assert!(s.finish_push(&pa, Finish::Retry { next_at: 9000, attempts: 1 }, 0).await.unwrap());
    assert!(s.due_pushes(8000, 10).await.unwrap().iter().all(|j| j.user != "pa"));
    let pa = s.due_pushes(9000, 10).await.unwrap().into_iter().find(|j| j.user == "pa").unwrap();
    assert_eq!(pa.attempts, 1);
    assert!(s.finish_push(&pa, done, 0).await.unwrap());
    assert!(!s.finish_push(&pa, done, 0).await.unwrap(), "finished once");
    // Replayed after that: still nothing (the done job remembers its last event).
    s.plan_pushes(&[planned("pa", "d_1", 3, 4, 700)], 4).await.unwrap();
    let pb = s.due_pushes(9000, 10).await.unwrap();
    assert_eq!(pb.iter().map(|j| j.user.as_str()).collect::<Vec<_>>(), ["pb"]);
    // Done with its event behind the cursor: forgotten.
    assert!(s.finish_push(&pb[0], done, 4).await.unwrap());
    assert!(s.due_pushes(i64::MAX, 10).await.unwrap().is_empty());
    // A done or forgotten job starts again from the next message, due at its own time.
    s.plan_pushes(&[planned("pa", "d_1", 4, 5, 9500), planned("pb", "d_2", 2, 6, 9600)], 6).await.unwrap();
    let next = s.due_pushes(i64::MAX, 10).await.unwrap();
    assert_eq!(
        next.iter().map(|j| (j.user.as_str(), j.seq, j.count, j.due_at)).collect::<Vec<_>>(),
        [("pa", 4, 1, 9500), ("pb", 2, 1, 9600)]
    );
}

macro_rules! checks {
    ($apply:ident) => {
        $apply!(
            check_concurrent_appends_are_contiguous,
            check_dedupe,
            check_direct_auto_creation,
            check_not_found,
            check_history_paging,
            check_delete_for_user_and_changes,
            check_clear_for_user,
            check_stats,
            check_name_search,
            check_recall_and_changes,
            check_recall_scrubs_quotes,
            check_former_members_see_up_to_their_leaving,
            check_mark_read,
            check_set_flags,
            check_list_conversations_paging,
            check_create_group,
            check_change_members,
            check_ver_increases,
            check_users,
            check_group_update_roles_dismiss,
            check_system_dedupe,
            check_contacts,
            check_share_group,
            check_mutes_and_bans,
            check_join_requests,
            check_push_tokens_and_jobs,
        );
    };
}

mod embedded {
    use std::sync::atomic::Ordering::Relaxed;

    use confab::store::EmbeddedStore;
    use confab_actors::metrics::Metrics;

    use super::*;

    fn open(dir: &std::path::Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, Arc::new(Metrics::default())).expect("open the embedded store")
    }

    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let dir = tempfile::tempdir().expect("tempdir");
                let store: DynStore = Arc::new(open(dir.path()));
                super::$check(store).await;
            }
        )*};
    }

    checks!(conformance);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_outbox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        super::check_outbox(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_outbox_trim() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::check_outbox_trim(Arc::new(open(dir.path()))).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn persistence_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("data");
        let store: DynStore = Arc::new(open(&path));
        store.ping().await.expect("ping");
        check_persisted_write(store.clone()).await;
        // While it is open, the file is locked.
        assert!(EmbeddedStore::open(&path, Arc::new(Metrics::default())).is_err(), "the file is held while open");
        drop(store);
        assert!(path.join("confab.redb").is_file());
        // Dropping joined the writer and released the file.
        let reopened: DynStore = Arc::new(open(&path));
        check_persisted_read(reopened.clone()).await;
        drop(reopened);
        let again: DynStore = Arc::new(open(&path));
        let conv = direct_conv_id("alice", "bob");
        assert_eq!(again.conversation(&conv).await.expect("conversation").expect("exists").last_seq, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_stops_writes_but_not_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(open(dir.path()));
        check_close_stops_writes_but_not_reads(store.clone(), async || store.close().await).await;
    }

    /// Appends submitted one after another (without waiting for each answer) get seqs in
    /// submission order: the writer runs operations in arrival order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_appends_keep_submission_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: DynStore = Arc::new(open(dir.path()));
        // join_all polls small sets in order, so the sends reach the queue in order.
        let futs = (0..20).map(|i| store.append(direct("alice", "bob", None, &format!("m{i}"))));
        let results = futures_util::future::join_all(futs).await;
        for (i, r) in results.into_iter().enumerate() {
            let m = r.expect("append").message;
            assert_eq!(m.seq, i as u64 + 1);
            assert_eq!(body_text(&m), format!("m{i}"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_group_committed_and_measured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::default());
        let store: DynStore = Arc::new(EmbeddedStore::open(dir.path(), metrics.clone()).expect("open"));
        let mut handles = Vec::new();
        for i in 0..200 {
            let s = store.clone();
            handles.push(tokio::spawn(async move { s.append(direct("alice", "bob", None, &format!("m{i}"))).await }));
        }
        for h in handles {
            h.await.expect("join").expect("append");
        }
        let err = store.append(to_group("missing", "alice", "x")).await.expect_err("no group");
        assert!(matches!(err, StoreError::NotFound(_)));
        // Reads do not go through the writer.
        store.history(&direct_conv_id("alice", "bob"), None, HistoryQuery::Latest { limit: 5 }).await.expect("history");

        let commits = metrics.store_commits.load(Relaxed);
        assert_eq!(metrics.store_batch_ops.load(Relaxed), 201, "every write op is counted once");
        assert!((1..=201).contains(&commits), "commits: {commits}");
        assert_eq!(metrics.store_queue_depth.load(Relaxed), 0);
        let text = metrics.render();
        assert!(text.contains("confab_store_write_seconds_count 201"), "{text}");
        eprintln!("200 concurrent appends took {commits} commits");
    }
}

/// Runs every generic check on a `MongoStore` over a fresh database (skipped without MongoDB).
mod mongodb {
    use crate::store_mongo::fresh;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_outbox() {
        let Some(store) = fresh().await else { return };
        super::check_outbox(store.clone(), store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_outbox_trim() {
        let Some(store) = fresh().await else { return };
        super::check_outbox_trim(store).await;
    }

    macro_rules! conformance {
        ($($check:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some(store) = fresh().await else { return };
                super::$check(store).await;
            }
        )*};
    }

    checks!(conformance);
}
