//! Reads. Each runs outside any transaction with read concern "majority" (only what is
//! acknowledged, and so can never be rolled back, is ever shown) and never waits for the writer.

use std::collections::{HashMap, HashSet};

use confab_actors::model::{Changes, Conversation, ConversationView, Group, Member, Message, UserConvState};
use confab_actors::store::{list_page, HistoryQuery, StoreResult};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::{ClientSession, Cursor};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::conn::Conn;
use super::docs::{
    q, u, ConvDoc, GroupDoc, MemberDoc, MessageDoc, RowDoc, CONVERSATIONS, DELETIONS, GROUPS, MEMBERS, MESSAGES,
    USER_CONVS,
};
use super::nodes;

fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) async fn collect<T: DeserializeOwned + Send + Sync>(c: &Conn, cursor: Cursor<T>) -> StoreResult<Vec<T>> {
    cursor.try_collect().await.map_err(|e| c.fail("reading a cursor", &e))
}

/// The documents of `coll` that match `filter`, in `sort` order if given.
pub(crate) async fn find_all<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
    sort: Option<Document>,
) -> StoreResult<Vec<T>> {
    find(c, coll, filter, None, sort, None).await
}

/// At most `limit` documents of `coll` that match `filter`, in `sort` order.
pub(crate) async fn find_limit<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
    sort: Document,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let found = c
        .coll::<T>(coll)
        .find(filter)
        .sort(sort)
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .await
        .map_err(|e| c.fail(&format!("find in {coll}"), &e))?;
    collect(c, found).await
}

/// The documents of `coll` that match `filter`, in `sort` order if given, in `session`.
pub(crate) async fn find_in<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
    sort: Option<Document>,
    session: &mut ClientSession,
) -> StoreResult<Vec<T>> {
    find(c, coll, filter, None, sort, Some(session)).await
}

/// The fields `projection` of the documents of `coll` that match `filter`, in `sort` order if
/// given, in `session` if given.
async fn find_fields<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
    projection: Document,
    sort: Option<Document>,
    session: Option<&mut ClientSession>,
) -> StoreResult<Vec<T>> {
    find(c, coll, filter, Some(projection), sort, session).await
}

/// The documents of `coll` that match `filter`, only the fields of `projection` and in `sort`
/// order if given, in `session` if given (a causally consistent one: see `nodes::Watermarked`).
async fn find<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
    projection: Option<Document>,
    sort: Option<Document>,
    session: Option<&mut ClientSession>,
) -> StoreResult<Vec<T>> {
    let collection = c.coll::<T>(coll);
    let mut find = collection.find(filter);
    if let Some(projection) = projection {
        find = find.projection(projection);
    }
    if let Some(sort) = sort {
        find = find.sort(sort);
    }
    let failed = |e| c.fail(&format!("find in {coll}"), &e);
    match session {
        None => collect(c, find.await.map_err(failed)?).await,
        Some(s) => {
            let mut cursor = find.session(&mut *s).await.map_err(failed)?;
            cursor.stream(s).try_collect().await.map_err(|e| c.fail("reading a cursor", &e))
        }
    }
}

pub(crate) async fn find_one<T: DeserializeOwned + Send + Sync>(
    c: &Conn,
    coll: &str,
    filter: Document,
) -> StoreResult<Option<T>> {
    c.coll::<T>(coll).find_one(filter).await.map_err(|e| c.fail(&format!("find in {coll}"), &e))
}

pub(crate) async fn message(c: &Conn, conv_id: &str, seq: u64) -> StoreResult<Option<Message>> {
    let d: Option<MessageDoc> = find_one(c, MESSAGES, doc! { "conv_id": conv_id, "seq": q(seq) }).await?;
    d.map(MessageDoc::into_message).transpose()
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: i64,
}

/// The seqs among `seqs` that `user` deleted for themselves in the conversation.
async fn deleted_among(c: &Conn, user: &str, conv_id: &str, seqs: &[i64]) -> StoreResult<HashSet<i64>> {
    let filter = doc! { "user": user, "conv_id": conv_id, "seq": { "$in": seqs } };
    let found: Vec<SeqOnly> = find_fields(c, DELETIONS, filter, doc! { "_id": 0, "seq": 1 }, None, None).await?;
    Ok(found.into_iter().map(|d| d.seq).collect())
}

