//! A client connection's requests in flight: their budget of count and bytes, the task each
//! runs in, cancel by id, and what is cut when the connection ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qnllm_protocol::ErrorCode;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HubConfig;
use crate::connection::FrameSender;
use crate::stats::{ConnectionStats, Counters};

/// The requests in flight on one connection by id: a token that tells apart requests that
/// used one id in turn, and the request's task.
type InFlight = Arc<Mutex<HashMap<u64, (u64, AbortHandle)>>>;

fn lock(in_flight: &InFlight) -> MutexGuard<'_, HashMap<u64, (u64, AbortHandle)>> {
    // Single inserts and removes only: a poisoned map is still consistent.
    in_flight
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Per-connection state of a client: where replies go, what is in flight, when it ends.
#[derive(Debug)]
pub(crate) struct ClientSession {
    pub(crate) sender: FrameSender,
    in_flight: InFlight,
    /// The token the next request gets.
    next_token: AtomicU64,
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
    /// Every request task of the hub, so its shutdown can wait for them.
    requests: TaskTracker,
    counters: Arc<Counters>,
    pub(crate) ended: CancellationToken,
}

impl ClientSession {
    pub(crate) fn new(
        sender: FrameSender,
        stats: Arc<ConnectionStats>,
        config: &HubConfig,
        requests: TaskTracker,
        counters: Arc<Counters>,
    ) -> ClientSession {
        ClientSession {
            sender,
            in_flight: Arc::default(),
            next_token: AtomicU64::new(0),
            stats,
            bytes: Arc::default(),
            freed: Arc::default(),
            max_requests: config.max_requests_per_connection.max(1),
            max_bytes: config.max_request_bytes_per_connection.max(1),
            max_subscriptions: config.max_subscriptions_per_connection,
            subscriptions: AtomicUsize::new(0),
            tasks: TaskTracker::new(),
            requests,
            counters,
            ended: CancellationToken::new(),
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, (u64, AbortHandle)>> {
        lock(&self.in_flight)
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

    /// The hub's counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The hub's counters, for a task that outlives this borrow.
    pub(crate) fn counters_handle(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The session id of this connection.
    pub(crate) fn connection(&self) -> u64 {
        self.stats.session
    }

    /// Nothing is in flight.
    pub(crate) fn idle(&self) -> bool {
        self.stats.in_flight.load(Ordering::Acquire) == 0
    }

    /// Runs the future `work` makes as a tracked request task that a `cancel` with the same
    /// id can abort; `cost` request bytes count against the connection's byte budget until
    /// it ends. A request id already in flight on this connection is refused with
    /// `DuplicateRequestId`, so each reply names one request. `work` gets the request's
    /// [`ReplyRight`]; a task that does not take it is out of the id table when it ends.
    pub(crate) fn spawn_costing<Fut>(
        &self,
        request_id: u64,
        cost: usize,
        work: impl FnOnce(ReplyRight) -> Fut,
    ) where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        {
            // Insert under the lock the task needs to remove itself: the insert comes first
            // even if the task finishes at once.
            let mut map = self.in_flight();
            if !map.contains_key(&request_id) {
                let right = ReplyRight {
                    in_flight: self.in_flight.clone(),
                    id: request_id,
                    token: self.next_token.fetch_add(1, Ordering::Relaxed),
                };
                let token = right.token;
                let stats = self.stats.clone();
                stats.in_flight.fetch_add(1, Ordering::AcqRel);
                self.bytes.fetch_add(cost, Ordering::AcqRel);
                let done = Counted {
                    stats,
                    bytes: self.bytes.clone(),
                    cost,
                    freed: self.freed.clone(),
                };
                let work = self.tasks.track_future(work(right.clone()));
                let task = self.requests.spawn(async move {
                    let _done = done; // counts down however the task ends, abort included
                    work.await;
                    right.take();
                });
                map.insert(request_id, (token, task.abort_handle()));
                return;
            }
        }
        Counters::add(&self.counters.errors, 1);
        let message = format!(
            "request id {request_id} is already in flight on this connection; \
             use a fresh id per request (its first request goes on)"
        );
        let sender = self.sender.clone();
        self.requests.spawn(async move {
            sender
                .fail(request_id, ErrorCode::DuplicateRequestId, message)
                .await;
        });
    }

    /// [`ClientSession::spawn_costing`] for a request whose bytes are small.
    pub(crate) fn spawn(
        &self,
        request_id: u64,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_costing(request_id, 0, |_| work);
    }

    /// Every request task of the hub, for a reply sent from outside the runtime.
    pub(crate) fn requests(&self) -> TaskTracker {
        self.requests.clone()
    }

    /// Aborts the request `request_id`; whether it was still running.
    pub(crate) fn cancel(&self, request_id: u64) -> bool {
        match self.in_flight().remove(&request_id) {
            Some((_, task)) => {
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
            let cut: Vec<(u64, (u64, AbortHandle))> = self.in_flight().drain().collect();
            tracing::warn!(
                requests = cut.len(),
                "grace period over: cutting requests in flight"
            );
            for (id, (_, task)) in cut {
                task.abort();
                let message = "the hub's grace period ended before this request finished";
                self.sender.fail(id, ErrorCode::ShuttingDown, message).await;
            }
        }
        self.ended.cancel();
    }
}

/// The right to answer one request, held by its task and by whoever else may answer it.
/// The first to take it answers: the task with its reply, the hub's alarm at the deadline;
/// a `cancel` and the end of the grace period take it too, by removing the request.
#[derive(Debug, Clone)]
pub(crate) struct ReplyRight {
    in_flight: InFlight,
    id: u64,
    token: u64,
}

impl ReplyRight {
    /// Whether the caller answers the request: `true` once, to the first. It also frees the
    /// request's id, so the client may use it again once it has the answer.
    pub(crate) fn take(&self) -> bool {
        let mut map = lock(&self.in_flight);
        let ours = map
            .get(&self.id)
            .is_some_and(|&(token, _)| token == self.token);
        if ours {
            map.remove(&self.id);
        }
        ours
    }
}

/// Counts a request out of its connection's figures and budget when its task ends.
struct Counted {
    stats: Arc<ConnectionStats>,
    bytes: Arc<AtomicUsize>,
    cost: usize,
    freed: Arc<Notify>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(self.cost, Ordering::AcqRel);
        self.freed.notify_one();
    }
}
