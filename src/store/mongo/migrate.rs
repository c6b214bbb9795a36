//! `confab migrate --to mongodb`: copies a single node's embedded store into MongoDB.
//!
//! Run it with the node stopped (the embedded file is locked while a node has it open). It only
//! adds what is missing and never overwrites: every document is an upsert with `$setOnInsert` on
//! its natural key, counters move with `$max`, and a group's members are copied only together with
//! the group itself. So re-running it is harmless, also after nodes have started writing to
//! MongoDB; changes made to the embedded store after a first run are not carried over to documents
//! that exist already. One exception, on purpose: a user's `disabled` and `tokens_valid_after`
//! merge to the more restrictive value (disabled if either side says so, the later revocation
//! time), so a migration never re-enables a user or revives revoked tokens.
//!
//! The counters (versions, webhook event ids) are raised first, messages are copied before their
//! conversations, webhook events before their deliveries and the deliveries before the endpoint
//! cursors, so an interrupted run leaves nothing that a later run or a node could trip over (at
//! worst a dispatcher queues the copied events again: delivered twice, never lost). Webhook leases
//! are not copied: they belong to the running dispatchers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use confab_actors::metrics::Metrics;
use confab_actors::model::{
    Conversation, Group, GroupBan, JoinRequest, Member, Message, NoticeConfirmation, User, UserConvState,
};
use confab_actors::outbox::{Delivery, OutboxEvent};
use mongodb::bson::{doc, Document};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable, TableDefinition, TableError, TableHandle};

use super::conn::{int_field, is_duplicate_key_reply, Conn};
use super::docs::{
    ban_id, i, BanDoc, ConfirmationDoc, ConvDoc, GroupDoc, MessageDoc, RequestDoc, RowDoc, CONTACTS, CONVERSATIONS,
    DELETIONS, GROUPS, GROUP_BANS, GROUP_REQUESTS, MEMBERS, MESSAGES, NOTICE_CONFIRMATIONS, USERS, USER_CONVS,
};
use super::docs::{ACTIVE_USERS, DAILY, DELIVERIES, DEVICE_REVOCATIONS, OUTBOX, PUSH_TOKENS, WEBHOOK_META};
use super::outbox::{DeliveryDoc, EventDoc};
use super::tx::{stmt, UpdateReply};
use super::users::UserDoc;
use super::MongoOptions;

// The embedded store's own table definitions. `webhook_pending` is not read: it mirrors the
// deliveries' state, which is all MongoDB keeps.
use super::contacts::{contact_id, ContactDoc};
use crate::store::embedded::outbox::{DELIVERIES as E_DELIVERIES, OUTBOX as E_OUTBOX, WEBHOOK_META as E_WEBHOOK_META};
use crate::store::embedded::tables::{
    ACTIVE_USERS as E_ACTIVE_USERS, CONTACTS as E_CONTACTS, CONVS as E_CONVS, DELETIONS as E_DELETIONS,
    DEVICE_REVOCATIONS as E_DEVICE_REVOCATIONS, GROUPS as E_GROUPS, GROUP_BANS as E_GROUP_BANS,
    GROUP_REQUESTS as E_GROUP_REQUESTS, MEMBERS as E_MEMBERS, MESSAGES as E_MESSAGES, MESSAGE_DAY_PREFIX,
    META as E_META, NOTICE_CONFIRMATIONS as E_NOTICE_CONFIRMATIONS, RECALLS as E_RECALLS, USERS as E_USERS,
    USER_CONVS as E_USER_CONVS,
};

/// Statements per `update` command.
const CHUNK: usize = 1000;

/// What a migration did, per collection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(collection, documents inserted, documents that were there already, refused)`. Refused
    /// documents collide with different data under a unique key (a MongoDB database that was not
    /// filled from this embedded store).
    pub collections: Vec<(&'static str, u64, u64, u64)>,
}

