//! Storage adapters implementing [`confab_actors::store::Store`].

pub mod embedded;
pub mod mongo;

pub use embedded::EmbeddedStore;
pub use mongo::{MongoOptions, MongoStore};

use std::sync::atomic::Ordering::Relaxed;

use confab_actors::metrics::Metrics;

/// Decrements the store queue-depth gauge unless the job reached the writer's queue (the writer
/// then decrements it when it picks the job up). Covers cancelled futures and a closed queue.
/// Shared by both adapters' writers.
pub(crate) struct QueuedGuard<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) armed: bool,
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.metrics.store_queue_depth.fetch_sub(1, Relaxed);
        }
    }
}
