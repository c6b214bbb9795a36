//! The webhook outbox on MongoDB (`docs/storage.md`, collections `outbox`, `webhook_deliveries`,
//! `webhook_meta`).
//!
//! Change events are inserted by the writer in the batch's transaction ([`record`]): one
//! `findAndModify` on the `meta` counter `outbox` for their ids and one `insert`, only when
//! webhooks are on. The counter document serialises the transactions that take ids, so ids are
//! visible in id order. Presence events, which change nothing else, are queued to the writer as
//! operations of their own (`Op::PushEvent`) and take their ids the same way. Delivery bookkeeping is written by the one dispatcher holding the lease,
//! outside transactions (each write is idempotent), and so is the retention ([`trim`]).

use std::sync::atomic::Ordering::Relaxed;

use confab_actors::error::StoreError;
use confab_actors::outbox::{
    Attempt, Change, Delivery, DeliveryQuery, DeliveryState, NewEvent, OutboxEvent, Replay, Trim, Trimmed,
};
use confab_actors::store::StoreResult;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::ClientSession;
use serde::{Deserialize, Serialize};

use super::batch::Op;
use super::conn::Conn;
use super::docs::{i, q, u, DELIVERIES, OUTBOX, WEBHOOK_META};
use super::reads::find_all;
use super::tx::{fatal, Answer, AttemptResult, Tx};

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EventDoc {
    #[serde(rename = "_id")]
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub conv_id: Option<String>,
    pub seq: Option<i64>,
    pub ts: i64,
    /// The data as JSON text (app-defined JSON may hold keys BSON refuses).
    pub data: String,
}

impl EventDoc {
    pub(crate) fn from_event(e: &OutboxEvent) -> StoreResult<EventDoc> {
        Ok(EventDoc {
            id: i(e.id)?,
            kind: e.kind.clone(),
            conv_id: e.conv_id.clone(),
            seq: e.seq.map(i).transpose()?,
            ts: e.ts,
            data: serde_json::to_string(&e.data)
                .map_err(|e| StoreError::Unavailable(format!("cannot encode an event: {e}")))?,
        })
    }

