//! What the hub does with each message a client sends: one file per verb.

pub(crate) mod broadcast;
pub mod call;
pub(crate) mod coordinate;
pub(crate) mod metrics;
pub(crate) mod reason;
pub(crate) mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use qnllm_protocol::{Deadline, ErrorCode, Frame, Message};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::FrameSender;
use crate::hub::Shared;
use crate::session::fail;
use crate::stats::{ConnectionStats, Counters};

/// The wire code for a router failure.
pub(crate) fn error_code(err: &qnllm_router::RouterError) -> ErrorCode {
    use qnllm_router::RouterError;
    match err {
        RouterError::InvalidInput(_) => ErrorCode::InvalidInput,
        RouterError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
        RouterError::Disagreement { .. } => ErrorCode::Disagreement,
        RouterError::EnginesFailed { .. } => ErrorCode::EngineFailed,
        RouterError::RetryBudgetExhausted { .. } => ErrorCode::Overloaded,
        _ => ErrorCode::NoEngineAvailable,
    }
}

/// Whether the connection goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Per-connection state of a client: where replies go, what is in flight, when it ends.
#[derive(Debug)]
pub(crate) struct ClientSession {
    pub(crate) sender: FrameSender,
    in_flight: Arc<Mutex<HashMap<u64, AbortHandle>>>,
    stats: Arc<ConnectionStats>,
    /// This connection's request tasks, so its end can wait for their answers.
    tasks: TaskTracker,
    pub(crate) ended: CancellationToken,
}

impl ClientSession {
    pub(crate) fn new(sender: FrameSender, stats: Arc<ConnectionStats>) -> ClientSession {
        ClientSession {
            sender,
            in_flight: Arc::default(),
            stats,
            tasks: TaskTracker::new(),
            ended: CancellationToken::new(),
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, AbortHandle>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` as a tracked request task that a `cancel` with the same id can abort.
    pub(crate) fn spawn(
        &self,
        shared: &Shared,
        request_id: u64,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (in_flight, stats) = (self.in_flight.clone(), self.stats.clone());
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        // Insert under the lock the task needs to remove itself: the insert comes first
        // even if the task finishes at once.
        let mut map = self.in_flight();
        let work = self.tasks.track_future(work);
        let task = shared.requests.spawn(async move {
            let _done = InFlight(stats); // counts down however the task ends, abort included
            work.await;
            in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&request_id);
        });
        map.insert(request_id, task.abort_handle());
    }

    /// Aborts the request `request_id`; whether it was still running.
    fn cancel(&self, request_id: u64) -> bool {
        match self.in_flight().remove(&request_id) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// The connection is over: let its requests finish (within `grace`) so their answers
    /// are queued before the writer closes, then stop its helpers (subscriptions).
    pub(crate) async fn end(&self, grace: std::time::Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        self.ended.cancel();
    }
}

/// Decrements a connection's in-flight count when a request task ends.
struct InFlight(Arc<ConnectionStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handles one frame from a client.
pub(crate) async fn dispatch(shared: &Arc<Shared>, session: &ClientSession, frame: Frame) -> Flow {
    let id = frame.header.request_id;
    let message = match frame.message() {
        Ok(message) => message,
        Err(err) => {
            Counters::add(&shared.counters.protocol_errors, 1);
            fail(&session.sender, id, err.code(), err.to_string()).await;
            return Flow::Close;
        }
    };
    let deadline = frame
        .header
        .deadline
        .remaining()
        .unwrap_or(shared.config.default_deadline());
    match message {
        Message::Ping => {
            session
                .sender
                .send(&Message::Pong, id, Deadline::NONE)
                .await;
        }
        Message::Reason(encoding) => {
            let no_cache = frame.header.flags.contains(qnllm_protocol::Flags::NO_CACHE);
            reason::one(shared, session, id, encoding.0, deadline, no_cache)
        }
        Message::Batch(batch) => reason::batch(shared, session, id, batch, deadline),
        Message::Cancel => {
            if session.cancel(id) {
                fail(
                    &session.sender,
                    id,
                    ErrorCode::Cancelled,
                    "cancelled by the client",
                )
                .await;
            }
        }
        Message::Call(call) => call::handle(shared, session, id, call).await,
        Message::Coordinate(request) => {
            coordinate::coordinate(shared, session, id, request, deadline)
        }
        Message::Learn(request) => coordinate::learn(shared, session, id, request, deadline),
        Message::Subscribe(subscribe) => {
            subscribe::start(shared, session, id, subscribe.topics).await
        }
        Message::Broadcast(topic) => broadcast::deliver(shared, topic).await,
        Message::MetricsQuery => {
            session
                .sender
                .send(
                    &Message::Metrics(metrics::snapshot(shared)),
                    id,
                    Deadline::NONE,
                )
                .await;
        }
        Message::CacheQuery | Message::CacheClear => {
            if matches!(message, Message::CacheClear) {
                shared.router.clear_cache();
            }
            let stats = shared.router.metrics().cache.unwrap_or_default();
            let body = qnllm_protocol::CacheStats {
                entries: stats.entries,
                capacity: stats.capacity,
                hits: stats.hits,
                misses: stats.misses,
                evictions: stats.evictions,
            };
            session
                .sender
                .send(&Message::CacheStats(body), id, Deadline::NONE)
                .await;
        }
        Message::Goodbye(_) => return Flow::Close,
        other => {
            let message = format!(
                "{} is not something a client sends to the hub",
                other.kind()
            );
            fail(&session.sender, id, ErrorCode::UnexpectedMessage, message).await;
        }
    }
    Flow::Continue
}
