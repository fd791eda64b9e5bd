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
    session.spawn_costing(shared, id, cost, async move {
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
    session.spawn_costing(shared, id, cost, async move {
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
