//! The group-commit writer: one OS thread that owns every write transaction.
//!
//! Async callers wrap an operation in a [`Job`] and send it over a bounded channel. The thread
//! takes one job, drains up to [`MAX_BATCH`] more that are already queued, runs them all in one
//! `WriteTransaction` in arrival order, commits (fsync), and only then answers each caller.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::store::StoreResult;
use redb::{Database, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

/// Capacity of the channel between async callers and the writer thread.
pub(super) const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed together in one transaction.
pub(super) const MAX_BATCH: usize = 1024;

/// A type-erased write operation queued for the writer.
pub(super) trait Job: Send {
    /// Runs the operation inside the batch's transaction and keeps its result. `Err` means the
    /// operation may have written part of its changes, so the whole transaction must be aborted.
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), String>;
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
    F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), String> {
        let Some(op) = self.op.take() else {
            return Ok(());
        };
        let result = op(txn);
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

/// Wraps an operation into a job and the receiver its answer arrives on.
pub(super) fn job<T, F>(op: F) -> (BoxedJob, oneshot::Receiver<StoreResult<T>>)
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    let job = TypedJob { op: Some(op), result: None, reply, enqueued: Instant::now() };
    (Box::new(job), rx)
}

/// Starts the writer thread. It ends when every sender of `rx` has been dropped and the queue is
/// empty.
pub(super) fn spawn(
    db: Arc<Database>,
    rx: mpsc::Receiver<BoxedJob>,
    metrics: Arc<Metrics>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("confab-store-writer".into()).spawn(move || run(&db, rx, &metrics))
}

fn run(db: &Database, mut rx: mpsc::Receiver<BoxedJob>, metrics: &Metrics) {
    let mut batch: Vec<BoxedJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics.store_queue_depth.fetch_sub(batch.len() as i64, Relaxed);
        let outcome = commit_batch(db, &mut batch);
        match &outcome {
            Ok(()) => {
                metrics.store_commits.fetch_add(1, Relaxed);
                metrics.store_batch_ops.fetch_add(batch.len() as u64, Relaxed);
            }
            Err(msg) => {
                tracing::error!(ops = batch.len(), error = %msg, "store batch failed; nothing of it was written")
            }
        }
        for job in batch.drain(..) {
            job.finish(&outcome, metrics);
        }
    }
    tracing::debug!("store writer stopped");
}

/// Runs every job of the batch in one transaction and commits it. On any failure the transaction
/// is aborted, so either all of the batch is durable or none of it.
fn commit_batch(db: &Database, batch: &mut [BoxedJob]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| format!("cannot begin a write transaction: {e}"))?;
    for job in batch.iter_mut() {
        let failure = match catch_unwind(AssertUnwindSafe(|| job.run(&txn))) {
            Ok(Ok(())) => None,
            Ok(Err(msg)) => Some(msg),
            Err(_) => Some("a store operation panicked".to_owned()),
        };
        if let Some(msg) = failure {
            if let Err(e) = txn.abort() {
                tracing::error!(error = %e, "aborting a store transaction failed");
            }
            return Err(msg);
        }
    }
    txn.commit().map_err(|e| format!("commit failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let db = Arc::new(Database::create(dir.path().join("t.redb")).expect("db"));
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(16);
        // Queue three jobs before the thread starts so they form one batch.
        let (a, ra) = job(put("a", false));
        let (b, rb) = job(put("b", true));
        let (p, rp) = job(|_txn: &WriteTransaction| -> StoreResult<u64> { panic!("boom") });
        assert!(tx.try_send(a).is_ok() && tx.try_send(b).is_ok() && tx.try_send(p).is_ok());
        metrics.store_queue_depth.fetch_add(3, Relaxed);
        let handle = spawn(db.clone(), rx, metrics.clone()).expect("spawn");
        assert!(matches!(ra.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert!(matches!(rb.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert!(matches!(rp.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));
        assert_eq!(get(&db, "a"), None, "an aborted batch must leave nothing behind");

        // A panicking op alone also aborts only its own batch.
        let (p2, rp2) = job(|_txn: &WriteTransaction| -> StoreResult<u64> { panic!("boom") });
        assert!(tx.blocking_send(p2).is_ok());
        assert!(matches!(rp2.blocking_recv(), Ok(Err(StoreError::Unavailable(_)))));

        let (c, rc) = job(put("c", false));
        assert!(tx.blocking_send(c).is_ok());
        assert!(matches!(rc.blocking_recv(), Ok(Ok(1))));
        assert_eq!(get(&db, "c"), Some(1));
        assert_eq!(metrics.store_commits.load(Relaxed), 1);
        assert_eq!(metrics.store_batch_ops.load(Relaxed), 1);
        drop(tx);
        handle.join().expect("writer thread ends when the channel closes");
    }
}
