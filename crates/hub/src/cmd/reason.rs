//! `reason` and `batch`: wait for the connection's turn, route through the router, answer
//! with `result` or `batch_result`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use qnllm_protocol::{BatchResult, Deadline, ErrorCode, Message};
use qnllm_router::{RequestOptions, Router, RouterError};

use crate::cmd::requests::ClientSession;
use crate::connection::FrameSender;
use crate::convert::{error_code, result_body};
use crate::fair::{Fair, Slot};
use crate::stats::Counters;

/// What `reason` and `batch` need of the hub: the router, and the turns at it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routing<'a> {
    pub(crate) router: &'a Arc<Router>,
    pub(crate) fair: &'a Arc<Fair>,
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
/// or its error.
fn spawn_routed<F, Fut>(
    routing: Routing<'_>,
    session: &ClientSession,
    id: u64,
    cost: usize,
    deadline: Duration,
    route: F,
) where
    F: FnOnce(Arc<Router>, Duration) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Message, RouterError>> + Send,
{
    Counters::add(&session.counters().requests, 1);
    let (router, fair) = (routing.router.clone(), routing.fair.clone());
    let (sender, counters) = (session.sender.clone(), session.counters_handle());
    let connection = session.connection();
    session.spawn_costing(id, cost, async move {
        let Some((_slot, deadline)) = routed(&fair, connection, deadline).await else {
            return expired(&counters, &sender, id, deadline).await;
        };
        // The router's future is about 3 KB: boxed, it is written once, where the task
        // would otherwise copy it on every move into place.
        match Box::pin(route(router, deadline)).await {
            Ok(reply) => {
                sender.send(&reply, id, Deadline::NONE).await;
            }
            Err(err) => {
                Counters::add(&counters.errors, 1);
                sender.fail(id, error_code(&err), err.to_string()).await;
            }
        }
    });
}

/// Waits for this connection's turn at a slot in the router, within `deadline`; the slot
/// and what is left of the deadline, or `None` if it passed while waiting.
async fn routed(fair: &Arc<Fair>, connection: u64, deadline: Duration) -> Option<(Slot, Duration)> {
    let started = tokio::time::Instant::now();
    let slot = tokio::time::timeout(deadline, fair.acquire(connection))
        .await
        .ok()?;
    Some((slot, deadline.saturating_sub(started.elapsed())))
}

/// Answers a request whose deadline passed while it waited for its turn.
async fn expired(counters: &Counters, sender: &FrameSender, id: u64, deadline: Duration) {
    Counters::add(&counters.errors, 1);
    let message = format!(
        "the deadline of {deadline:?} passed while the request waited for its turn in the router"
    );
    sender.fail(id, ErrorCode::DeadlineExceeded, message).await;
}
