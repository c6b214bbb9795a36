//! The connection side: the client and its options, command monitoring into [`Metrics`], the
//! "MongoDB is down" breaker, error classification and the start-up work (indexes, counters).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::store::StoreResult;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, WriteConcern};
use mongodb::{Client, Collection, Database};

use super::clock::Clock;
use super::docs::{self, META, VER_ID};
use super::MongoOptions;

/// How long operations fail at once after MongoDB was found unreachable, before one tries again.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(1);

/// What the retired version counter holds (see `ensure_ready`).
pub(crate) const RETIRED_COUNTER: &str = "retired: versions come from each node's clock (docs/storage.md)";

/// Server error code of a unique index violation.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// Everything the reads and the writer share.
pub(crate) struct Conn {
    pub client: Client,
    pub db: Database,
    pub metrics: Arc<Metrics>,
    pub op_timeout: Duration,
    /// Set once every index exists (`ensure_ready` succeeded).
    ready: AtomicBool,
    ready_lock: tokio::sync::Mutex<()>,
    /// Milliseconds after `epoch` until which MongoDB counts as unreachable (0: reachable).
    down_until_ms: AtomicU64,
    epoch: Instant,
    /// Webhooks are on: write batches also insert their outbox events.
    pub outbox: AtomicBool,
    /// This node's version clock and its registration in `nodes`.
    pub clock: Clock,
}

/// The write concern of every write: acknowledged by a majority of the replica set, journaled.
pub(crate) fn durable() -> WriteConcern {
    WriteConcern::builder().w(Acknowledgment::Majority).journal(true).build()
}

/// Bytes of a BSON document, counted by writing it nowhere (no allocation).
fn bson_len(doc: &mongodb::bson::Document) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = doc.to_writer(&mut c);
    c.0
}

fn count_command(metrics: &Metrics, event: CommandEvent) {
    match event {
        CommandEvent::Succeeded(e) => {
            metrics.db_bytes_received.fetch_add(bson_len(&e.reply), Relaxed);
        }
        CommandEvent::Started(e) => {
            // The command with its documents (the driver hands them to monitoring as one
            // document), as BSON: about what goes on the wire.
            metrics.db_bytes_sent.fetch_add(bson_len(&e.command), Relaxed);
            let counter = match e.command_name.as_str() {
                "insert" | "update" | "delete" | "findAndModify" | "commitTransaction" | "abortTransaction" => {
                    &metrics.db_commands_write
                }
                "find" | "aggregate" | "getMore" | "count" | "distinct" => &metrics.db_commands_read,
                _ => &metrics.db_commands_other,
            };
            counter.fetch_add(1, Relaxed);
        }
        CommandEvent::Failed(_) => {
            metrics.db_command_failures.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

impl Conn {
    /// Builds the client. Must run on the runtime that will drive it. Fails only on a bad URI or
    /// bad options; an unreachable server is not an error here.
    pub async fn connect(opts: &MongoOptions, metrics: Arc<Metrics>) -> StoreResult<Conn> {
        let mut co = ClientOptions::parse(&opts.uri)
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage.mongodb.uri is not usable: {e}")))?;
        co.app_name.get_or_insert_with(|| "confab".to_owned());
        co.connect_timeout = Some(opts.connect_timeout);
        co.server_selection_timeout = Some(opts.server_selection_timeout);
        // Acknowledged means durable, whatever the URI says.
        co.write_concern = Some(durable());
        co.read_concern = Some(ReadConcern::majority());
        let m = metrics.clone();
        let monitor = opts.monitor.clone();
        co.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
            if let Some(monitor) = &monitor {
                (monitor.0)(&ev);
            }
            count_command(&m, ev)
        }));
        let client = Client::with_options(co)
            .map_err(|e| StoreError::Unavailable(format!("cannot create the MongoDB client: {e}")))?;
        let db = client.database(&opts.database);
        Ok(Conn {
            client,
            db,
            metrics,
            op_timeout: opts.op_timeout,
            ready: AtomicBool::new(false),
            ready_lock: tokio::sync::Mutex::new(()),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            outbox: AtomicBool::new(false),
            clock: Clock::new(&opts.node),
        })
    }

    pub fn coll<T: Send + Sync>(&self, name: &str) -> Collection<T> {
        self.db.collection(name)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Fails at once while the breaker is open (MongoDB was unreachable a moment ago).
    pub fn check_breaker(&self) -> StoreResult<()> {
        let until = self.down_until_ms.load(Relaxed);
        if until != 0 && self.now_ms() < until {
            return Err(StoreError::Unavailable("MongoDB is unreachable (retrying shortly)".into()));
        }
        Ok(())
    }

    /// Records the outcome of an operation for the breaker.
    pub fn observe<T>(&self, r: &StoreResult<T>, reachability: Reach) {
        match reachability {
            Reach::Down => {
                let until = self.now_ms().saturating_add(BREAKER_COOL_DOWN.as_millis() as u64).max(1);
                self.down_until_ms.store(until, Relaxed);
            }
            Reach::Up if r.is_ok() => self.down_until_ms.store(0, Relaxed),
            Reach::Up => {}
        }
    }

    /// Maps a driver error to a store error, opening the breaker when MongoDB could not be reached.
    pub fn fail(&self, what: &str, e: &MongoError) -> StoreError {
        if is_unreachable(e) {
            self.observe::<()>(&Ok(()), Reach::Down);
        }
        StoreError::Unavailable(format!("mongodb {what}: {e}"))
    }

    /// An operation that ran out of time: counts as unreachable.
    pub fn timed_out(&self, what: &str) -> StoreError {
        self.observe::<()>(&Ok(()), Reach::Down);
        StoreError::Unavailable(format!("mongodb {what}: no answer within {} ms", self.op_timeout.as_millis()))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    /// Creates the indexes and retires the old version counter once (idempotent, safe on every
    /// node at once).
    pub async fn ensure_ready(&self) -> StoreResult<()> {
        if self.is_ready() {
            return Ok(());
        }
        let _guard = self.ready_lock.lock().await;
        if self.is_ready() {
            return Ok(());
        }
        for (name, models) in docs::indexes() {
            self.coll::<Document>(name)
                .create_indexes(models)
                .await
                .map_err(|e| self.fail(&format!("creating the indexes of {name}"), &e))?;
        }
        // Collections used inside transactions must exist beforehand on older servers.
        for name in [docs::CONVERSATIONS, docs::GROUPS, META, docs::OUTBOX, docs::DAILY] {
            if let Err(e) = self.db.create_collection(name).await {
                // It exists already (NamespaceExists, 48): created earlier or by another node.
                if !matches!(*e.kind, ErrorKind::Command(ref c) if c.code == 48) {
                    return Err(self.fail(&format!("creating {name}"), &e));
                }
            }
        }
        // Versions come from each node's clock (`clock`), no longer from the counter `{_id: "ver"}`
        // earlier versions of confab took them from. A node of such a version still running
        // would commit below the watermark: its `$inc` on this text fails, so it cannot write.
        self.coll::<Document>(META)
            .update_one(doc! { "_id": VER_ID }, doc! { "$set": { "value": RETIRED_COUNTER } })
            .upsert(true)
            .await
            .map_err(|e| self.fail("retiring the version counter", &e))?;
        self.backfill_name_keys().await?;
        self.ready.store(true, Relaxed);
        Ok(())
    }

    /// `{ping: 1}`.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.run_command(doc! { "ping": 1 }).await.map_err(|e| self.fail("ping", &e))?;
        Ok(())
    }
}

/// Whether an operation's outcome says anything about MongoDB being reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    Up,
    Down,
}

