//! What the hub does with each message a client sends: one file per verb.

pub(crate) mod broadcast;
pub mod call;
pub(crate) mod coordinate;
pub(crate) mod metrics;
pub(crate) mod reason;
pub(crate) mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qnllm_protocol::{Deadline, ErrorCode, Frame, Message, WireError};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HubConfig;
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
    /// Request bytes (frame payloads) of the requests in flight.
    bytes: Arc<AtomicUsize>,
    /// Woken whenever a request ends, so a reader paused at the budget can go on.
    freed: Arc<Notify>,
    max_requests: usize,
    max_bytes: usize,
    pub(crate) max_subscriptions: usize,
    /// Subscriptions this connection holds.
    pub(crate) subscriptions: AtomicUsize,
    /// This connection's request tasks, so its end can wait for their answers.
    tasks: TaskTracker,
    pub(crate) ended: CancellationToken,
}

impl ClientSession {
    pub(crate) fn new(
        sender: FrameSender,
        stats: Arc<ConnectionStats>,
        config: &HubConfig,
    ) -> ClientSession {
        ClientSession {
            sender,
            in_flight: Arc::default(),
            stats,
            bytes: Arc::default(),
            freed: Arc::default(),
            max_requests: config.max_requests_per_connection.max(1),
            max_bytes: config.max_request_bytes_per_connection.max(1),
            max_subscriptions: config.max_subscriptions_per_connection,
            subscriptions: AtomicUsize::new(0),
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

    fn full(&self) -> bool {
        self.stats.in_flight.load(Ordering::Acquire) >= self.max_requests as u64
            || self.bytes.load(Ordering::Acquire) >= self.max_bytes
    }

    /// Returns once the connection is below its budget of requests and bytes in flight;
    /// while it is not, the connection is not read (and the stats say `paused`).
    /// `on_pause` is called as reading pauses.
    pub(crate) async fn room(&self, on_pause: impl Fn()) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.full() {
                self.stats.paused.store(false, Ordering::Relaxed);
                return;
            }
            if !self.stats.paused.swap(true, Ordering::Relaxed) {
                on_pause();
            }
            freed.await;
        }
    }

    /// The session id of this connection.
    pub(crate) fn connection(&self) -> u64 {
        self.stats.session
    }

    /// Nothing is in flight.
    pub(crate) fn idle(&self) -> bool {
        self.stats.in_flight.load(Ordering::Acquire) == 0
    }

    /// Runs `work` as a tracked request task that a `cancel` with the same id can abort;
    /// `cost` request bytes count against the connection's byte budget until it ends. A
    /// request id already in flight on this connection is refused with
    /// `DuplicateRequestId`, so each reply names one request.
    pub(crate) fn spawn_costing(
        &self,
        shared: &Shared,
        request_id: u64,
        cost: usize,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        {
            // Insert under the lock the task needs to remove itself: the insert comes first
            // even if the task finishes at once.
            let mut map = self.in_flight();
            if !map.contains_key(&request_id) {
                let (in_flight, stats) = (self.in_flight.clone(), self.stats.clone());
                stats.in_flight.fetch_add(1, Ordering::AcqRel);
                self.bytes.fetch_add(cost, Ordering::AcqRel);
                let done = InFlight {
                    stats,
                    bytes: self.bytes.clone(),
                    cost,
                    freed: self.freed.clone(),
                };
                let work = self.tasks.track_future(work);
                let task = shared.requests.spawn(async move {
                    let _done = done; // counts down however the task ends, abort included
                    work.await;
                    in_flight
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&request_id);
                });
                map.insert(request_id, task.abort_handle());
                return;
            }
        }
        Counters::add(&shared.counters.errors, 1);
        let message = format!(
            "request id {request_id} is already in flight on this connection; \
             use a fresh id per request (its first request goes on)"
        );
        let sender = self.sender.clone();
        shared.requests.spawn(async move {
            fail(&sender, request_id, ErrorCode::DuplicateRequestId, message).await;
        });
    }

    /// [`ClientSession::spawn_costing`] for a request whose bytes are small.
    pub(crate) fn spawn(
        &self,
        shared: &Shared,
        request_id: u64,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_costing(shared, request_id, 0, work);
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

    /// The connection is over: let its requests finish (until `deadline`) so their answers
    /// are queued before the writer closes; answer what is cut at the deadline with
    /// `ShuttingDown`; then stop its helpers (subscriptions).
    pub(crate) async fn end(&self, deadline: tokio::time::Instant) {
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            let cut: Vec<(u64, AbortHandle)> = self.in_flight().drain().collect();
            tracing::warn!(
                requests = cut.len(),
                "grace period over: cutting requests in flight"
            );
            for (id, task) in cut {
                task.abort();
                let error = WireError::new(
                    ErrorCode::ShuttingDown,
                    "the hub's grace period ended before this request finished",
                );
                self.sender
                    .send(&Message::Error(error), id, Deadline::NONE)
                    .await;
            }
        }
        self.ended.cancel();
    }
}