impl MigrationReport {
    pub fn refused(&self) -> u64 {
        self.collections.iter().map(|c| c.3).sum()
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, inserted, existing, refused) in &self.collections {
            writeln!(f, "{name:<18} {inserted:>10} copied {existing:>10} already there {refused:>6} refused")?;
        }
        Ok(())
    }
}

/// Upserts sent in chunks of unordered statements.
struct Bulk<'a> {
    conn: &'a Conn,
    coll: &'static str,
    stmts: Vec<Document>,
    inserted: u64,
    existing: u64,
    refused: u64,
    /// The keys (`q`) of the refused statements, when asked for ([`Bulk::tracking`]).
    refused_keys: Option<Vec<Document>>,
}

impl<'a> Bulk<'a> {
    fn new(conn: &'a Conn, coll: &'static str) -> Bulk<'a> {
        Bulk { conn, coll, stmts: Vec::with_capacity(CHUNK), inserted: 0, existing: 0, refused: 0, refused_keys: None }
    }

    /// Also keeps the keys of the refused documents.
    fn tracking(mut self) -> Bulk<'a> {
        self.refused_keys = Some(Vec::new());
        self
    }

    /// Counts documents left out because they depend on refused ones.
    fn refuse(&mut self, n: u64) {
        self.refused += n;
    }

    /// Inserts `doc` unless a document matching `key` exists.
    async fn insert_missing(&mut self, key: Document, doc: Document) -> anyhow::Result<()> {
        self.push(key, doc! { "$setOnInsert": doc }).await
    }

    async fn push(&mut self, key: Document, update: Document) -> anyhow::Result<()> {
        self.stmts.push(stmt(key, update, true));
        if self.stmts.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.stmts.is_empty() {
            return Ok(());
        }
        let stmts = std::mem::take(&mut self.stmts);
        let count = stmts.len() as u64;
        let keys: Vec<Document> = match self.refused_keys {
            Some(_) => stmts.iter().map(|s| s.get_document("q").cloned().unwrap_or_default()).collect(),
            None => Vec::new(),
        };
        let cmd = doc! {
            "update": self.coll, "updates": stmts, "ordered": false,
            "writeConcern": { "w": "majority", "j": true },
        };
        let reply = self.conn.db.run_command(cmd).await.with_context(|| format!("writing to {}", self.coll))?;
        let reply: UpdateReply = mongodb::bson::from_document(reply).context("unexpected update reply")?;
        for e in &reply.write_errors {
            if !is_duplicate_key_reply(e) {
                bail!("writing to {}: {e}", self.coll);
            }
            if let Some(refused) = &mut self.refused_keys {
                let key = int_field(e, "index").and_then(|n| usize::try_from(n).ok()).and_then(|n| keys.get(n));
                match key {
                    Some(k) => refused.push(k.clone()),
                    None => bail!("writing to {}: a write error names no statement: {e}", self.coll),
                }
            }
        }
        let inserted = reply.upserted().len() as u64;
        self.inserted += inserted;
        self.refused += reply.write_errors.len() as u64;
        self.existing += u64::try_from(reply.n).unwrap_or(0).saturating_sub(inserted).min(count);
        Ok(())
    }

    /// Sends what is left and reports; returns the keys of the refused documents if tracked.
    async fn finish(mut self, report: &mut MigrationReport) -> anyhow::Result<Vec<Document>> {
        self.flush().await?;
        report.collections.push((self.coll, self.inserted, self.existing, self.refused));
        Ok(self.refused_keys.unwrap_or_default())
    }
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("corrupt {what} in the embedded store"))
}

