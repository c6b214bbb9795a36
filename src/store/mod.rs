//! Storage adapters implementing [`confab_actors::store::Store`].

pub mod embedded;
pub mod mongo;

pub use embedded::EmbeddedStore;
pub use mongo::{CommandMonitor, MongoOptions, MongoStore};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::store::StoreResult;
use tokio::sync::mpsc;

/// The bounded queue in front of a store's writer (the embedded store's thread, MongoDB's task),
/// shared by both adapters. It keeps the store queue-depth gauge exact: a job counts from when it
/// is handed over until the writer takes it (the writer decrements then); a caller that gives up
/// or finds the queue closed takes its count back.
pub(crate) struct WriteQueue<J> {
    /// `None` once closed.
    tx: Mutex<Option<mpsc::Sender<J>>>,
    metrics: Arc<Metrics>,
}

impl<J> WriteQueue<J> {
    pub(crate) fn new(tx: mpsc::Sender<J>, metrics: Arc<Metrics>) -> Self {
        WriteQueue { tx: Mutex::new(Some(tx)), metrics }
    }

    fn sender(&self) -> Option<mpsc::Sender<J>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Hands `job` to the writer, waiting for room.
    pub(crate) async fn send(&self, job: J) -> StoreResult<()> {
        let Some(tx) = self.sender() else {
            return Err(StoreError::Unavailable("the store is closed".into()));
        };
        self.metrics.store_queue_depth.fetch_add(1, Relaxed);
        let mut guard = QueuedGuard { metrics: &self.metrics, armed: true };
        if tx.send(job).await.is_err() {
            return Err(writer_stopped());
        }
        guard.armed = false;
        Ok(())
    }

    /// Hands `job` to the writer if there is room now; false otherwise.
    pub(crate) fn try_send(&self, job: J) -> bool {
        let Some(tx) = self.sender() else { return false };
        self.metrics.store_queue_depth.fetch_add(1, Relaxed);
        if tx.try_send(job).is_err() {
            self.metrics.store_queue_depth.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Fails unless the writer still takes jobs.
    pub(crate) fn ensure_open(&self) -> StoreResult<()> {
        if self.sender().is_some_and(|tx| !tx.is_closed()) {
            Ok(())
        } else {
            Err(StoreError::Unavailable("the store writer is not running".into()))
        }
    }

    /// Takes no more jobs: the writer ends once it has taken what is queued.
    pub(crate) fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The error of a job whose writer stopped before it answered.
pub(crate) fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store writer has stopped".into())
}

/// Takes the queue-depth count back unless the job reached the writer's queue.
struct QueuedGuard<'a> {
    metrics: &'a Metrics,
    armed: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.store_queue_depth.fetch_sub(1, Relaxed);
        }
    }
}
