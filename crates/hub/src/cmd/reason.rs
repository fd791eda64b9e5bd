//! `reason` and `batch`: wait for the connection's turn, route through the router, answer
//! with `result` or `batch_result`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_protocol::{BatchResult, Deadline, ErrorCode, Message};
use qnllm_router::{RequestOptions, Router, RouterError};

use crate::alarm::Alarms;
use crate::cmd::requests::ClientSession;
use crate::convert::{error_code, result_body};
use crate::fair::Fair;
use crate::stats::Counters;

/// What `reason` and `batch` need of the hub: the router, the turns at it, and the alarms
/// that answer at the deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routing<'a> {
    pub(crate) router: &'a Arc<Router>,
    pub(crate) fair: &'a Arc<Fair>,
    pub(crate) alarms: &'a Alarms,
}

/// One `reason` request as read.
#[derive(Debug)]
pub(crate) struct Reason {
    pub(crate) id: u64,
    /// Its payload's bytes, counted against the connection's budget while it runs.
    pub(crate) cost: usize,
    pub(crate) encoding: Vec<f32>,
    pub(crate) deadline: Duration,
    pub(crate) no_cache: bool,
}

impl Reason {
    /// Runs the request in a task of its own, which answers it.
    pub(crate) fn apply(self, routing: Routing<'_>, session: &ClientSession) {
        let Reason {
            id,
            cost,
            encoding,
            deadline,
            no_cache,
        } = self;
        let options = RequestOptions {
            no_cache,
            ..Default::default()
        };
        spawn_routed(
            routing,
            session,
            id,
            cost,
            deadline,
            move |router, deadline| async move {
                let answer = router.reason_with(&encoding, deadline, options).await?;
                Ok(Message::Result(result_body(&answer)))
            },
        );
    }
}

/// One `batch` request as read.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) id: u64,
    /// Its payload's bytes, counted against the connection's budget while it runs.
    pub(crate) cost: usize,
    pub(crate) batch: qnllm_protocol::Batch,
    pub(crate) deadline: Duration,
}

impl Batch {
    /// Runs the batch in a task of its own, which answers it.
    pub(crate) fn apply(self, routing: Routing<'_>, session: &ClientSession) {
        let Batch {
            id,
            cost,
            batch,
            deadline,
        } = self;
        spawn_routed(
            routing,
            session,
            id,
            cost,
            deadline,
            move |router, deadline| async move {
                let answers = router
                    .reason_batch(batch.values(), batch.dim() as usize, deadline)
                    .await?;
                let results = answers.iter().map(result_body).collect();
                Ok(Message::BatchResult(BatchResult { results }))
            },
        );
    }
}

/// Counts the request and runs it in a task of its own: waits for the connection's turn at
/// the router, then `route` with what is left of the deadline, and answers with its reply
/// or its error. The deadline counts from now, as the frame is read, not from when the
/// task first runs; at the deadline the request is answered `DeadlineExceeded` by the
/// hub's alarm (to within tens of µs, where the router's timers round up to a whole
/// millisecond), and an answer that comes after it is not forwarded.
fn spawn_routed<F, Fut>(
    routing: Routing<'_>,
    session: &ClientSession,
    id: u64,
    cost: usize,
    budget: Duration,
    route: F,
) where
    F: FnOnce(Arc<Router>, Duration) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Message, RouterError>> + Send,
{
    Counters::add(&session.counters().requests, 1);
    let now = Instant::now();
    // A budget too large to add is as good as none: a year.
    let expires = now
        .checked_add(budget)
        .unwrap_or(now + Duration::from_secs(365 * 86_400));
    let alarm = routing.alarms.at(expires);
    let (router, fair) = (routing.router.clone(), routing.fair.clone());
    let (sender, counters) = (session.sender.clone(), session.counters_handle());
    let connection = session.connection();
    session.spawn_costing(id, cost, async move {
        // Set once the request has its turn at the router (an atomic, not a `Cell`, so the
        // task stays `Send`).
        let turn_taken = AtomicBool::new(false);
        let work = async {
            let slot = fair.acquire(connection).await;
            turn_taken.store(true, Ordering::Relaxed);
            let left = expires.saturating_duration_since(Instant::now());
            // The router's future is about 3 KB: boxed, it is written once, where the
            // task would otherwise copy it on every move into place.
            let outcome = Box::pin(route(router, left)).await;
            drop(slot);
            outcome
        };
        let outcome = tokio::select! {
            biased;
            () = alarm => None,
            outcome = work => Some(outcome),
        };
        let late = Instant::now().saturating_duration_since(expires);
        let held_back = matches!(outcome, Some(Ok(_)));
        let message = match outcome {
            None if !turn_taken.load(Ordering::Relaxed) => format!(
                "the deadline of {budget:?} passed while the request waited for its turn in \
                 the router"
            ),
            None => format!("the deadline of {budget:?} passed before an engine answered"),
            Some(Ok(_)) if !late.is_zero() => {
                format!("the answer came {late:?} after the deadline of {budget:?}; not forwarded")
            }
            Some(Ok(reply)) => {
                sender.send(&reply, id, Deadline::NONE).await;
                return;
            }
            Some(Err(err)) => {
                Counters::add(&counters.errors, 1);
                if matches!(err, RouterError::DeadlineExceeded { .. }) {
                    let lateness = Instant::now().saturating_duration_since(expires);
                    counters.deadlines.record(lateness, false);
                }
                sender.fail(id, error_code(&err), err.to_string()).await;
                return;
            }
        };
        Counters::add(&counters.errors, 1);
        // Counted before it is sent: a client that reads the error and then asks for the
        // metrics finds it there.
        counters
            .deadlines
            .record(Instant::now().saturating_duration_since(expires), held_back);
        sender.fail(id, ErrorCode::DeadlineExceeded, message).await;
    });
}