/// Counts a request out of its connection's figures and budget when its task ends.
struct InFlight {
    stats: Arc<ConnectionStats>,
    bytes: Arc<AtomicUsize>,
    cost: usize,
    freed: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(self.cost, Ordering::AcqRel);
        self.freed.notify_one();
    }
}

/// Handles one frame from a client.
pub(crate) async fn dispatch(shared: &Arc<Shared>, session: &ClientSession, frame: Frame) -> Flow {
    let id = frame.header.request_id;
    let cost = frame.payload.len();
    let message = match frame.message() {
        Ok(message) => message,
        Err(err) => {
            Counters::add(&shared.counters.protocol_errors, 1);
            fail(&session.sender, id, err.code(), err.to_string()).await;
            return Flow::Close;
        }
    };
    let work = matches!(
        message,
        Message::Reason(_)
            | Message::Batch(_)
            | Message::Coordinate(_)
            | Message::Learn(_)
            | Message::Call(_)
            | Message::Subscribe(_)
            | Message::Broadcast(_)
    );
    if work && shared.shutdown.is_cancelled() {
        let message = "the hub is shutting down and takes no new work; retry on another hub";
        fail(&session.sender, id, ErrorCode::ShuttingDown, message).await;
        return Flow::Continue;
    }
    let deadline = match frame.header.deadline.remaining() {
        // A budget that is already spent when the frame is read.
        Some(budget) if budget < MIN_BUDGET && work => {
            Counters::add(&shared.counters.expired_on_arrival, 1);
            let message =
                format!("the deadline of {budget:?} passed before the hub could route the request");
            fail(&session.sender, id, ErrorCode::DeadlineExceeded, message).await;
            return Flow::Continue;
        }
        Some(budget) => budget,
        None => shared.config.default_deadline(),
    };
    match message {
        Message::Ping => {
            session
                .sender
                .send(&Message::Pong, id, Deadline::NONE)
                .await;
        }
        Message::Reason(encoding) => {
            let no_cache = frame.header.flags.contains(qnllm_protocol::Flags::NO_CACHE);
            reason::one(shared, session, id, cost, encoding.0, deadline, no_cache)
        }
        Message::Batch(batch) => reason::batch(shared, session, id, cost, batch, deadline),
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
        Message::Broadcast(topic) => broadcast::deliver(shared, topic),
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
            // `UnexpectedMessage` is a protocol failure (code < 16 closes, docs/protocol.md).
            Counters::add(&shared.counters.protocol_errors, 1);
            let message = format!(
                "{} is not something a client sends to the hub; closing",
                other.kind()
            );
            fail(&session.sender, id, ErrorCode::UnexpectedMessage, message).await;
            return Flow::Close;
        }
    }
    Flow::Continue
}

/// A deadline budget below this on arrival cannot be met by any engine (a hop to a worker
/// and back alone takes longer): it is answered `DeadlineExceeded` at once, never routed.
const MIN_BUDGET: std::time::Duration = std::time::Duration::from_micros(20);
