//! The group-commit writer: one OS thread that owns every write transaction.
//!
//! Async callers wrap an operation in a [`Job`] and send it over a bounded channel. The thread
//! takes one job, drains up to [`MAX_BATCH`] more that are already queued, runs them all in one
//! `WriteTransaction` in arrival order, commits (fsync), and only then answers each caller.
//!
//! Jobs run against a [`Batch`]: the transaction plus, while consecutive appends run, the
//! [`Appender`] that keeps their tables open and their conversation rows, cursors and version
//! counter in memory until the run of appends ends (see `ops::Appender`). Any other job first
//! flushes it ([`Batch::txn`]), so every job sees exactly what the jobs before it wrote.
//!
//! The thread also owns recovery from I/O errors (`health`): when a batch fails and the database
//! no longer accepts a write transaction, it closes the database, answers every job `Unavailable`
//! at once and re-opens the file when it can.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::store::StoreResult;
use redb::{Database, WriteTransaction};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::health::{self, Handle, Recovery};
use super::ops::Appender;

/// What the jobs of one batch run against: its transaction and, during a run of appends, their
/// [`Appender`].
pub(super) struct Batch<'t> {
    txn: &'t WriteTransaction,
    appender: Option<Appender<'t>>,
}

impl<'t> Batch<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        Batch { txn, appender: None }
    }

    /// The transaction, after writing out what the appender holds and closing its tables, for a
    /// job that opens tables itself.
    pub(super) fn txn(&mut self) -> StoreResult<&'t WriteTransaction> {
        self.flush()?;
        Ok(self.txn)
    }

    /// The transaction, leaving the appender as it is: only for tables the appender never opens
    /// (the webhook outbox).
    pub(super) fn txn_beside_appender(&self) -> &'t WriteTransaction {
        self.txn
    }

    /// The appender, opening its tables if this is the first append of a run.
    pub(super) fn appender(&mut self) -> StoreResult<&mut Appender<'t>> {
        let appender = match self.appender.take() {
            Some(a) => a,
            None => Appender::open(self.txn)?,
        };
        Ok(self.appender.insert(appender))
    }

    /// Writes out what the appender holds and closes its tables.
    fn flush(&mut self) -> StoreResult<()> {
        match self.appender.take() {
            Some(a) => a.flush(),
            None => Ok(()),
        }
    }
}

/// Capacity of the channel between async callers and the writer thread.
pub(super) const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed together in one transaction: everything queued. A commit's cost is
/// nearly all per commit (page writes and one `fsync`), so under load bigger batches are cheaper
/// per operation; a light load makes small batches by itself.
pub(super) const MAX_BATCH: usize = QUEUE_CAPACITY;

/// A type-erased write operation queued for the writer.
pub(super) trait Job: Send {
    /// Runs the operation inside the batch's transaction and keeps its result. `Err` means the
    /// operation may have written part of its changes, so the whole transaction must be aborted.
    fn run(&mut self, batch: &mut Batch<'_>) -> Result<(), String>;
    /// Answers the caller once the batch is committed (`Ok`) or abandoned (`Err`).
    fn finish(self: Box<Self>, batch: &Result<(), String>, metrics: &Metrics);
}

pub(super) type BoxedJob = Box<dyn Job>;

struct TypedJob<T, F> {
    op: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    enqueued: Instant,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Batch<'_>) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, batch: &mut Batch<'_>) -> Result<(), String> {
        let Some(op) = self.op.take() else {
            return Ok(());
        };
        let result = op(batch);
        let fatal = match &result {
            Err(StoreError::Unavailable(msg)) => Some(msg.clone()),
            _ => None,
        };
        self.result = Some(result);
        match fatal {
            Some(msg) => Err(msg),
            None => Ok(()),
        }
    }

    fn finish(self: Box<Self>, batch: &Result<(), String>, metrics: &Metrics) {
        metrics.store_write_seconds.observe(self.enqueued.elapsed());
        let answer = match batch {
            Ok(()) => self.result.unwrap_or_else(|| Err(StoreError::Unavailable("the operation did not run".into()))),
            Err(msg) => Err(StoreError::Unavailable(msg.clone())),
        };
        // The caller may have gone away (cancelled future); its data is committed regardless.
        let _ = self.reply.send(answer);
    }
}

