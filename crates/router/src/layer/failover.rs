//! Failover: tries the plan's engines in order until one answers, within the request's
//! deadline and the retry budget; each try is an [`attempt`](super::attempt).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::attempt::{Counters, Reply, Slot, Tries};
use super::{Request, Route};
use crate::backend::{Answer, BackendError};
use crate::router::RouterError;

/// The failover layer (single engines, batches, and under a hedge).
#[derive(Debug, Clone)]
pub(crate) struct Failover {
    tries: Arc<Tries>,
}

impl Failover {
    pub(crate) fn new(tries: Arc<Tries>) -> Failover {
        Failover { tries }
    }

    /// Fails `request` over along its plan after a try already made for it failed with
    /// `prior` (a hedged primary): the first try here is then a retry, counted and charged
    /// as one.
    pub(crate) async fn after(
        &self,
        request: Request<'_>,
        prior: BackendError,
    ) -> Result<Answer, RouterError> {
        self.reason(request, Some(prior)).await
    }

    /// One encoding along its plan; `prior` as for `run`.
    async fn reason(
        &self,
        request: Request<'_>,
        prior: Option<BackendError>,
    ) -> Result<Answer, RouterError> {
        let encoding = request.encoding;
        self.run(
            request.plan,
            request.budget,
            request.started,
            1,
            prior,
            |slot, left| slot.backend.reason(encoding, left),
        )
        .await
    }

    /// Tries `plan` in order until one answers, within `budget` and the retry budget;
    /// `call` makes one try's future for an engine and its time limit, `items` is the
    /// encodings it carries. `prior` is the failure of a try already made (see `after`).
    pub(crate) async fn run<'p, T: Reply, F>(
        &self,
        plan: &'p [Slot],
        budget: Duration,
        started: Instant,
        items: u32,
        prior: Option<BackendError>,
        call: impl Fn(&'p Slot, Duration) -> F,
    ) -> Result<T, RouterError>
    where
        F: Future<Output = Result<T, BackendError>>,
    {
        let tries = &*self.tries;
        if plan.is_empty() && prior.is_none() {
            return Err(RouterError::NoEngineAvailable {
                reason: "no engine of the served model is registered".into(),
            });
        }
        // An engine that vanished never did the work: moving it elsewhere adds no load, so
        // that failover is not charged to the retry budget (timeouts and failures are).
        let mut last_was_gone = matches!(prior, Some(BackendError::Gone { .. }));
        let mut failures: Vec<String> = prior.iter().map(ToString::to_string).collect();
        for (i, slot) in plan.iter().enumerate() {
            let tried = failures.len();
            let Some(left) = budget
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
            else {
                return Err(RouterError::DeadlineExceeded { budget, tried });
            };
            if tried > 0 {
                if !last_was_gone && !tries.withdraw() {
                    return Err(RouterError::RetryBudgetExhausted {
                        tried,
                        last: failures.pop().unwrap_or_default(),
                    });
                }
                Counters::count(&tries.counters.retries);
            }
            let limit = tries.try_budget(left, i + 1 < plan.len());
            match tries.attempt(slot, limit, items, call(slot, limit)).await {
                Ok(answer) => return Ok(answer),
                Err(BackendError::InvalidInput(why)) => return Err(RouterError::InvalidInput(why)),
                Err(err) => {
                    last_was_gone = matches!(err, BackendError::Gone { .. });
                    failures.push(err.to_string());
                }
            }
        }
        Err(tries.give_up(budget, started, failures))
    }
}

impl Route for Failover {
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        self.reason(request, None).await
    }
}