/// No server could be selected or the connection broke: MongoDB is (for now) unreachable.
pub(crate) fn is_unreachable(e: &MongoError) -> bool {
    matches!(*e.kind, ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. })
}

/// A unique index refused a write.
pub(crate) fn is_duplicate_key(e: &MongoError) -> bool {
    match &*e.kind {
        ErrorKind::InsertMany(m) => m.write_errors.iter().flatten().any(|w| w.code == DUPLICATE_KEY),
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Whether a write error of an `update` command's reply is a unique index violation.
pub(crate) fn is_duplicate_key_reply(write_error: &Document) -> bool {
    int_field(write_error, "code") == Some(i64::from(DUPLICATE_KEY))
}

/// An integer field of a server reply (`int32` or `int64`).
pub(crate) fn int_field(reply: &Document, key: &str) -> Option<i64> {
    match reply.get(key) {
        Some(Bson::Int32(n)) => Some(i64::from(*n)),
        Some(Bson::Int64(n)) => Some(*n),
        _ => None,
    }
}

/// The transaction was aborted by a conflict or a transient condition: running it again may work.
pub(crate) fn is_transient(e: &MongoError) -> bool {
    e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR)
}

pub(crate) fn is_unknown_commit(e: &MongoError) -> bool {
    e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
}

impl Conn {
    /// Gives the users and groups written before name keys existed theirs (once per database: a
    /// `meta` document records it).
    async fn backfill_name_keys(&self) -> StoreResult<()> {
        const DONE: &str = "name_keys";
        let meta = self.coll::<Document>(META);
        if meta.find_one(doc! { "_id": DONE }).await.map_err(|e| self.fail("reading meta", &e))?.is_some() {
            return Ok(());
        }
        let mut n = 0u64;
        for (coll, field, key_field) in [(docs::USERS, "nickname", "nickname_key"), (docs::GROUPS, "name", "name_key")]
        {
            let filter = doc! { field: { "$type": "string" }, key_field: { "$exists": false } };
            let mut cursor =
                self.coll::<Document>(coll).find(filter).await.map_err(|e| self.fail("reading names", &e))?;
            let mut found: Vec<(String, String)> = Vec::new();
            while cursor.advance().await.map_err(|e| self.fail("reading names", &e))? {
                let d: Document = cursor.deserialize_current().map_err(|e| self.fail("reading names", &e))?;
                if let (Ok(id), Ok(name)) = (d.get_str("_id"), d.get_str(field)) {
                    found.push((id.to_owned(), name.to_owned()));
                }
            }
            for (id, name) in found {
                self.coll::<Document>(coll)
                    .update_one(
                        doc! { "_id": &id, field: &name },
                        doc! { "$set": { key_field: docs::sort_key(&name, &id) } },
                    )
                    .await
                    .map_err(|e| self.fail("adding a name key", &e))?;
                n += 1;
            }
        }
        meta.update_one(doc! { "_id": DONE }, doc! { "$set": { "value": 1_i64 } })
            .upsert(true)
            .await
            .map_err(|e| self.fail("recording the name keys", &e))?;
        if n > 0 {
            tracing::info!(records = n, "added name keys to the users and groups stored before this version");
        }
        Ok(())
    }
}
