//! One attempt at committing a batch: a MongoDB transaction and the helpers every write operation
//! uses inside it. Everything here runs on the writer task.

use std::collections::HashMap;

use confab_actors::error::StoreError;
use confab_actors::model::{Group, Message, UserConvState};
use confab_actors::store::{Appended, ContactPlan, Recalled};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::ReadConcern;
use mongodb::ClientSession;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::batch::ConvCache;
use super::conn::{durable, is_duplicate_key, is_duplicate_key_reply, is_transient, Conn};
use super::docs::i;
use super::nodes::{lease_until, NODES};

/// What an operation of the batch answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Appended(Appended),
    Message(Message),
    Recalled(Recalled),
    State(UserConvState),
    MaybeState(Option<UserConvState>),
    /// The group is boxed to keep the enum small.
    Created(Box<Group>, Message),
    /// The id of a pushed outbox event.
    EventId(u64),
    Contact(Box<ContactPlan>),
    /// Join requests written (`PutJoinRequests`) or removed (`RemoveJoinRequest`: none or one).
    Requests(Vec<confab_actors::model::JoinRequest>),
}

/// Why an attempt did not commit. Nothing of it is written in any case.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// A write conflict or another transient condition: run the attempt again.
    Transient(StoreError),
    /// The cached `last_seq` of these conversations was out of date (another node appended), or a
    /// conversation this node meant to create exists already.
    Stale(Vec<String>),
    /// A unique index refused a write: a re-sent `(sender, client_msg_id)` stored by someone else
    /// meanwhile (or, rarely, a race on a group id).
    DuplicateKey,
    /// Anything else (MongoDB unreachable, timeouts, corrupt data): the batch fails.
    Fatal(StoreError),
}

pub(crate) type AttemptResult<T> = Result<T, AttemptError>;

/// Copies a store error (it is not `Clone`).
pub(crate) fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Refused(code, m) => StoreError::Refused(*code, m.clone()),
    }
}

/// A store error from a codec or corrupt record ends the attempt.
pub(crate) fn fatal(e: StoreError) -> AttemptError {
    AttemptError::Fatal(e)
}

#[derive(Deserialize)]
struct Upserted {
    index: i64,
}

/// The reply of an `update` command.
#[derive(Deserialize)]
pub(crate) struct UpdateReply {
    #[serde(default)]
    pub n: i64,
    #[serde(rename = "nModified", default)]
    pub n_modified: i64,
    #[serde(default)]
    upserted: Vec<Upserted>,
    #[serde(rename = "writeErrors", default)]
    pub write_errors: Vec<Document>,
}

impl UpdateReply {
    /// Indexes of the statements that inserted a document.
    pub fn upserted(&self) -> Vec<usize> {
        self.upserted.iter().filter_map(|x| usize::try_from(x.index).ok()).collect()
    }
}

/// One update statement of an `update` command.
pub(crate) fn stmt(q: Document, u: Document, upsert: bool) -> Document {
    doc! { "q": q, "u": u, "upsert": upsert, "multi": false }
}

/// An update statement applied to every document that matches `q` (no upsert).
pub(crate) fn stmt_all(q: Document, u: Document) -> Document {
    doc! { "q": q, "u": u, "upsert": false, "multi": true }
}

/// A transaction in progress, with this attempt's view of conversation `last_seq`s.
pub(crate) struct Tx<'a> {
    pub conn: &'a Conn,
    pub session: ClientSession,
    pub cache: &'a ConvCache,
    /// `last_seq` of every conversation this attempt changed (exact: written in this transaction).
    pub overlay: HashMap<String, u64>,
    /// `(sender, client_msg_id)` → index of the append of this batch that stores it.
    pub batch_keys: HashMap<(String, String), usize>,
    /// `(append index, index of the earlier append it repeats)`.
    pub dup_of: Vec<(usize, usize)>,
}

