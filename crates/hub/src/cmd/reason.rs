//! `reason` and `batch`: route through the router, answer with `result` or `batch_result`.

use std::sync::Arc;
use std::time::Duration;

use qnllm_protocol::{Batch, BatchResult, Deadline, Message};

use crate::cmd::{error_code, ClientSession};
use crate::convert::result_body;
use crate::hub::Shared;
use crate::session::fail;
use crate::stats::Counters;

pub(crate) fn one(
    shared: &Arc<Shared>,
    session: &ClientSession,
    id: u64,
    cost: usize,
    encoding: Vec<f32>,
    deadline: Duration,
    no_cache: bool,
) {
    Counters::add(&shared.counters.requests, 1);
    let (shared_, sender) = (shared.clone(), session.sender.clone());
    let connection = session.connection();
    session.spawn_costing(shared, id, cost, async move {
        let Some((_slot, deadline)) = routed(&shared_, connection, deadline).await else {
            return expired(&shared_, &sender, id, deadline).await;
        };
        // The router's future is about 3 KB: boxed, it is written once, where the task
        // would otherwise copy it on every move into place.
        let options = qnllm_router::RequestOptions {
            no_cache,
            ..Default::default()
        };
        match Box::pin(shared_.router.reason_with(&encoding, deadline, options)).await {
            Ok(answer) => {
                sender
                    .send(&Message::Result(result_body(&answer)), id, Deadline::NONE)
                    .await;
            }
            Err(err) => {
                Counters::add(&shared_.counters.errors, 1);
                fail(&sender, id, error_code(&err), err.to_string()).await;
            }
        }
    });
}

pub(crate) fn batch(
    shared: &Arc<Shared>,
    session: &ClientSession,
    id: u64,
    cost: usize,
    batch: Batch,
    deadline: Duration,
) {
    Counters::add(&shared.counters.requests, 1);
    let (shared_, sender) = (shared.clone(), session.sender.clone());
    let connection = session.connection();
    session.spawn_costing(shared, id, cost, async move {
        let Some((_slot, deadline)) = routed(&shared_, connection, deadline).await else {
            return expired(&shared_, &sender, id, deadline).await;
        };
        match Box::pin(
            shared_
                .router
                .reason_batch(batch.values(), batch.dim() as usize, deadline),
        )
        .await
        {
            Ok(answers) => {
                let results = answers.iter().map(result_body).collect();
                sender
                    .send(
                        &Message::BatchResult(BatchResult { results }),
                        id,
                        Deadline::NONE,
                    )
                    .await;
            }
            Err(err) => {
                Counters::add(&shared_.counters.errors, 1);
                fail(&sender, id, error_code(&err), err.to_string()).await;
            }
        }
    });
}

/// Waits for this connection's turn at a slot in the router, within `deadline`; the slot
/// and what is left of the deadline, or `None` if it passed while waiting.
async fn routed(
    shared: &Shared,
    connection: u64,
    deadline: Duration,
) -> Option<(crate::fair::Slot, Duration)> {
    let started = tokio::time::Instant::now();
    let slot = tokio::time::timeout(deadline, shared.fair.acquire(connection))
        .await
        .ok()?;
    Some((slot, deadline.saturating_sub(started.elapsed())))
}

/// Answers a request whose deadline passed while it waited for its turn.
async fn expired(
    shared: &Shared,
    sender: &crate::connection::FrameSender,
    id: u64,
    deadline: Duration,
) {
    Counters::add(&shared.counters.errors, 1);
    let message = format!(
        "the deadline of {deadline:?} passed while the request waited for its turn in the router"
    );
    fail(
        sender,
        id,
        qnllm_protocol::ErrorCode::DeadlineExceeded,
        message,
    )
    .await;
}
