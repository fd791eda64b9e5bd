//! `Router`: the live set of backends, and failover across them within a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::backend::{Answer, Backend, BackendError};
use crate::strategy::RoundRobin;

/// Why the router could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The request is bad; retrying elsewhere would not help.
    #[error("{0}")]
    InvalidInput(String),
    /// No engine is registered, or every engine tried failed.
    #[error("no engine available ({reason}); start one with `qnllm worker --connect ADDR` or `qnllm serve --local 1`")]
    NoEngineAvailable {
        /// What was tried and how it failed.
        reason: String,
    },
    /// The deadline passed before any engine answered.
    #[error("deadline of {budget:?} exceeded after trying {tried} engine(s)")]
    DeadlineExceeded {
        /// The request's budget.
        budget: Duration,
        /// Engines tried.
        tried: usize,
    },
}

/// Chooses a backend per request and fails over to the others.
#[derive(Debug)]
pub struct Router {
    backends: ArcSwap<Vec<Arc<dyn Backend>>>,
    round_robin: RoundRobin,
}

impl Default for Router {
    fn default() -> Router {
        Router {
            backends: ArcSwap::from_pointee(Vec::new()),
            round_robin: RoundRobin::default(),
        }
    }
}

impl Router {
    /// A router with no backends.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a backend; requests may reach it at once.
    pub fn add(&self, backend: Arc<dyn Backend>) {
        self.backends.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(backend.clone());
            list
        });
    }

    /// Removes the backend named `name`; requests already sent to it finish or fail over.
    pub fn remove(&self, name: &str) {
        self.backends.rcu(|list| {
            list.iter()
                .filter(|b| b.name() != name)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// The backends now in service.
    pub fn backends(&self) -> Arc<Vec<Arc<dyn Backend>>> {
        self.backends.load_full()
    }

    /// Reasons over `encoding`: round-robin start, then each other engine in turn while the
    /// failure is retryable and `budget` lasts.
    ///
    /// # Errors
    ///
    /// See [`RouterError`].
    pub async fn reason(&self, encoding: &[f32], budget: Duration) -> Result<Answer, RouterError> {
        self.with_failover(budget, |backend, left| async move {
            backend.reason(encoding, left).await
        })
        .await
    }

    /// Reasons over a flat batch on one engine (with failover), answers in input order.
    ///
    /// # Errors
    ///
    /// See [`RouterError`].
    pub async fn reason_batch(
        &self,
        values: &[f32],
        dim: usize,
        budget: Duration,
    ) -> Result<Vec<Answer>, RouterError> {
        self.with_failover(budget, |backend, left| async move {
            backend.reason_batch(values, dim, left).await
        })
        .await
    }

    async fn with_failover<T, F>(
        &self,
        budget: Duration,
        call: impl Fn(Arc<dyn Backend>, Duration) -> F,
    ) -> Result<T, RouterError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        let started = Instant::now();
        let backends = self.backends.load_full();
        if backends.is_empty() {
            return Err(RouterError::NoEngineAvailable {
                reason: "no engine is registered".into(),
            });
        }
        let first = self.round_robin.start(backends.len());
        let mut failures = Vec::new();
        for offset in 0..backends.len() {
            let Some(left) = budget
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
            else {
                return Err(RouterError::DeadlineExceeded {
                    budget,
                    tried: offset,
                });
            };
            let backend = &backends[(first + offset) % backends.len()];
            match call(backend.clone(), left).await {
                Ok(answer) => return Ok(answer),
                Err(BackendError::InvalidInput(why)) => return Err(RouterError::InvalidInput(why)),
                Err(err) => failures.push(err.to_string()),
            }
        }
        if started.elapsed() >= budget {
            return Err(RouterError::DeadlineExceeded {
                budget,
                tried: backends.len(),
            });
        }
        Err(RouterError::NoEngineAvailable {
            reason: failures.join("; "),
        })
    }
}