impl<'a> Tx<'a> {
    pub async fn begin(conn: &'a Conn, cache: &'a ConvCache) -> AttemptResult<Tx<'a>> {
        let mut session = conn.client.start_session().await.map_err(|e| classify(conn, "starting a session", e))?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(durable())
            .await
            .map_err(|e| classify(conn, "starting a transaction", e))?;
        Ok(Tx { conn, session, cache, overlay: HashMap::new(), batch_keys: HashMap::new(), dup_of: Vec::new() })
    }

    pub fn err(&self, what: &str, e: MongoError) -> AttemptError {
        classify(self.conn, what, e)
    }

    /// Takes `n` versions from this node's clock; returns the first.
    pub fn reserve_vers(&self, n: u64) -> u64 {
        self.conn.clock.reserve(n)
    }

    /// Publishes, in this transaction, this node's `closed` (the highest version it has handed
    /// out, so everything this transaction writes) and renews its lease (see `clock`); returns
    /// it. A node that was evicted finds no document: the attempt ends and runs again once it
    /// registered again.
    /// Adds the messages this batch stored to the node's daily counts (in the batch's
    /// transaction: a count never misses or repeats a commit).
    pub async fn count_messages(&mut self, answers: &[Option<Result<Answer, StoreError>>]) -> AttemptResult<()> {
        let mut per_day: std::collections::BTreeMap<u32, i64> = Default::default();
        for a in answers.iter().flatten() {
            if let Ok(Answer::Appended(a)) = a {
                if !a.duplicate {
                    *per_day.entry(confab_actors::store::day_of(a.message.ts)).or_default() += 1;
                }
            }
        }
        for (day, n) in per_day {
            let id = format!("messages/{day}/{}", self.conn.clock.id());
            self.conn
                .coll::<Document>(super::docs::DAILY)
                .update_one(
                    doc! { "_id": id },
                    doc! { "$inc": { "n": n }, "$set": { "kind": "messages", "day": i64::from(day) } },
                )
                .upsert(true)
                .session(&mut self.session)
                .await
                .map_err(|e| self.err("counting messages", e))?;
        }
        Ok(())
    }

    pub async fn publish_closed(&mut self) -> AttemptResult<u64> {
        let closed = self.conn.clock.last();
        let filter = doc! { "_id": self.conn.clock.id() };
        let set = doc! { "closed": i(closed).map_err(fatal)?, "until": lease_until() };
        let reply = self.set_one(NODES, filter, set).await?;
        if reply.n == 0 {
            self.conn.clock.lost();
            return Err(AttemptError::Transient(StoreError::Unavailable(
                "this store node was evicted from the cluster (its lease ran out); registering again".into(),
            )));
        }
        Ok(closed)
    }

    pub async fn find_one<T: DeserializeOwned + Send + Sync>(
        &mut self,
        coll: &str,
        filter: Document,
    ) -> AttemptResult<Option<T>> {
        self.conn
            .coll::<T>(coll)
            .find_one(filter)
            .session(&mut self.session)
            .await
            .map_err(|e| classify(self.conn, &format!("find in {coll}"), e))
    }

    pub async fn find_all<T: DeserializeOwned + Send + Sync>(
        &mut self,
        coll: &str,
        filter: Document,
    ) -> AttemptResult<Vec<T>> {
        let mut cursor = self
            .conn
            .coll::<T>(coll)
            .find(filter)
            .session(&mut self.session)
            .await
            .map_err(|e| classify(self.conn, &format!("find in {coll}"), e))?;
        let out: Result<Vec<T>, MongoError> = cursor.stream(&mut self.session).try_collect().await;
        out.map_err(|e| classify(self.conn, &format!("reading {coll}"), e))
    }

    pub async fn insert<T: Serialize + Send + Sync>(&mut self, coll: &str, docs: &[T]) -> AttemptResult<()> {
        if docs.is_empty() {
            return Ok(());
        }
        self.conn
            .coll::<T>(coll)
            .insert_many(docs)
            .session(&mut self.session)
            .await
            .map_err(|e| classify(self.conn, &format!("insert into {coll}"), e))?;
        Ok(())
    }

    /// One `update` command carrying every statement (one round trip however many there are).
    pub async fn update(&mut self, coll: &str, statements: Vec<Document>) -> AttemptResult<UpdateReply> {
        if statements.is_empty() {
            return Ok(UpdateReply { n: 0, n_modified: 0, upserted: Vec::new(), write_errors: Vec::new() });
        }
        let cmd = doc! { "update": coll, "updates": statements, "ordered": true };
        let reply = self
            .conn
            .db
            .run_command(cmd)
            .session(&mut self.session)
            .await
            .map_err(|e| classify(self.conn, &format!("update {coll}"), e))?;
        let reply: UpdateReply = mongodb::bson::from_document(reply)
            .map_err(|e| fatal(StoreError::Unavailable(format!("unexpected reply to update {coll}: {e}"))))?;
        if let Some(first) = reply.write_errors.first() {
            if is_duplicate_key_reply(first) {
                return Err(AttemptError::DuplicateKey);
            }
            return Err(fatal(StoreError::Unavailable(format!("update {coll} failed: {first}"))));
        }
        Ok(reply)
    }

    /// Sets the fields `set` of the one document of `coll` that matches `filter` (if any).
    pub async fn set_one(&mut self, coll: &str, filter: Document, set: Document) -> AttemptResult<UpdateReply> {
        self.update(coll, vec![stmt(filter, doc! { "$set": set }, false)]).await
    }

    pub async fn commit(&mut self) -> Result<(), MongoError> {
        self.session.commit_transaction().await
    }

    /// Aborts (best effort: the server aborts on its own after errors and after a timeout).
    pub async fn abort(&mut self) {
        if let Err(e) = self.session.abort_transaction().await {
            tracing::debug!(error = %e, "aborting a MongoDB transaction");
        }
    }
}

/// Sorts a driver error into what the batch does next.
pub(crate) fn classify(conn: &Conn, what: &str, e: MongoError) -> AttemptError {
    if is_transient(&e) && !super::conn::is_unreachable(&e) {
        AttemptError::Transient(conn.fail(what, &e))
    } else if is_duplicate_key(&e) {
        AttemptError::DuplicateKey
    } else {
        AttemptError::Fatal(conn.fail(what, &e))
    }
}