pub(crate) async fn history(
    c: &Conn,
    conv_id: &str,
    for_user: Option<&str>,
    hq: HistoryQuery,
) -> StoreResult<Vec<Message>> {
    // MongoDB reads `limit 0` as "no limit".
    let (filter, ascending, limit) = match hq {
        HistoryQuery::Latest { limit } => (doc! { "conv_id": conv_id }, false, limit),
        HistoryQuery::Before { seq, limit } => (doc! { "conv_id": conv_id, "seq": { "$lt": q(seq) } }, false, limit),
        HistoryQuery::After { seq, limit } => (doc! { "conv_id": conv_id, "seq": { "$gt": q(seq) } }, true, limit),
    };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let cursor = c
        .coll::<MessageDoc>(MESSAGES)
        .find(filter)
        .sort(doc! { "seq": if ascending { 1 } else { -1 } })
        .limit(limit_of(limit))
        .await
        .map_err(|e| c.fail("find in messages", &e))?;
    let mut docs = collect(c, cursor).await?;
    if !ascending {
        docs.reverse();
    }
    if let Some(user) = for_user {
        if !docs.is_empty() {
            let seqs: Vec<i64> = docs.iter().map(|d| d.seq).collect();
            let deleted = deleted_among(c, user, conv_id, &seqs).await?;
            docs.retain(|d| !deleted.contains(&d.seq));
        }
    }
    docs.into_iter().map(MessageDoc::into_message).collect()
}

pub(crate) async fn conversation(c: &Conn, conv_id: &str) -> StoreResult<Option<Conversation>> {
    let d: Option<ConvDoc> = find_one(c, CONVERSATIONS, doc! { "_id": conv_id }).await?;
    d.map(ConvDoc::into_conv).transpose()
}

pub(crate) async fn user_conv(c: &Conn, user: &str, conv_id: &str) -> StoreResult<Option<UserConvState>> {
    let d: Option<RowDoc> = find_one(c, USER_CONVS, doc! { "user": user, "conv_id": conv_id }).await?;
    d.map(|r| r.state()).transpose()
}

pub(crate) async fn conversation_view(c: &Conn, user: &str, conv_id: &str) -> StoreResult<Option<ConversationView>> {
    let Some(state) = user_conv(c, user, conv_id).await? else {
        return Ok(None);
    };
    let Some(conv) = conversation(c, conv_id).await? else {
        return Ok(None);
    };
    let mut view = ConversationView::unloaded(conv, state);
    if let Some(seq) = view.last_message_seq() {
        view.last_message = message(c, conv_id, seq).await?;
    }
    Ok(Some(view))
}

/// The user's rows whose conversation or row changed after `since`, each with its conversation,
/// and the newest version among them.
async fn changed_conversations(
    c: &Conn,
    s: &mut ClientSession,
    user: &str,
    since: u64,
) -> StoreResult<(Vec<(Conversation, UserConvState)>, Option<u64>)> {
    let rows: Vec<RowDoc> = find(c, USER_CONVS, doc! { "user": user }, None, None, Some(&mut *s)).await?;
    if rows.is_empty() {
        return Ok((Vec::new(), None));
    }
    let all: Vec<&str> = rows.iter().map(|r| r.conv_id.as_str()).collect();
    let changed: Vec<&str> = rows.iter().filter(|r| r.ver > q(since)).map(|r| r.conv_id.as_str()).collect();
    let filter = doc! {
        "_id": { "$in": &all },
        "$or": [ { "ver": { "$gt": q(since) } }, { "_id": { "$in": &changed } } ],
    };
    let convs: Vec<ConvDoc> = find(c, CONVERSATIONS, filter, None, None, Some(s)).await?;
    let mut convs: HashMap<String, Conversation> =
        convs.into_iter().map(|d| d.into_conv().map(|cv| (cv.conv_id.clone(), cv))).collect::<StoreResult<_>>()?;
    let mut found = Vec::with_capacity(convs.len());
    for row in &rows {
        let Some(conv) = convs.remove(&row.conv_id) else { continue };
        found.push((conv, row.state()?));
    }
    let newest = found.iter().map(|(conv, state)| conv.ver.max(state.ver)).max().filter(|&v| v > since);
    Ok((found, newest))
}

/// See [`Store::unread`](confab_actors::store::Store::unread): the user's active rows, then their
/// conversations' `last_seq`.
pub(crate) async fn unread(c: &Conn, user: &str) -> StoreResult<(u64, u64)> {
    let rows: Vec<RowDoc> =
        find(c, USER_CONVS, doc! { "user": user, "active": { "$in": [true, 1] } }, None, None, None).await?;
    if rows.is_empty() {
        return Ok((0, 0));
    }
    let ids: Vec<&str> = rows.iter().map(|r| r.conv_id.as_str()).collect();
    let convs: Vec<ConvDoc> = find(c, CONVERSATIONS, doc! { "_id": { "$in": &ids } }, None, None, None).await?;
    let mut convs: HashMap<String, Conversation> =
        convs.into_iter().map(|d| d.into_conv().map(|cv| (cv.conv_id.clone(), cv))).collect::<StoreResult<_>>()?;
    let (mut total, mut conversations) = (0u64, 0u64);
    for row in &rows {
        let Some(conv) = convs.remove(&row.conv_id) else { continue };
        let n = ConversationView { conv, state: row.state()?, last_message: None }.unread();
        total += n;
        conversations += u64::from(n > 0);
    }
    Ok((total, conversations))
}