/// Wraps an operation on the transaction into a job and the receiver its answer arrives on.
pub(super) fn job<T, F>(op: F) -> (BoxedJob, oneshot::Receiver<StoreResult<T>>)
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
{
    batch_job(move |batch: &mut Batch<'_>| op(batch.txn()?))
}

/// Wraps an operation on the batch (appends) into a job and the receiver its answer arrives on.
pub(super) fn batch_job<T, F>(op: F) -> (BoxedJob, oneshot::Receiver<StoreResult<T>>)
where
    T: Send + 'static,
    F: FnOnce(&mut Batch<'_>) -> StoreResult<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    let job = TypedJob { op: Some(op), result: None, reply, enqueued: Instant::now() };
    (Box::new(job), rx)
}

/// Starts the writer thread. It ends when every sender of `rx` has been dropped and the queue is
/// empty.
pub(super) fn spawn(
    handle: Arc<Handle>,
    rx: mpsc::Receiver<BoxedJob>,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("confab-store-writer".into()).spawn(move || run(&handle, rx, &metrics))
}

/// How often the writer looks at its queue while it waits for a re-open attempt or the end of a
/// probation (see `health`): jobs that were queued before the database closed are answered this
/// soon, and no job waits for a re-open.
const POLL: Duration = Duration::from_millis(20);

fn run(handle: &Handle, mut rx: mpsc::Receiver<BoxedJob>, metrics: &Metrics) {
    let mut db = handle.db().ok();
    let mut recovery = Recovery::new();
    let mut batch: Vec<BoxedJob> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = match recovery.wake_at() {
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            },
            Some(at) => match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now < at {
                        std::thread::sleep(POLL.min(at - now));
                    } else {
                        recovery.on_time(handle, &mut db, metrics);
                    }
                    continue;
                }
            },
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics.store_queue_depth.fetch_sub(batch.len() as i64, Relaxed);
        let outcome = match &db {
            Some(d) => commit_batch(d, &mut batch),
            None => Err(health::DOWN.to_owned()),
        };
        match (&outcome, &db) {
            (Ok(()), _) => {
                metrics.store_commits.fetch_add(1, Relaxed);
                metrics.store_batch_ops.fetch_add(batch.len() as u64, Relaxed);
            }
            (Err(_), None) => recovery.refused(batch.len()),
            // The database refuses new transactions: an I/O error. Closed before anyone is
            // answered, so a caller that got `unavailable` finds the node not ready.
            (Err(msg), Some(d)) if !health::usable(d) => recovery.failed(handle, &mut db, msg, metrics),
            (Err(msg), Some(_)) => {
                tracing::error!(ops = batch.len(), error = %msg, "store batch failed; nothing of it was written")
            }
        }
        recovery.batch_done(handle);
        for job in batch.drain(..) {
            job.finish(&outcome, metrics);
        }
    }
    tracing::debug!("store writer stopped");
}

/// Runs every job of the batch in one transaction and commits it. On any failure the transaction
/// is aborted, so either all of the batch is durable or none of it.
fn commit_batch(db: &Database, jobs: &mut [BoxedJob]) -> Result<(), String> {
    // Jobs' panics are caught one by one (`run_jobs`); this catches redb's own, which it raises on
    // some calls after an I/O error (the database is then checked and re-opened).
    catch_unwind(AssertUnwindSafe(|| {
        let txn = db.begin_write().map_err(|e| format!("cannot begin a write transaction: {e}"))?;
        // `run_jobs` closes every table it opened before the transaction is committed or dropped.
        if let Err(msg) = run_jobs(&txn, jobs) {
            // Dropping aborts the transaction, except after an I/O error, where redb leaves the
            // file to the repair on the next open (an explicit `abort` would panic there).
            drop(txn);
            return Err(msg);
        }
        txn.commit().map_err(|e| format!("commit failed: {e}"))
    }))
    .unwrap_or_else(|_| Err("the database panicked".to_owned()))
}

