//! Hedge: when the first engine is slower than its observed p95, the second is asked too
//! and the first answer wins; the hedge is charged to the retry budget. Without a latency
//! history or a second engine, and when the primary fails, the request goes to failover.

use std::sync::Arc;

use futures::future::{select, Either};

use super::attempt::{Counters, Tries};
use super::failover::Failover;
use super::{Request, Route};
use crate::backend::{Answer, BackendError};
use crate::router::RouterError;

/// The hedge layer, over failover.
#[derive(Debug)]
pub(crate) struct Hedge {
    failover: Failover,
    tries: Arc<Tries>,
}

impl Hedge {
    pub(crate) fn new(failover: Failover, tries: Arc<Tries>) -> Hedge {
        Hedge { failover, tries }
    }
}

impl Route for Hedge {
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        let (tries, plan, encoding) = (&*self.tries, request.plan, request.encoding);
        let (budget, started) = (request.budget, request.started);
        // Without a second engine, or before the first has a latency history, there is
        // nothing to hedge with or to compare against.
        let p95 = plan.first().and_then(|s| s.health.quantile(0.95));
        let (Some(p95), true) = (p95, plan.len() >= 2) else {
            return self.failover.route(request).await;
        };
        let (primary, backup) = (&plan[0], &plan[1]);
        let limit = tries.try_budget(request.left(), true);
        // The backend's future is made here but computes only when polled, inside
        // `attempt`'s timer (a local engine too).
        let first =
            Box::pin(tries.attempt(primary, limit, 1, primary.backend.reason(encoding, limit)));
        let wait = Box::pin(tokio::time::sleep(p95.min(budget)));
        let first = match select(first, wait).await {
            Either::Left((Ok(answer), _)) => return Ok(answer),
            Either::Left((Err(BackendError::InvalidInput(why)), _)) => {
                return Err(RouterError::InvalidInput(why))
            }
            // Failing over from the primary is a retry: counted, and charged to the budget.
            Either::Left((Err(err), _)) => {
                return self.failover.after(request.on(&plan[1..]), err).await;
            }
            Either::Right(((), first)) => first,
        };
        // The primary is slower than usual: ask the backup too, if the retry budget allows
        // the extra load; the first answer wins.
        if !tries.withdraw() {
            return first.await.map_err(|err| match err {
                BackendError::InvalidInput(why) => RouterError::InvalidInput(why),
                err => tries.give_up(budget, started, vec![err.to_string()]),
            });
        }
        Counters::count(&tries.counters.hedges);
        let left = request.left();
        let second =
            Box::pin(tries.attempt(backup, left, 1, backup.backend.reason(encoding, left)));
        let (err, other) = match select(first, second).await {
            Either::Left((Ok(answer), _)) => return Ok(answer),
            Either::Right((Ok(answer), _)) => {
                Counters::count(&tries.counters.hedge_wins);
                return Ok(answer);
            }
            Either::Left((Err(err), other)) => (err, other.await),
            Either::Right((Err(err), other)) => (err, other.await),
        };
        match (err, other) {
            (_, Ok(answer)) => Ok(answer),
            (BackendError::InvalidInput(why), _) | (_, Err(BackendError::InvalidInput(why))) => {
                Err(RouterError::InvalidInput(why))
            }
            (a, Err(b)) => Err(tries.give_up(budget, started, vec![a.to_string(), b.to_string()])),
        }
    }
}