    fn into_event(self) -> StoreResult<OutboxEvent> {
        Ok(OutboxEvent {
            id: u(self.id)?,
            kind: self.kind,
            conv_id: self.conv_id,
            seq: self.seq.map(u).transpose()?,
            ts: self.ts,
            data: serde_json::from_str(&self.data)
                .map_err(|e| StoreError::Unavailable(format!("corrupt event {}: {e}", self.id)))?,
        })
    }
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AttemptDoc {
    at: i64,
    status: Option<i32>,
    error: Option<String>,
    ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeliveryDoc {
    /// With `event_id`, the key (a unique index); `_id` is MongoDB's own.
    endpoint: String,
    event_id: i64,
    state: DeliveryState,
    attempts: i64,
    next_at: i64,
    log: Vec<AttemptDoc>,
}

impl DeliveryDoc {
    pub(crate) fn from_delivery(d: &Delivery) -> StoreResult<DeliveryDoc> {
        Ok(DeliveryDoc {
            endpoint: d.endpoint.clone(),
            event_id: i(d.event_id)?,
            state: d.state,
            attempts: i64::from(d.attempts),
            next_at: d.next_at,
            log: d
                .log
                .iter()
                .map(|a| AttemptDoc {
                    at: a.at,
                    status: a.status.map(i32::from),
                    error: a.error.clone(),
                    ms: i64::try_from(a.ms).unwrap_or(i64::MAX),
                })
                .collect(),
        })
    }

    fn into_delivery(self) -> StoreResult<Delivery> {
        Ok(Delivery {
            endpoint: self.endpoint,
            event_id: u(self.event_id)?,
            state: self.state,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_at: self.next_at,
            log: self
                .log
                .into_iter()
                .map(|a| Attempt {
                    at: a.at,
                    status: a.status.and_then(|s| u16::try_from(s).ok()),
                    error: a.error,
                    ms: u64::try_from(a.ms).unwrap_or(0),
                })
                .collect(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct MetaDoc {
    #[serde(default)]
    value: i64,
}

/// The events of a batch's answers (only when webhooks are on), written in its transaction.
pub(crate) async fn record(
    tx: &mut Tx<'_>,
    ops: &[&Op],
    answers: &mut [Option<StoreResult<Answer>>],
) -> AttemptResult<()> {
    let on = tx.conn.outbox.load(Relaxed);
    let mut events = Vec::new();
    let mut pushed = Vec::new();
    for (idx, op) in ops.iter().enumerate() {
        let Some(Some(Ok(answer))) = answers.get(idx) else { continue };
        if let Op::PushEvent(e) = op {
            pushed.push((idx, events.len()));
            events.push(e.clone());
            continue;
        }
        if !on {
            continue;
        }
        if let Some(event) = change(op, answer).and_then(|c| c.event()) {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len() as u64;
    // Event ids come from the node's clock, like versions: ordered the same way, and read only up
    // to the watermark (`events_after`).
    let first = tx.reserve_vers(n);
    for (idx, pos) in pushed {
        if let Some(slot) = answers.get_mut(idx) {
            *slot = Some(Ok(Answer::EventId(first + pos as u64)));
        }
    }
    let docs: Vec<EventDoc> = events
        .into_iter()
        .zip(first..)
        .map(|(e, id)| EventDoc::from_event(&e.with_id(id)))
        .collect::<StoreResult<_>>()
        .map_err(fatal)?;
    tx.insert(OUTBOX, &docs).await
}

/// Events of the group operations that answer `(Group, Message)` besides creation.
/// What an operation of a batch changed, named for its webhook event ([`Change::event`]).
fn change<'a>(op: &'a Op, answer: &'a Answer) -> Option<Change<'a>> {
    use confab_actors::outbox::{GROUP_DISMISSED, GROUP_MUTED, GROUP_ROLES_CHANGED, GROUP_UPDATED};
    Some(match (op, answer) {
        (Op::Append(_), Answer::Appended(a)) => Change::Appended(a),
        (Op::Recall { .. }, Answer::Recalled(r)) => Change::Recalled(r),
        (Op::CreateGroup(_), Answer::Created(g, m)) => Change::GroupCreated(g, m),
        (Op::ChangeMembers(c), Answer::Message(m)) => Change::MembersChanged { group_id: &c.group_id, message: m },
        (Op::UpdateGroup(_), Answer::Created(g, m)) => Change::Group { kind: GROUP_UPDATED, group: g, message: m },
        (Op::SetRoles(_), Answer::Created(g, m)) => Change::Group { kind: GROUP_ROLES_CHANGED, group: g, message: m },
        (Op::DismissGroup(_), Answer::Created(g, m)) => Change::Group { kind: GROUP_DISMISSED, group: g, message: m },
        (Op::ChangeContact(c), Answer::Contact(plan)) => Change::Contact(c, plan),
        (Op::MuteMembers(_), Answer::Created(g, m)) => Change::Group { kind: GROUP_MUTED, group: g, message: m },
        (Op::PutJoinRequests { group_id, .. }, Answer::Requests(r)) => {
            let ts = r.iter().map(|r| r.ts).max().unwrap_or(0);
            Change::JoinRequests { group_id, change: "requested", requests: r, ts }
        }
        (Op::RemoveJoinRequest { group_id, .. }, Answer::Requests(r)) => {
            Change::JoinRequests { group_id, change: "rejected", requests: r, ts: confab_actors::clock::now_ms() }
        }
        _ => return None,
    })
}

async fn events_from(
    conn: &Conn,
    s: &mut ClientSession,
    after: u64,
    limit: usize,
) -> StoreResult<(Vec<EventDoc>, Option<u64>)> {
    let mut cursor = conn
        .coll::<EventDoc>(OUTBOX)
        .find(doc! { "_id": { "$gt": q(after) } })
        .sort(doc! { "_id": 1 })
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .session(&mut *s)
        .await
        .map_err(|e| conn.fail("find in outbox", &e))?;
    let docs: Vec<EventDoc> = cursor.stream(s).try_collect().await.map_err(|e| conn.fail("reading a cursor", &e))?;
    let newest = docs.last().map(|d| u(d.id)).transpose()?;
    Ok((docs, newest))
}

pub(crate) async fn events_after(conn: &Conn, after: u64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
    // Only up to the watermark: an event id above it may still be committed below one found.
    let mut w = super::nodes::Watermarked::begin(conn).await?;
    let (mut docs, newest) = events_from(conn, w.session(), after, limit).await?;
    if w.catch_up(conn, newest).await? {
        docs = events_from(conn, w.session(), after, limit).await?.0;
    }
    let until = w.until();
    docs.into_iter().map(EventDoc::into_event).filter(|e| e.as_ref().map_or(true, |e| e.id <= until)).collect()
}

pub(crate) async fn event(conn: &Conn, id: u64) -> StoreResult<Option<OutboxEvent>> {
    let d = conn
        .coll::<EventDoc>(OUTBOX)
        .find_one(doc! { "_id": q(id) })
        .await
        .map_err(|e| conn.fail("find in outbox", &e))?;
    d.map(EventDoc::into_event).transpose()
}

pub(crate) async fn lease(conn: &Conn, name: &str, owner: &str, now: i64, ttl: i64) -> StoreResult<bool> {
    let id = format!("lease:{name}");
    let r = conn
        .coll::<Document>(WEBHOOK_META)
        .update_one(
            doc! { "_id": &id, "$or": [ { "owner": owner }, { "until": { "$lt": now } } ] },
            doc! { "$set": { "owner": owner, "until": now + ttl } },
        )
        .upsert(true)
        .await;
    match r {
        Ok(_) => Ok(true),
        // Held by another owner: the upsert's insert collides with the existing document.
        Err(e) if super::conn::is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(conn.fail("taking the webhook lease", &e)),
    }
}

pub(crate) async fn cursor(conn: &Conn, endpoint: &str) -> StoreResult<u64> {
    let d = conn
        .coll::<MetaDoc>(WEBHOOK_META)
        .find_one(doc! { "_id": format!("cursor:{endpoint}") })
        .await
        .map_err(|e| conn.fail("reading a webhook cursor", &e))?;
    d.map(|d| u(d.value)).transpose().map(|v| v.unwrap_or(0))
}

pub(crate) async fn enqueue(conn: &Conn, endpoint: &str, ids: &[u64], cursor: u64) -> StoreResult<()> {
    // One upsert per event (idempotent: an existing delivery is left as it is).
    for &id in ids {
        let d = DeliveryDoc::from_delivery(&Delivery::new(endpoint, id))?;
        let d = mongodb::bson::to_document(&d)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode a delivery: {e}")))?;
        let r = conn
            .coll::<Document>(DELIVERIES)
            .update_one(doc! { "endpoint": endpoint, "event_id": i(id)? }, doc! { "$setOnInsert": d })
            .upsert(true)
            .await
            .map_err(|e| conn.fail("creating a webhook delivery", &e))?;
        // Neither found nor created: leave the cursor where it is, so the event is queued again.
        if r.matched_count == 0 && r.upserted_id.is_none() {
            return Err(StoreError::Unavailable(format!("the webhook delivery of event {id} was not created")));
        }
    }
    conn.coll::<Document>(WEBHOOK_META)
        .update_one(doc! { "_id": format!("cursor:{endpoint}") }, doc! { "$max": { "value": i(cursor)? } })
        .upsert(true)
        .await
        .map_err(|e| conn.fail("moving a webhook cursor", &e))?;
    Ok(())
}

async fn find_deliveries(conn: &Conn, filter: Document, limit: Option<usize>) -> StoreResult<Vec<Delivery>> {
    let coll = conn.coll::<DeliveryDoc>(DELIVERIES);
    let mut find = coll.find(filter).sort(doc! { "event_id": 1, "endpoint": 1 });
    if let Some(l) = limit {
        find = find.limit(i64::try_from(l).unwrap_or(i64::MAX));
    }
    let cursor = find.await.map_err(|e| conn.fail("find in webhook_deliveries", &e))?;
    let docs = super::reads::collect(conn, cursor).await?;
    docs.into_iter().map(DeliveryDoc::into_delivery).collect()
}

pub(crate) async fn pending(conn: &Conn, endpoint: &str, limit: usize) -> StoreResult<Vec<(Delivery, OutboxEvent)>> {
    let ds = find_deliveries(conn, doc! { "endpoint": endpoint, "state": "pending" }, Some(limit)).await?;
    if ds.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Bson> = ds.iter().map(|d| Bson::Int64(q(d.event_id))).collect();
    let events: Vec<EventDoc> = find_all(conn, OUTBOX, doc! { "_id": { "$in": ids } }, None).await?;
    let mut by_id = std::collections::HashMap::new();
    for e in events {
        let e = e.into_event()?;
        by_id.insert(e.id, e);
    }
    Ok(ds.into_iter().filter_map(|d| by_id.remove(&d.event_id).map(|e| (d, e))).collect())
}

pub(crate) async fn save_delivery(conn: &Conn, d: &Delivery) -> StoreResult<()> {
    let doc = DeliveryDoc::from_delivery(d)?;
    conn.coll::<DeliveryDoc>(DELIVERIES)
        .replace_one(doc! { "endpoint": &doc.endpoint, "event_id": doc.event_id }, &doc)
        .upsert(true)
        .await
        .map_err(|e| conn.fail("saving a webhook delivery", &e))?;
    Ok(())
}

pub(crate) async fn deliveries(conn: &Conn, dq: &DeliveryQuery) -> StoreResult<Vec<Delivery>> {
    let mut filter = doc! { "event_id": { "$gt": q(dq.after_id) } };
    if let Some(e) = &dq.endpoint {
        filter.insert("endpoint", e.as_str());
    }
    if let Some(s) = dq.state {
        filter.insert("state", s.as_str());
    }
    find_deliveries(conn, filter, Some(dq.limit)).await
}

pub(crate) async fn event_deliveries(conn: &Conn, id: u64) -> StoreResult<Vec<Delivery>> {
    find_deliveries(conn, doc! { "event_id": q(id) }, None).await
}

pub(crate) async fn replay(conn: &Conn, r: &Replay) -> StoreResult<u64> {
    let mut filter = doc! { "event_id": { "$gte": q(r.from_id), "$lte": q(r.to_id) } };
    if let Some(e) = &r.endpoint {
        filter.insert("endpoint", e.as_str());
    }
    if r.only_failed {
        filter.insert("state", "failed");
    }
    let res = conn
        .coll::<Document>(DELIVERIES)
        .update_many(filter, doc! { "$set": { "state": "pending", "attempts": 0_i64, "next_at": 0_i64 } })
        .await
        .map_err(|e| conn.fail("replaying webhook deliveries", &e))?;
    Ok(res.matched_count)
}

/// An event's id and time, all the retention reads of it.
#[derive(Debug, Deserialize)]
struct EventAge {
    #[serde(rename = "_id")]
    id: i64,
    ts: i64,
}

/// One bounded step of the retention (the rule is on [`Trim`]). Like the rest of the delivery
/// bookkeeping it runs outside transactions, in an order that keeps it safe against a concurrent
/// replay: the deliveries are deleted only in a final state, then an event is deleted only if
/// none of its deliveries is left. A delivery put back to `pending` in between therefore stays,
/// and so does its event. Reads walk `_id`; deliveries are found and deleted through the index
/// `{event_id, endpoint}`.
pub(crate) async fn trim(conn: &Conn, t: &Trim) -> StoreResult<Trimmed> {
    let mut done = Trimmed::default();
    let mut upto = u64::MAX;
    for ep in &t.endpoints {
        upto = upto.min(cursor(conn, ep).await?);
    }
    if upto <= t.after || t.limit == 0 {
        return Ok(done);
    }
    let ages: Vec<EventAge> = conn
        .coll::<EventAge>(OUTBOX)
        .find(doc! { "_id": { "$gt": q(t.after), "$lte": q(upto) } })
        .projection(doc! { "ts": 1 })
        .sort(doc! { "_id": 1 })
        .limit(i64::try_from(t.limit).unwrap_or(i64::MAX))
        .await
        .map_err(|e| conn.fail("find in outbox", &e))
        .map(|c| super::reads::collect(conn, c))?
        .await?;
    let mut candidates = Vec::new();
    for a in ages.iter().take_while(|a| a.ts < t.before_ts) {
        done.examined += 1;
        done.last_id = u(a.id)?;
        candidates.push(a.id);
    }
    if candidates.is_empty() {
        return Ok(done);
    }
    let in_ids = |ids: &[i64]| doc! { "$in": ids.iter().map(|&id| Bson::Int64(id)).collect::<Vec<_>>() };
    let ds = find_deliveries(conn, doc! { "event_id": in_ids(&candidates) }, None).await?;
    let mut held = std::collections::HashSet::new();
    for d in &ds {
        if !t.done_with(d) {
            held.insert(q(d.event_id));
        }
    }
    let ids: Vec<i64> = candidates.into_iter().filter(|id| !held.contains(id)).collect();
    if ids.is_empty() {
        return Ok(done);
    }
    let r = conn
        .coll::<Document>(DELIVERIES)
        .delete_many(doc! { "event_id": in_ids(&ids), "state": { "$in": ["delivered", "failed"] } })
        .await
        .map_err(|e| conn.fail("trimming webhook deliveries", &e))?;
    done.deliveries = r.deleted_count;
    let left = find_deliveries(conn, doc! { "event_id": in_ids(&ids) }, None).await?;
    let left: std::collections::HashSet<i64> = left.iter().map(|d| q(d.event_id)).collect();
    let ids: Vec<i64> = ids.into_iter().filter(|id| !left.contains(id)).collect();
    if ids.is_empty() {
        return Ok(done);
    }
    let r = conn
        .coll::<Document>(OUTBOX)
        .delete_many(doc! { "_id": in_ids(&ids) })
        .await
        .map_err(|e| conn.fail("trimming the outbox", &e))?;
    done.events = r.deleted_count;
    Ok(done)
}

#[async_trait::async_trait]
impl confab_actors::outbox::Outbox for super::MongoStore {
    fn enable(&self) {
        self.conn.outbox.store(true, Relaxed);
    }

    async fn push_event(&self, event: NewEvent) -> StoreResult<u64> {
        match self.write(Op::PushEvent(event)).await? {
            Answer::EventId(id) => Ok(id),
            _ => Err(StoreError::Unavailable("internal: unexpected answer from the store writer".into())),
        }
    }

    async fn events_after(&self, after: u64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.read("outbox events", move |c| async move { events_after(&c, after, limit).await }).await
    }

    async fn event(&self, id: u64) -> StoreResult<Option<OutboxEvent>> {
        self.read("outbox event", move |c| async move { event(&c, id).await }).await
    }

    async fn lease(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.read("webhook lease", move |c| async move { lease(&c, &name, &owner, now_ms, ttl_ms).await }).await
    }

    async fn cursor(&self, endpoint: &str) -> StoreResult<u64> {
        let endpoint = endpoint.to_owned();
        self.read("webhook cursor", move |c| async move { cursor(&c, &endpoint).await }).await
    }

    async fn enqueue(&self, endpoint: &str, event_ids: &[u64], cursor: u64) -> StoreResult<()> {
        let (endpoint, ids) = (endpoint.to_owned(), event_ids.to_vec());
        self.read("webhook enqueue", move |c| async move { enqueue(&c, &endpoint, &ids, cursor).await }).await
    }

    async fn pending(&self, endpoint: &str, limit: usize) -> StoreResult<Vec<(Delivery, OutboxEvent)>> {
        let endpoint = endpoint.to_owned();
        self.read("webhook pending", move |c| async move { pending(&c, &endpoint, limit).await }).await
    }

    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()> {
        let d = d.clone();
        self.read("webhook delivery", move |c| async move { save_delivery(&c, &d).await }).await
    }

    async fn deliveries(&self, dq: &DeliveryQuery) -> StoreResult<Vec<Delivery>> {
        let dq = dq.clone();
        self.read("webhook deliveries", move |c| async move { deliveries(&c, &dq).await }).await
    }

    async fn event_deliveries(&self, event_id: u64) -> StoreResult<Vec<Delivery>> {
        self.read("webhook deliveries", move |c| async move { event_deliveries(&c, event_id).await }).await
    }

    async fn replay(&self, r: &Replay) -> StoreResult<u64> {
        let r = r.clone();
        self.read("webhook replay", move |c| async move { replay(&c, &r).await }).await
    }

    async fn trim(&self, t: &Trim) -> StoreResult<Trimmed> {
        let t = t.clone();
        self.read("webhook retention", move |c| async move { trim(&c, &t).await }).await
    }
}
