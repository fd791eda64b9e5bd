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

/// Runs `future` to completion on `runtime`. A future that is ready at its first poll (a
/// request answered by an in-process engine) costs one poll, not a trip through the
/// runtime's scheduler; one that is not continues under `block_on`.
pub(crate) fn run<F: std::future::Future>(
    runtime: &tokio::runtime::Runtime,
    future: F,
) -> F::Output {
    let _entered = runtime.enter();
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        // block_on polls again at once with a real waker, which replaces the no-op one
        // wherever the first poll registered it.
        std::task::Poll::Pending => runtime.block_on(future),
    }
}
