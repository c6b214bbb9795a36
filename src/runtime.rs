//! A tokio runtime of a component's own (the MongoDB store, the cluster layer), so the component
//! may be called from any runtime or arbiter thread.

/// A multi-threaded runtime that shuts down without blocking when dropped (a runtime may not be
/// dropped inside another one's async context, where components are usually dropped).
pub struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    /// A runtime of `threads` worker threads named `name`, with I/O and timers.
    pub fn new(name: &str, threads: usize) -> std::io::Result<OwnedRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(OwnedRuntime(Some(rt)))
    }

    /// Takes the runtime out (dropping what is left then does nothing), e.g. to finish work on it
    /// from a thread of its own.
    pub fn take(&mut self) -> Option<OwnedRuntime> {
        self.0.take().map(|rt| OwnedRuntime(Some(rt)))
    }

    /// Runs a future to completion on it, on the calling thread (not inside another runtime).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self.0.as_ref().map(|rt| rt.block_on(f))
    }

    /// Where to spawn onto it.
    pub fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle().clone())
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