/// Runs the jobs in order against one [`Batch`], then flushes it. `Err` ends at the first job
/// that failed fatally (or panicked): the transaction must be aborted.
fn run_jobs(txn: &WriteTransaction, jobs: &mut [BoxedJob]) -> Result<(), String> {
    let mut batch = Batch::new(txn);
    for job in jobs.iter_mut() {
        match catch_unwind(AssertUnwindSafe(|| job.run(&mut batch))) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(msg),
            Err(_) => return Err("a store operation panicked".to_owned()),
        }
    }
    batch.flush().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::{ops, reads};
    use super::*;
    use confab_actors::model::{direct_conv_id, Body};
    use confab_actors::store::{Appended, NewMessage};
    use redb::TableDefinition;

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(key: &'static str, fail: bool) -> impl FnOnce(&WriteTransaction) -> StoreResult<u64> + Send + 'static {
        move |txn| {
            let mut t = txn.open_table(T).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            t.insert(key, 1).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            if fail {
                return Err(StoreError::Unavailable("injected".into()));
            }
            Ok(1)
        }
    }

    fn get(db: &Database, key: &str) -> Option<u64> {
        let txn = db.begin_read().ok()?;
        let t = txn.open_table(T).ok()?;
        let v = t.get(key).ok()??;
        Some(v.value())
    }

    #[test]
    fn a_failing_op_aborts_its_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.redb");
        let metrics = Arc::new(Metrics::default());
        let handle = Arc::new(Handle::new(path.clone(), Database::create(&path).expect("db"), &metrics));
        let (tx, rx) = mpsc::channel(16);
        // Queue three jobs before the thread starts so they form one batch.
        let (a, ra) = job(put("a", false));
        let (b, rb) = job(put("b", true));
        let (p, rp) = job(|_txn: &WriteTransaction| -> StoreResult<u64> { panic!("boom") });
        assert!(tx.try_send(a).is_ok() && tx.try_send(b).is_ok() && tx.try_send(p).is_ok());
        metrics.store_queue_depth.fetch_add(3, Relaxed);
        let thread = spawn(handle.clone(), rx, metrics.clone()).expect("spawn");
        assert!(matches!(ra.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert!(matches!(rb.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert!(matches!(rp.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert_eq!(get(&handle.db().expect("open"), "a"), None, "an aborted batch must leave nothing behind");

        // A panicking op alone also aborts only its own batch.
        let (p2, rp2) = job(|_txn: &WriteTransaction| -> StoreResult<u64> { panic!("boom") });
        assert!(tx.blocking_send(p2).is_ok());
        assert!(matches!(rp2.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));

        let (c, rc) = job(put("c", false));
        assert!(tx.blocking_send(c).is_ok());
        assert!(matches!(rc.blocking_recv(), Ok(Ok(1))));
        assert_eq!(get(&handle.db().expect("open"), "c"), Some(1));
        assert_eq!(metrics.store_commits.load(Relaxed), 1);
        assert_eq!(metrics.store_batch_ops.load(Relaxed), 1);
        drop(tx);
        assert_eq!(metrics.store_embedded_outages.load(Relaxed), 0, "no I/O error here");
        thread.join().expect("writer thread ends when the channel closes");
    }

    fn text(conv: &str, pair: (&str, &str), sender: &str, cmid: &str) -> NewMessage {
        NewMessage {
            conv_id: conv.to_owned(),
            direct_members: Some((pair.0.to_owned(), pair.1.to_owned())),
            sender: Some(sender.to_owned()),
            client_msg_id: Some(cmid.to_owned()),
            body: Body::text(cmid),
            reply_to: None,
            ts: 1,
        }
    }

    fn append(m: NewMessage) -> (BoxedJob, oneshot::Receiver<StoreResult<Appended>>) {
        batch_job(move |b: &mut Batch<'_>| b.appender()?.append(m))
    }

    /// Appends batched with other jobs give what one-by-one appends give: each job sees what
    /// the jobs before it wrote (the appender flushes before any other job), a re-send in the
    /// same batch finds its first copy, and every change takes the next `ver`.
    #[test]
    fn a_batch_of_appends_and_other_jobs_runs_as_if_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("t.redb")).expect("db");
        let (ab, cd) = (direct_conv_id("a", "b"), direct_conv_id("c", "d"));
        let mut jobs = Vec::new();
        let mut appends = Vec::new();
        let mut push = |(job, rx): (BoxedJob, oneshot::Receiver<StoreResult<Appended>>), jobs: &mut Vec<BoxedJob>| {
            jobs.push(job);
            appends.push(rx);
        };
        push(append(text(&ab, ("a", "b"), "a", "m1")), &mut jobs); // ab 1, ver 1
        push(append(text(&cd, ("c", "d"), "c", "m1")), &mut jobs); // cd 1, ver 2
        push(append(text(&ab, ("a", "b"), "b", "m1")), &mut jobs); // ab 2, ver 3
                                                                   // a reads up to 5 between the appends: sees last_seq 2, so reads up to 2 (ver 4).
        let (j, read) = job({
            let ab = ab.clone();
            move |txn: &WriteTransaction| ops::mark_read(txn, "a", &ab, 5)
        });
        jobs.push(j);
        push(append(text(&ab, ("a", "b"), "a", "m1")), &mut jobs); // a re-send: ab 1, nothing new
        push(append(text(&ab, ("a", "b"), "a", "m2")), &mut jobs); // ab 3, ver 5
        let missing = NewMessage { direct_members: None, ..text("g_nope", ("a", "b"), "a", "m3") };
        push(append(missing), &mut jobs); // NotFound, writes nothing
        push(append(text(&cd, ("c", "d"), "d", "m1")), &mut jobs); // cd 2, ver 6

        let txn = db.begin_write().expect("txn");
        super::super::create_tables(&txn).expect("tables");
        assert_eq!(run_jobs(&txn, &mut jobs), Ok(()));
        txn.commit().expect("commit");
        let metrics = Metrics::default();
        for job in jobs {
            job.finish(&Ok(()), &metrics);
        }

        let got: Vec<_> = appends
            .into_iter()
            .map(|rx| {
                let answer = rx.blocking_recv().expect("answered");
                answer
                    .map(|a| (a.message.conv_id, a.message.seq, a.message.ver, a.duplicate))
                    .map_err(|e| e.to_string())
            })
            .collect();
        let ok = |c: &str, seq, ver, dup| Ok::<_, String>((c.to_owned(), seq, ver, dup));
        assert_eq!(got[0], ok(&ab, 1, 1, false));
        assert_eq!(got[1], ok(&cd, 1, 2, false));
        assert_eq!(got[2], ok(&ab, 2, 3, false));
        assert_eq!(got[3], ok(&ab, 1, 1, true));
        assert_eq!(got[4], ok(&ab, 3, 5, false));
        assert!(matches!(&got[5], Err(e) if e.contains("not found")), "{:?}", got[5]);
        assert_eq!(got[6], ok(&cd, 2, 6, false));
        let read = read.blocking_recv().expect("answered").expect("mark_read").expect("moved");
        assert_eq!((read.read_seq, read.ver), (2, 4));

        let r = db.begin_read().expect("read");
        let conv = reads::conversation(&r, &ab).expect("read").expect("exists");
        assert_eq!((conv.last_seq, conv.ver), (3, 5));
        let conv = reads::conversation(&r, &cd).expect("read").expect("exists");
        assert_eq!((conv.last_seq, conv.ver), (2, 6));
        let row = |u: &str, c: &str| reads::user_conv(&r, u, c).expect("read").expect("row");
        assert_eq!((row("a", &ab).read_seq, row("a", &ab).ver), (3, 5));
        assert_eq!((row("b", &ab).read_seq, row("b", &ab).ver), (2, 3));
        assert_eq!((row("c", &cd).read_seq, row("d", &cd).read_seq), (1, 2));
        let seqs: Vec<u64> = (1..=3).filter_map(|s| reads::message(&r, &ab, s).expect("read")).map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(reads::message(&r, &ab, 4).expect("read"), None);
        let meta = r.open_table(super::super::tables::META).expect("meta");
        assert_eq!(meta.get(super::super::tables::VER_KEY).expect("get").map(|g| g.value()), Some(6));
    }
}
