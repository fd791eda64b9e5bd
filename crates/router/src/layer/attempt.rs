//! The innermost layer: one try on one engine, within its own time limit, with the
//! engine's health kept up to date and its reply checked before anything above uses it;
//! and what every layer shares: the router's counters and retry budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Answer, Backend, BackendError, EngineId, ModelState};
use crate::budget::RetryBudget;
use crate::health::Health;
use crate::router::RouterError;

/// An engine and what the router has seen of it.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) id: EngineId,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) health: Arc<Health>,
    /// Most tries in flight at once (`max_in_flight` from its registration).
    pub(crate) limit: Option<u64>,
    /// Labels it registered: every reply is checked against it.
    pub(crate) labels: u32,
}

impl Slot {
    /// Whether it may take one more try: below its in-flight limit, counting the router's
    /// own tries and what the engine says it holds ([`Backend::in_flight`]), whichever is
    /// more (requests can reach it around this router).
    pub(crate) fn has_room(&self) -> bool {
        self.limit.is_none_or(|limit| {
            let ours = self.health.in_flight.load(Ordering::Relaxed);
            ours.max(self.backend.in_flight().unwrap_or(0)) < limit
        })
    }
}

/// Decrements a slot's in-flight count however a try ends (answered, failed, dropped).
struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A reply the router checks before it uses it.
pub(crate) trait Reply {
    /// What is wrong with it, if anything, for a call of `items` encodings to `slot`,
    /// whose model was `before` when the call began.
    fn fault(&self, slot: &Slot, items: u32, before: &ModelState) -> Option<String>;

    /// Names the engine that answered as this router knows it, whatever the engine itself
    /// wrote (a worker may leave it empty, and two workers may share one name).
    fn answered_by(&mut self, name: &str);
}

impl Reply for Answer {
    fn fault(&self, slot: &Slot, _items: u32, before: &ModelState) -> Option<String> {
        let r = &self.reasoning;
        let labels = slot.labels as usize;
        if r.scores.len() != labels || r.label_spikes.len() != labels {
            return Some(format!(
                "{} scores and {} label spike counts for {labels} labels",
                r.scores.len(),
                r.label_spikes.len()
            ));
        }
        if r.label >= slot.labels {
            return Some(format!("label {} of {labels}", r.label));
        }
        // The lowest label with the top score, as the engine spec says.
        let top = r.scores.iter().copied().max().unwrap_or(0);
        if r.scores.iter().position(|&s| s == top) != Some(r.label as usize) {
            return Some(format!("label {} is not the top score's", r.label));
        }
        // The engine may have learned during the call: its model before or after is fine.
        if r.model_digest != before.digest && r.model_digest != slot.backend.model_digest() {
            return Some(format!(
                "answered with model {}, the engine serves {}",
                r.model_digest.short(),
                before.digest.short()
            ));
        }
        if r.result_digest != r.expected_result_digest() {
            return Some("the result digest does not match the integer outputs".into());
        }
        None
    }

    fn answered_by(&mut self, name: &str) {
        if self.engine != name {
            name.clone_into(&mut self.engine);
        }
    }
}

impl Reply for Vec<Answer> {
    fn fault(&self, slot: &Slot, items: u32, before: &ModelState) -> Option<String> {
        if self.len() != items as usize {
            return Some(format!("batch of {items} gave {} answers", self.len()));
        }
        self.iter().enumerate().find_map(|(i, a)| {
            a.fault(slot, 1, before)
                .map(|why| format!("answer {i} of the batch: {why}"))
        })
    }

    fn answered_by(&mut self, name: &str) {
        for answer in self {
            answer.answered_by(name);
        }
    }
}

/// The router's decision counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedge_wins: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) disagreements: AtomicU64,
    pub(crate) bad_replies: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_items: AtomicU64,
}

impl Counters {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the layers share: the counters, the retry budget every extra try draws on, and the
/// per-try time limit. One per router, kept across policy changes.
#[derive(Debug)]
pub(crate) struct Tries {
    pub(crate) counters: Counters,
    pub(crate) budget: RetryBudget,
    per_try_timeout: Option<Duration>,
}

impl Tries {
    pub(crate) fn new(budget: RetryBudget, per_try_timeout: Option<Duration>) -> Tries {
        Tries {
            counters: Counters::default(),
            budget,
            per_try_timeout,
        }
    }

    /// The time one try may take when `left` remains and `more` engines could follow.
    pub(crate) fn try_budget(&self, left: Duration, more: bool) -> Duration {
        match self.per_try_timeout {
            Some(limit) => limit.min(left),
            None if more => left / 2,
            None => left,
        }
    }

    /// Takes a token for one more try (a retry or a hedge); counts a refusal.
    pub(crate) fn withdraw(&self) -> bool {
        let granted = self.budget.withdraw();
        if !granted {
            Counters::count(&self.counters.budget_exhausted);
        }
        granted
    }

    /// The error for a request that got no answer after `failures`.
    pub(crate) fn give_up(
        &self,
        budget: Duration,
        started: Instant,
        failures: Vec<String>,
    ) -> RouterError {
        if started.elapsed() >= budget {
            return RouterError::DeadlineExceeded {
                budget,
                tried: failures.len(),
            };
        }
        RouterError::EnginesFailed {
            tried: failures.len(),
            detail: failures.join("; "),
        }
    }

    /// Runs one try on `slot` for at most `limit`, keeping its health up to date, and
    /// checks the reply before it is used. The limit is enforced here: a backend that
    /// ignores its budget still cannot hold the request. A reply that fails its checks is
    /// the engine's fault: counted, the engine ejected, and the try failed (retryable).
    /// `items` is how many encodings the call carries: a batch's latency is recorded per
    /// encoding, so one large batch does not make an engine look slow for single requests.
    /// `call` is made by the caller but computes only when polled, inside the timer (a
    /// local engine too).
    pub(crate) async fn attempt<T: Reply>(
        &self,
        slot: &Slot,
        limit: Duration,
        items: u32,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let health = &slot.health;
        health.requests.fetch_add(1, Ordering::Relaxed);
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(health);
        let before = slot.backend.model_state();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, call).await {
            Ok(Ok(mut reply)) => match reply.fault(slot, items, &before) {
                None => {
                    reply.answered_by(slot.backend.name());
                    Ok(reply)
                }
                Some(reason) => Err(BackendError::BadReply {
                    engine: slot.backend.name().to_string(),
                    reason,
                }),
            },
            Ok(Err(err)) => Err(err),
            Err(_) => Err(BackendError::Timeout {
                engine: slot.backend.name().to_string(),
                budget: limit,
            }),
        };
        drop(in_flight);
        match &outcome {
            Ok(_) => health.success(started.elapsed() / items.max(1)),
            // A bad request says nothing about the engine.
            Err(BackendError::InvalidInput(_)) => {}
            Err(err) => {
                let bad = matches!(err, BackendError::BadReply { .. });
                if bad {
                    Counters::count(&self.counters.bad_replies);
                }
                if health.failure(bad, started) {
                    Counters::count(&self.counters.ejections);
                }
            }
        }
        outcome
    }
}
