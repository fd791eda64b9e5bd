//! The tokio runtime each engine, client or worker owns, shut down with it.

use pyo3::PyResult;

use crate::error::QnllmError;

/// A multi-threaded runtime named after its owner, so its threads are easy to spot.
pub(crate) fn new(owner: &str, threads: usize) -> PyResult<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(format!("qnllm-{owner}"))
        .enable_all()
        .build()
        .map_err(|e| QnllmError::new_err(format!("cannot start the qnllm runtime: {e}")))
}

/// Worker threads for a runtime: the machine's cores, at least 2 so a blocked task never
/// stalls heartbeats.
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(2)
        .max(2)
}