/// A table, or `None` if the store was created by a version that did not have it yet.
/// Copies a `(group_id, user)` → JSON table of the embedded store into `coll`, one document per
/// row (`doc` gives its `_id` and body), inserted where missing.
async fn copy_group_rows<T: serde::de::DeserializeOwned>(
    conn: &Conn,
    txn: &ReadTransaction,
    report: &mut MigrationReport,
    coll: &'static str,
    table: TableDefinition<'_, (&'static str, &'static str), &'static [u8]>,
    what: &str,
    doc: impl Fn(&str, &T) -> (String, anyhow::Result<Document>),
) -> anyhow::Result<()> {
    let mut bulk = Bulk::new(conn, coll);
    if let Some(rows) = open_opt(txn, table)? {
        for item in rows.iter()? {
            let (k, v) = item?;
            let (group_id, _) = k.value();
            let row: T = json(v.value(), what)?;
            let (id, body) = doc(group_id, &row);
            let mut body = body?;
            body.remove("_id");
            bulk.insert_missing(doc! { "_id": id }, body).await?;
        }
    }
    bulk.finish(report).await?;
    Ok(())
}

fn open_opt<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> anyhow::Result<Option<ReadOnlyTable<K, V>>> {
    match txn.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening the embedded table {}", def.name())),
    }
}

fn bson_doc<T: serde::Serialize>(v: &T) -> anyhow::Result<Document> {
    Ok(mongodb::bson::to_document(v)?)
}

