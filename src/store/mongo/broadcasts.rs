//! `broadcasts` and `files`.
//!
//! `broadcasts`: `{_id, state, created_at, data}`, `data` the broadcast as JSON text (it holds a
//! message body, whose app-defined keys may hold `$` or `.`). Single-document writes with write
//! concern majority, outside the writer.

use confab_actors::error::StoreError;
use confab_actors::model::{Broadcast, BroadcastState};
use confab_actors::store::StoreResult;
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use super::conn::{is_duplicate_key, Conn};
use super::docs::BROADCASTS;
use super::reads::{find_all, find_one};

#[derive(Debug, Serialize, Deserialize)]
struct BroadcastDoc {
    #[serde(rename = "_id")]
    id: String,
    state: String,
    created_at: i64,
    data: String,
}

fn state_name(s: BroadcastState) -> &'static str {
    match s {
        BroadcastState::Running => "running",
        BroadcastState::Done => "done",
        BroadcastState::Cancelled => "cancelled",
    }
}

fn to_doc(b: &Broadcast) -> StoreResult<BroadcastDoc> {
    let data =
        serde_json::to_string(b).map_err(|e| StoreError::Unavailable(format!("cannot encode a broadcast: {e}")))?;
    Ok(BroadcastDoc { id: b.id.clone(), state: state_name(b.state).into(), created_at: b.created_at, data })
}

fn from_doc(d: BroadcastDoc) -> StoreResult<Broadcast> {
    serde_json::from_str(&d.data).map_err(|e| StoreError::Unavailable(format!("corrupt broadcast {}: {e}", d.id)))
}

pub(crate) async fn create(c: &Conn, b: &Broadcast) -> StoreResult<Broadcast> {
    match c.coll::<BroadcastDoc>(BROADCASTS).insert_one(to_doc(b)?).await {
        Ok(_) => Ok(b.clone()),
        Err(e) if is_duplicate_key(&e) => {
            get(c, &b.id).await?.ok_or_else(|| StoreError::Unavailable(format!("broadcast {} vanished", b.id)))
        }
        Err(e) => Err(c.fail("storing a broadcast", &e)),
    }
}

pub(crate) async fn get(c: &Conn, id: &str) -> StoreResult<Option<Broadcast>> {
    let d: Option<BroadcastDoc> = find_one(c, BROADCASTS, doc! { "_id": id }).await?;
    d.map(from_doc).transpose()
}

pub(crate) async fn save(c: &Conn, b: &Broadcast) -> StoreResult<bool> {
    let d = to_doc(b)?;
    let set = doc! { "state": &d.state, "data": &d.data };
    let r = c
        .coll::<Document>(BROADCASTS)
        .update_one(doc! { "_id": &b.id, "state": "running" }, doc! { "$set": set })
        .await
        .map_err(|e| c.fail("saving a broadcast", &e))?;
    Ok(r.matched_count == 1)
}

pub(crate) async fn cancel(c: &Conn, id: &str, ts: i64) -> StoreResult<Option<Broadcast>> {
    let Some(mut b) = get(c, id).await? else { return Ok(None) };
    if b.state != BroadcastState::Running {
        return Ok(Some(b));
    }
    b.state = BroadcastState::Cancelled;
    b.updated_at = ts;
    b.finished_at = Some(ts);
    // Only a running one: when it finished meanwhile, the stored end stands.
    if save(c, &b).await? {
        Ok(Some(b))
    } else {
        get(c, id).await
    }
}

pub(crate) async fn running(c: &Conn) -> StoreResult<Vec<Broadcast>> {
    let docs: Vec<BroadcastDoc> =
        find_all(c, BROADCASTS, doc! { "state": "running" }, Some(doc! { "created_at": 1, "_id": 1 })).await?;
    docs.into_iter().map(from_doc).collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct FileDoc {
    #[serde(rename = "_id")]
    id: String,
    owner: String,
    data: String,
}

/// Stores a file's record (an upsert by id: a retried write stores the same).
pub(crate) async fn put_file(c: &Conn, f: &confab_actors::model::FileMeta) -> StoreResult<()> {
    let data = serde_json::to_string(f).map_err(|e| StoreError::Unavailable(format!("cannot encode a file: {e}")))?;
    c.coll::<Document>(super::docs::FILES)
        .update_one(doc! { "_id": &f.id }, doc! { "$set": { "owner": &f.owner, "data": data } })
        .upsert(true)
        .await
        .map_err(|e| c.fail("storing a file", &e))?;
    Ok(())
}

pub(crate) async fn file(c: &Conn, id: &str) -> StoreResult<Option<confab_actors::model::FileMeta>> {
    let d: Option<FileDoc> = find_one(c, super::docs::FILES, doc! { "_id": id }).await?;
    d.map(|d| serde_json::from_str(&d.data).map_err(|e| StoreError::Unavailable(format!("corrupt file {}: {e}", d.id))))
        .transpose()
}

pub(crate) async fn delete_file(c: &Conn, id: &str) -> StoreResult<bool> {
    let r = c
        .coll::<Document>(super::docs::FILES)
        .delete_one(doc! { "_id": id })
        .await
        .map_err(|e| c.fail("removing a file", &e))?;
    Ok(r.deleted_count > 0)
}