/// Reads all of the user's rows (index `user_conv`), then only the conversations that changed
/// after `since` or whose row did, picks the page ([`list_page`]) and loads the last messages of
/// the page in one query.
pub(crate) async fn list_conversations(
    c: &Conn,
    user: &str,
    since: u64,
    limit: usize,
) -> StoreResult<Vec<ConversationView>> {
    // Only up to the watermark: a version above it may still be committed below what is found.
    let mut w = nodes::Watermarked::begin(c).await?;
    let (mut found, newest) = changed_conversations(c, w.session(), user, since).await?;
    if w.catch_up(c, newest).await? {
        found = changed_conversations(c, w.session(), user, since).await?.0;
    }
    let mut page = list_page(found, since, w.until(), limit);

    let wanted: Vec<Document> = page
        .iter()
        .filter_map(|view| view.last_message_seq().map(|seq| doc! { "conv_id": &view.conv.conv_id, "seq": q(seq) }))
        .collect();
    if !wanted.is_empty() {
        let docs: Vec<MessageDoc> = find_all(c, MESSAGES, doc! { "$or": wanted }, None).await?;
        let mut last: HashMap<String, Message> = HashMap::new();
        for d in docs {
            let m = d.into_message()?;
            last.insert(m.conv_id.clone(), m);
        }
        for view in &mut page {
            view.last_message = last.remove(&view.conv.conv_id).filter(|m| Some(m.seq) == view.last_message_seq());
        }
    }
    Ok(page)
}

#[derive(Deserialize)]
struct Recalled {
    seq: i64,
    recall_ver: i64,
}

#[derive(Deserialize)]
struct Deleted {
    seq: i64,
    ver: i64,
}

/// Recalls in the conversation and the user's deletions after `since`, as `(recall?, seq, ver)`,
/// and the newest version among them.
async fn changes_after(
    c: &Conn,
    s: &mut ClientSession,
    user: &str,
    conv_id: &str,
    since: u64,
) -> StoreResult<(Vec<(bool, u64, u64)>, Option<u64>)> {
    let filter = doc! { "conv_id": conv_id, "recall_ver": { "$gt": q(since) } };
    let fields = doc! { "_id": 0, "seq": 1, "recall_ver": 1 };
    let sort = Some(doc! { "recall_ver": 1 });
    let recalled: Vec<Recalled> = find_fields(c, MESSAGES, filter, fields, sort, Some(&mut *s)).await?;
    let filter = doc! { "user": user, "conv_id": conv_id, "ver": { "$gt": q(since) } };
    let fields = doc! { "_id": 0, "seq": 1, "ver": 1 };
    let deleted: Vec<Deleted> = find_fields(c, DELETIONS, filter, fields, Some(doc! { "seq": 1 }), Some(s)).await?;
    let mut found: Vec<(bool, u64, u64)> = Vec::with_capacity(recalled.len() + deleted.len());
    for r in recalled {
        found.push((true, u(r.seq)?, u(r.recall_ver)?));
    }
    for d in deleted {
        found.push((false, u(d.seq)?, u(d.ver)?));
    }
    let newest = found.iter().map(|f| f.2).max();
    Ok((found, newest))
}

pub(crate) async fn changes(c: &Conn, user: &str, conv_id: &str, since: u64) -> StoreResult<Changes> {
    // Only up to the watermark, like the conversation list.
    let mut w = nodes::Watermarked::begin(c).await?;
    let (mut found, newest) = changes_after(c, w.session(), user, conv_id, since).await?;
    if w.catch_up(c, newest).await? {
        found = changes_after(c, w.session(), user, conv_id, since).await?.0;
    }
    let until = w.until();
    let mut out = Changes { recalled: Vec::new(), deleted: Vec::new(), ver: since };
    for (recall, seq, ver) in found.into_iter().filter(|f| f.2 <= until) {
        if recall {
            out.recalled.push(seq)
        } else {
            out.deleted.push(seq)
        }
        out.ver = out.ver.max(ver);
    }
    Ok(out)
}

pub(crate) async fn read_cursors(c: &Conn, conv_id: &str) -> StoreResult<Vec<(String, u64)>> {
    let rows: Vec<RowDoc> = find_all(c, USER_CONVS, doc! { "conv_id": conv_id, "active": true }, None).await?;
    rows.into_iter().map(|r| Ok((r.user, u(r.read_seq)?))).collect()
}

pub(crate) async fn group(c: &Conn, group_id: &str) -> StoreResult<Option<Group>> {
    let d: Option<GroupDoc> = find_one(c, GROUPS, doc! { "_id": group_id }).await?;
    d.map(GroupDoc::into_group).transpose()
}

pub(crate) async fn members(c: &Conn, group_id: &str) -> StoreResult<Vec<Member>> {
    let docs: Vec<MemberDoc> = find_all(c, MEMBERS, doc! { "group_id": group_id }, None).await?;
    Ok(docs.into_iter().map(MemberDoc::into_member).collect())
}
