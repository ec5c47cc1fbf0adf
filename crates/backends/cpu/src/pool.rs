//! The thread pool the kernels run their parallel loops on.

use std::sync::Arc;

/// A handle to the backend's own rayon pool; cheap to clone.
///
/// Should the pool fail to start (the OS refused threads), work runs on the caller's thread
/// and rayon's global pool instead of failing: slower, same results.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Option<Arc<rayon::ThreadPool>>,
}

impl Pool {
    /// A pool of `threads` workers; 0 means one per available core.
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            available_cores()
        } else {
            threads
        };
        let inner = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("gptoss-cpu-{i}"))
            .build()
            .ok()
            .map(Arc::new);
        Pool { inner }
    }

    /// Number of worker threads parallel loops are spread over.
    pub fn threads(&self) -> usize {
        match &self.inner {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Run `f` inside the pool, so rayon parallel iterators in it use the pool's workers.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.inner {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// Cores this process may use (1 if the OS will not say).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