/// Copies the embedded store in `dir` into the MongoDB database of `opts`. Must run on the runtime
/// that drives it (the command line's).
pub async fn migrate_from_embedded(dir: &Path, opts: MongoOptions) -> anyhow::Result<MigrationReport> {
    let path = dir.join(crate::store::embedded::DB_FILE);
    if !path.is_file() {
        bail!("there is no embedded store at {}", path.display());
    }
    let db = redb::Database::open(&path)
        .with_context(|| format!("opening {} (is a node still running on it?)", path.display()))?;
    let conn = Conn::connect(&opts, Arc::new(Metrics::default())).await?;
    conn.ensure_ready().await.context("preparing the MongoDB database")?;
    let txn = db.begin_read()?;
    let mut report = MigrationReport::default();

    // 1. Versions and webhook event ids: everything copied keeps its ver and its id (the
    //    receivers' de-duplication key); the nodes' clocks must hand out higher ones, so the
    //    version floor (see `clock`) is raised to the highest of both. The embedded `next_id` is
    //    the last event id handed out (at least the highest event kept).
    let ver = txn.open_table(E_META)?.get("ver")?.map(|g| g.value()).unwrap_or(0);
    let outbox = open_opt(&txn, E_OUTBOX)?;
    let webhook_meta = open_opt(&txn, E_WEBHOOK_META)?;
    let mut last_event_id = match &outbox {
        Some(t) => t.last()?.map(|(k, _)| k.value()).unwrap_or(0),
        None => 0,
    };
    if let Some(meta) = &webhook_meta {
        if let Some(v) = meta.get("next_id")? {
            last_event_id = last_event_id.max(json::<u64>(v.value(), "webhook event id counter")?);
        }
    }
    super::nodes::raise_floor(&conn, ver.max(last_event_id)).await.context("raising the version floor")?;

    // 3. Users, early (a disabled user or revoked tokens must hold on MongoDB as soon as possible).
    //    The profile is only set on insert; `disabled` and `tokens_valid_after` merge to the more
    //    restrictive value: disabled stays disabled, the revocation time only moves forward.
    let mut bulk = Bulk::new(&conn, USERS);
    if let Some(users) = open_opt(&txn, E_USERS)? {
        for item in users.iter()? {
            let (_, v) = item?;
            let user: User = json(v.value(), "user")?;
            let mut d = bson_doc(&UserDoc::from_user(&user)?)?;
            d.remove("_id");
            d.remove("tokens_valid_after");
            d.remove("tokens_valid_after_ms");
            let mut update = doc! { "$max": {
                "tokens_valid_after": i(user.tokens_valid_after)?,
                "tokens_valid_after_ms": i(user.tokens_valid_after_ms)?,
            } };
            if user.disabled {
                d.remove("disabled");
                update.insert("$set", doc! { "disabled": true });
            }
            update.insert("$setOnInsert", d);
            bulk.push(doc! { "_id": &user.id }, update).await?;
        }
    }
    bulk.finish(&mut report).await?;
    // Devices' revocations the same way: the bound only moves forward.
    let mut bulk = Bulk::new(&conn, DEVICE_REVOCATIONS);
    if let Some(revocations) = open_opt(&txn, E_DEVICE_REVOCATIONS)? {
        for item in revocations.iter()? {
            let (k, v) = item?;
            let (user, device) = k.value();
            let update = doc! {
                "$set": { "user": user, "device": device },
                "$max": { "before_ms": i(v.value())? },
            };
            bulk.push(doc! { "_id": format!("{user}/{device}") }, update).await?;
        }
    }
    bulk.finish(&mut report).await?;
    // Push registrations, where the device has none on MongoDB (a token registered there to
    // another device since is refused by the unique index, and counted). The push jobs are not
    // copied: notifications not sent yet are given up.
    let mut bulk = Bulk::new(&conn, PUSH_TOKENS);
    if let Some(tokens) = open_opt(&txn, crate::store::embedded::push::PUSH_TOKENS)? {
        for item in tokens.iter()? {
            let (_, v) = item?;
            let r: confab_actors::push::PushRegistration = json(v.value(), "push registration")?;
            let d = doc! {
                "user": &r.user, "device": &r.device, "provider": &r.provider, "token": &r.token,
                "updated_at": r.updated_at,
            };
            bulk.insert_missing(doc! { "_id": format!("{}/{}", r.user, r.device) }, d).await?;
        }
    }
    bulk.finish(&mut report).await?;

    // 3b. Contacts, right after the users (a block must hold as soon as possible too): inserted
    //     where missing, a row that exists on MongoDB (changed there since) is kept.
    let mut bulk = Bulk::new(&conn, CONTACTS);
    if let Some(contacts) = open_opt(&txn, E_CONTACTS)? {
        for item in contacts.iter()? {
            let (_, v) = item?;
            let row: confab_actors::model::Contact = json(v.value(), "contact")?;
            let mut d = bson_doc(&ContactDoc::from_contact(&row)?)?;
            d.remove("_id");
            bulk.insert_missing(doc! { "_id": contact_id(&row.owner, &row.user_id) }, d).await?;
        }
    }
    bulk.finish(&mut report).await?;

    // 3c. Group bans, before the members (a banned user must not be added back on MongoDB by a
    //     node that runs while the migration does), pending join requests, notice confirmations:
    //     each `(group, user)` row becomes the document `"<group>/<user>"`, inserted where missing.
    copy_group_rows(&conn, &txn, &mut report, GROUP_BANS, E_GROUP_BANS, "group ban", |g, b: &GroupBan| {
        (ban_id(g, &b.user_id), bson_doc(&BanDoc::new(g, b)))
    })
    .await?;
    copy_group_rows(
        &conn,
        &txn,
        &mut report,
        GROUP_REQUESTS,
        E_GROUP_REQUESTS,
        "join request",
        |g, r: &JoinRequest| (ban_id(g, &r.user_id), bson_doc(&RequestDoc::new(g, r))),
    )
    .await?;
    let what = "notice confirmation";
    copy_group_rows(
        &conn,
        &txn,
        &mut report,
        NOTICE_CONFIRMATIONS,
        E_NOTICE_CONFIRMATIONS,
        what,
        |g, c: &NoticeConfirmation| (ban_id(g, &c.user_id), bson_doc(&ConfirmationDoc::new(g, c))),
    )
    .await?;

    // 4. Messages (with their recall versions), before the conversations that count them.
    let mut recalls: HashMap<(String, u64), u64> = HashMap::new();
    for item in txn.open_table(E_RECALLS)?.iter()? {
        let (k, seq) = item?;
        let (conv_id, ver) = k.value();
        recalls.insert((conv_id.to_owned(), seq.value()), ver);
    }
    let mut bulk = Bulk::new(&conn, MESSAGES);
    for item in txn.open_table(E_MESSAGES)?.iter()? {
        let (_, v) = item?;
        let m: Message = json(v.value(), "message")?;
        let mut d = MessageDoc::from_message(&m)?;
        if let Some(rv) = recalls.get(&(m.conv_id.clone(), m.seq)) {
            d.recall_ver = Some(i(*rv)?);
        }
        bulk.insert_missing(doc! { "conv_id": &d.conv_id, "seq": d.seq }, bson_doc(&d)?).await?;
    }
    bulk.finish(&mut report).await?;

    // 5. Conversations: created if missing; last_seq and ver only ever move forward.
    let mut bulk = Bulk::new(&conn, CONVERSATIONS);
    for item in txn.open_table(E_CONVS)?.iter()? {
        let (_, v) = item?;
        let c: Conversation = json(v.value(), "conversation")?;
        let d = ConvDoc::from_conv(&c)?;
        let mut on_insert = doc! { "kind": mongodb::bson::to_bson(&d.kind)?, "members": &d.members };
        if let Some(g) = &d.group_id {
            on_insert.insert("group_id", g);
        }
        bulk.push(
            doc! { "_id": &d.id },
            doc! { "$setOnInsert": on_insert, "$max": { "last_seq": d.last_seq, "ver": d.ver } },
        )
        .await?;
    }
    bulk.finish(&mut report).await?;

    // 6. Users' rows.
    let mut bulk = Bulk::new(&conn, USER_CONVS);
    for item in txn.open_table(E_USER_CONVS)?.iter()? {
        let (k, v) = item?;
        let (user, conv_id) = k.value();
        let s: UserConvState = json(v.value(), "conversation row")?;
        let mut row = RowDoc::new(user, conv_id, &s)?.to_document()?;
        row.remove("user");
        row.remove("conv_id");
        bulk.insert_missing(doc! { "user": user, "conv_id": conv_id }, row).await?;
    }
    bulk.finish(&mut report).await?;

    // 6b. Statistics: the embedded store's daily message counts become one document per day
    //     (`messages/<day>/migrated`, set, not added: a second run writes the same), and the days'
    //     active users are inserted where missing.
    let mut bulk = Bulk::new(&conn, DAILY);
    if let Some(meta) = open_opt(&txn, E_META)? {
        for item in meta.range(MESSAGE_DAY_PREFIX..)? {
            let (k, v) = item?;
            let Some(day) = k.value().strip_prefix(MESSAGE_DAY_PREFIX).and_then(|d| d.parse::<i64>().ok()) else {
                break;
            };
            let set = doc! { "kind": "messages", "day": day, "n": i(v.value())? };
            bulk.push(doc! { "_id": format!("messages/{day}/migrated") }, doc! { "$set": set }).await?;
        }
    }
    bulk.finish(&mut report).await?;
    let mut bulk = Bulk::new(&conn, ACTIVE_USERS);
    if let Some(active) = open_opt(&txn, E_ACTIVE_USERS)? {
        for item in active.iter()? {
            let (k, _) = item?;
            let (day, user) = k.value();
            bulk.insert_missing(doc! { "_id": format!("{day}/{user}") }, doc! { "day": i64::from(day) }).await?;
        }
    }
    bulk.finish(&mut report).await?;

    // 7. Delete-for-me marks.
    let mut bulk = Bulk::new(&conn, DELETIONS);
    for item in txn.open_table(E_DELETIONS)?.iter()? {
        let (k, v) = item?;
        let (user, conv_id, seq) = k.value();
        bulk.insert_missing(doc! { "user": user, "conv_id": conv_id, "seq": i(seq)? }, doc! { "ver": i(v.value())? })
            .await?;
    }
    bulk.finish(&mut report).await?;

    // 8. Groups, each with its members, only if MongoDB does not have the group yet (members
    //    removed there must not come back). Members first, so a half-done group is redone.
    let mut groups: Vec<Group> = Vec::new();
    for item in txn.open_table(E_GROUPS)?.iter()? {
        let (_, v) = item?;
        groups.push(json(v.value(), "group")?);
    }
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in groups.chunks(CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|g| g.id.as_str()).collect();
        let mut cursor = conn.db.collection::<Document>(GROUPS).find(doc! { "_id": { "$in": ids } }).await?;
        while cursor.advance().await? {
            if let Ok(id) = cursor.current().get_str("_id") {
                known.insert(id.to_owned());
            }
        }
    }
    let members = txn.open_table(E_MEMBERS)?;
    let mut member_bulk = Bulk::new(&conn, MEMBERS);
    for g in groups.iter().filter(|g| !known.contains(&g.id)) {
        for item in members.range((g.id.as_str(), "")..)? {
            let (k, v) = item?;
            let (gid, user) = k.value();
            if gid != g.id {
                break;
            }
            let m: Member = json(v.value(), "member")?;
            let d = doc! { "role": mongodb::bson::to_bson(&m.role)?, "joined_at": m.joined_at };
            member_bulk.insert_missing(doc! { "group_id": gid, "user": user }, d).await?;
        }
    }
    member_bulk.finish(&mut report).await?;
    let mut bulk = Bulk::new(&conn, GROUPS);
    for g in &groups {
        let mut d = bson_doc(&GroupDoc::from_group(g)?)?;
        d.remove("_id");
        bulk.insert_missing(doc! { "_id": &g.id }, d).await?;
    }
    bulk.finish(&mut report).await?;

    // 9. Webhook events. Matched on id, type and time: an event of the same id but different
    //    content (a database with webhook events of its own) is refused, not taken for this one.
    let mut bulk = Bulk::new(&conn, OUTBOX).tracking();
    if let Some(outbox) = &outbox {
        for item in outbox.iter()? {
            let (_, v) = item?;
            let e: OutboxEvent = json(v.value(), "webhook event")?;
            let d = EventDoc::from_event(&e)?;
            let mut body = bson_doc(&d)?;
            for k in ["_id", "type", "ts"] {
                body.remove(k);
            }
            bulk.insert_missing(doc! { "_id": d.id, "type": &d.kind, "ts": d.ts }, body).await?;
        }
    }
    let refused_events: HashSet<i64> =
        bulk.finish(&mut report).await?.iter().filter_map(|k| k.get_i64("_id").ok()).collect();

    // 10. Deliveries, with their state and attempt log, after their events (the dispatcher skips
    //     a delivery whose event is missing). Those of refused events are left out (refused).
    let mut bulk = Bulk::new(&conn, DELIVERIES);
    if let Some(deliveries) = open_opt(&txn, E_DELIVERIES)? {
        for item in deliveries.iter()? {
            let (_, v) = item?;
            let dl: Delivery = json(v.value(), "webhook delivery")?;
            let event_id = i(dl.event_id)?;
            if refused_events.contains(&event_id) {
                bulk.refuse(1);
                continue;
            }
            let mut body = bson_doc(&DeliveryDoc::from_delivery(&dl)?)?;
            body.remove("endpoint");
            body.remove("event_id");
            bulk.insert_missing(doc! { "endpoint": &dl.endpoint, "event_id": event_id }, body).await?;
        }
    }
    bulk.finish(&mut report).await?;

    // 11. The endpoints' cursors (last event queued), last: without them a dispatcher queues the
    //     copied events again (duplicates), with them before the deliveries it would skip events.
    //     `next_id` went to the counter; leases (`lease:*`) are not copied.
    let mut bulk = Bulk::new(&conn, WEBHOOK_META);
    if let Some(meta) = &webhook_meta {
        for item in meta.iter()? {
            let (k, v) = item?;
            let key = k.value();
            if !key.starts_with("cursor:") {
                continue;
            }
            let cursor: u64 = json(v.value(), "webhook cursor")?;
            bulk.push(doc! { "_id": key }, doc! { "$max": { "value": i(cursor)? } }).await?;
        }
    }
    bulk.finish(&mut report).await?;
    Ok(report)
}
