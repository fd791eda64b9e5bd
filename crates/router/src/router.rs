//! `Router`: the live engines, a strategy to order them, and the ways of running a request:
//! one engine with failover, hedged, or redundant with a majority vote. Results may be
//! served from the cache; every decision is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::future::{select, Either};
use serde::Serialize;
use tokio::time::Instant;

use crate::backend::{Answer, Backend, BackendError, EngineInfo};
use crate::budget::RetryBudget;
use crate::cache::{CacheStats, ResultCache};
use crate::health::{Health, HealthSnapshot};
use crate::strategy::{Candidate, RoundRobin, Strategy};
use qnllm_engine::Digest;

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
    /// Redundant engines disagreed and no majority emerged.
    #[error("redundant engines disagree: {detail}")]
    Disagreement {
        /// Which engine said what.
        detail: String,
    },
}

/// Fewest encodings worth a batch frame of their own when a batch is split across engines.
pub const MIN_BATCH_PART: usize = 64;

/// Settings of one request that differ from the router's: its own strategy, or no cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOptions<'a> {
    /// Orders the engines for this request instead of the router's strategy.
    pub strategy: Option<&'a dyn Strategy>,
    /// Neither read nor fill the result cache.
    pub no_cache: bool,
}

/// How one request is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Mode {
    /// On the strategy's first engine; on failure, the next (within the retry budget).
    Single,
    /// As `Single`, and if the first engine is slower than its observed p95, also on the
    /// second; the first answer wins.
    Hedged,
    /// On `copies` (≥ 2) distinct engines at once; result digests are compared and the
    /// majority wins. An engine outvoted is ejected; without a majority it is an error.
    Redundant {
        /// Engines per request.
        copies: usize,
    },
}

/// Settings of a router.
#[derive(Debug)]
pub struct RouterConfig {
    /// How engines are ordered.
    pub strategy: Box<dyn Strategy>,
    /// How a request is run.
    pub mode: Mode,
    /// Seed of the router's random choices (strategies), for replayable decisions.
    pub seed: u64,
    /// Retries allowed as a share of requests.
    pub retry_ratio: f64,
    /// Retries allowed per second regardless of traffic.
    pub retry_min_per_second: f64,
    /// Result cache entries; `None` disables the cache.
    pub cache_capacity: Option<usize>,
    /// Longest single try. `None`: half of what is left when another engine could still be
    /// tried, all of it for the last one, so a stuck engine never eats the whole deadline.
    pub per_try_timeout: Option<Duration>,
}

impl Default for RouterConfig {
    fn default() -> RouterConfig {
        RouterConfig {
            strategy: Box::new(RoundRobin::default()),
            mode: Mode::Single,
            seed: 0x0071_6e6c_6c6d, // "qnllm"
            retry_ratio: 0.2,
            retry_min_per_second: 10.0,
            cache_capacity: None,
            per_try_timeout: None,
        }
    }
}

/// The strategy and mode in force; swapped whole, so a request sees one or the other.
#[derive(Debug)]
struct Policy {
    strategy: Box<dyn Strategy>,
    mode: Mode,
}

/// An engine and what the router has seen of it.
#[derive(Debug, Clone)]
struct Slot {
    backend: Arc<dyn Backend>,
    health: Arc<Health>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    hedges: AtomicU64,
    hedge_wins: AtomicU64,
    ejections: AtomicU64,
    disagreements: AtomicU64,
    batches: AtomicU64,
    batch_items: AtomicU64,
}

/// One engine in a metrics snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineMetrics {
    /// What the engine is.
    #[serde(flatten)]
    pub info: EngineInfo,
    /// What the router has seen of it.
    #[serde(flatten)]
    pub health: HealthSnapshot,
}

/// A snapshot of the router's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterMetrics {
    /// Strategy name.
    pub strategy: &'static str,
    /// Run mode.
    pub mode: Mode,
    /// Requests routed.
    pub requests: u64,
    /// Tries beyond the first (failovers).
    pub retries: u64,
    /// Retries refused by the retry budget.
    pub budget_exhausted: u64,
    /// Hedge requests sent.
    pub hedges: u64,
    /// Hedge requests that answered first.
    pub hedge_wins: u64,
    /// Engines ejected.
    pub ejections: u64,
    /// Redundant answers outvoted (or ties).
    pub disagreements: u64,
    /// Batches routed, and encodings in them.
    pub batches: u64,
    /// Encodings in those batches.
    pub batch_items: u64,
    /// Per engine.
    pub engines: Vec<EngineMetrics>,
    /// Result cache, when enabled.
    pub cache: Option<CacheStats>,
}

/// Chooses engines per request and survives their failures.
#[derive(Debug)]
pub struct Router {
    slots: ArcSwap<Vec<Slot>>,
    policy: ArcSwap<Policy>,
    cache_enabled: std::sync::atomic::AtomicBool,
    rng: Mutex<fastrand::Rng>,
    budget: RetryBudget,
    cache: Option<ResultCache>,
    per_try_timeout: Option<Duration>,
    last_model: Mutex<Option<Digest>>,
    counters: Counters,
}

impl Default for Router {
    fn default() -> Router {
        Router::with_config(RouterConfig::default())
    }
}

impl Router {
    /// A round-robin router without cache.
    pub fn new() -> Router {
        Router::default()
    }

    /// A router with `config`.
    pub fn with_config(config: RouterConfig) -> Router {
        Router {
            slots: ArcSwap::from_pointee(Vec::new()),
            policy: ArcSwap::from_pointee(Policy {
                strategy: config.strategy,
                mode: config.mode,
            }),
            cache_enabled: std::sync::atomic::AtomicBool::new(true),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            budget: RetryBudget::new(config.retry_ratio, config.retry_min_per_second),
            cache: config.cache_capacity.map(ResultCache::new),
            per_try_timeout: config.per_try_timeout,
            last_model: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Adds a backend; requests may reach it at once.
    pub fn add(&self, backend: Arc<dyn Backend>) {
        let slot = Slot {
            backend,
            health: Arc::new(Health::new()),
        };
        self.slots.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(slot.clone());
            list
        });
    }

    /// Removes the backend named `name`; requests already sent to it finish or fail over.
    pub fn remove(&self, name: &str) {
        self.slots.rcu(|list| {
            list.iter()
                .filter(|s| s.backend.name() != name)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// The backends now in service.
    pub fn backends(&self) -> Vec<Arc<dyn Backend>> {
        self.slots
            .load()
            .iter()
            .map(|s| s.backend.clone())
            .collect()
    }

    /// Changes strategy and mode; requests already routed finish under the old ones.
    pub fn set_policy(&self, strategy: Box<dyn Strategy>, mode: Mode) {
        self.policy.store(Arc::new(Policy { strategy, mode }));
    }

    /// Turns the result cache on or off (when one is configured); entries are kept.
    pub fn set_cache_enabled(&self, enabled: bool) {
        self.cache_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Empties the result cache.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// A snapshot of every figure.
    pub fn metrics(&self) -> RouterMetrics {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouterMetrics {
            strategy: self.policy.load().strategy.name(),
            mode: self.policy.load().mode,
            requests: load(&c.requests),
            retries: load(&c.retries),
            budget_exhausted: load(&c.budget_exhausted),
            hedges: load(&c.hedges),
            hedge_wins: load(&c.hedge_wins),
            ejections: load(&c.ejections),
            disagreements: load(&c.disagreements),
            batches: load(&c.batches),
            batch_items: load(&c.batch_items),
            engines: self
                .slots
                .load()
                .iter()
                .map(|s| EngineMetrics {
                    info: s.backend.describe(),
                    health: s.health.snapshot(),
                })
                .collect(),
            cache: self.cache.as_ref().map(ResultCache::stats),
        }
    }

    /// The engines to try, best first: the strategy's order over the healthy ones, or over
    /// all of them when every one is ejected (better a sick engine than none).
    /// `strategy`, when given, orders them instead of the router's.
    fn plan_with(&self, strategy: Option<&dyn Strategy>) -> Vec<Slot> {
        let slots = self.slots.load();
        let healthy: Vec<Candidate> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.health.is_ejected())
            .map(|(index, s)| Candidate {
                index,
                local: s.backend.kind() == "local",
                cost: s.health.cost(),
            })
            .collect();
        let candidates = if healthy.is_empty() {
            slots
                .iter()
                .enumerate()
                .map(|(index, s)| Candidate {
                    index,
                    local: s.backend.kind() == "local",
                    cost: s.health.cost(),
                })
                .collect()
        } else {
            healthy
        };
        let order = {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match strategy {
                Some(strategy) => strategy.order(&candidates, &mut rng),
                None => self.policy.load().strategy.order(&candidates, &mut rng),
            }
        };
        if let Some(first) = order.first().and_then(|&i| slots.get(i)) {
            first.health.picks.fetch_add(1, Ordering::Relaxed);
        }
        order
            .into_iter()
            .filter_map(|i| slots.get(i).cloned())
            .collect()
    }

    /// The time one try may take when `left` remains and `more` engines could follow.
    fn try_budget(&self, left: Duration, more: bool) -> Duration {
        match self.per_try_timeout {
            Some(limit) => limit.min(left),
            None if more => left / 2,
            None => left,
        }
    }

    /// Runs one try on `slot` for at most `limit`, keeping its health up to date. The limit
    /// is enforced here: a backend that ignores its budget still cannot hold the request.
    /// `items` is how many encodings the call carries: a batch's latency is recorded per
    /// encoding, so one large batch does not make an engine look slow for single requests.
    async fn attempt<T>(
        &self,
        slot: &Slot,
        limit: Duration,
        items: u32,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let health = &slot.health;
        health.requests.fetch_add(1, Ordering::Relaxed);
        health.in_flight.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(BackendError::Timeout {
                engine: slot.backend.name().to_string(),
                budget: limit,
            }),
        };
        health.in_flight.fetch_sub(1, Ordering::Relaxed);
        match &outcome {
            Ok(_) => health.success(started.elapsed() / items.max(1)),
            // A bad request says nothing about the engine.
            Err(BackendError::InvalidInput(_)) => {}
            Err(_) => {
                if health.failure(false) {
                    self.counters.ejections.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        outcome
    }

    /// Reasons over `encoding` within `budget`, as the mode says; from the cache when it
    /// holds the answer.
    ///
    /// # Errors
    ///
    /// See [`RouterError`].
    pub async fn reason(&self, encoding: &[f32], budget: Duration) -> Result<Answer, RouterError> {
        self.reason_with(encoding, budget, &RequestOptions::default())
            .await
    }

    /// As [`Router::reason`], with this request's own `options`.
    ///
    /// # Errors
    ///
    /// See [`RouterError`].
    pub async fn reason_with(
        &self,
        encoding: &[f32],
        budget: Duration,
        options: &RequestOptions<'_>,
    ) -> Result<Answer, RouterError> {
        let strategy = options.strategy;
        let started = Instant::now();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.budget.deposit();
        let routed = async {
            let mode = self.policy.load().mode;
            match mode {
                Mode::Single => self.single(encoding, budget, started, strategy).await,
                Mode::Hedged => self.hedged(encoding, budget, started, strategy).await,
                Mode::Redundant { copies } => {
                    self.redundant(encoding, copies, budget, strategy).await
                }
            }
        };
        let cache = self
            .cache
            .as_ref()
            .filter(|_| self.cache_enabled.load(Ordering::Relaxed) && !options.no_cache);
        // The model (what cache keys start with) is only looked up by a router with a cache.
        let model = self.cache.as_ref().and_then(|_| self.serving_model());
        let mut answer = match (cache, model) {
            (Some(cache), Some(model)) => {
                let (answer, cached) = cache.get_or_compute(model, encoding, routed).await?;
                Answer { cached, ..answer }
            }
            _ => routed.await?,
        };
        answer.latency = started.elapsed();
        Ok(answer)
    }

    /// The digest of the model in rotation: the first engine's, or, with every engine gone,
    /// the last one seen, so cached answers are still served (graceful degradation).
    fn serving_model(&self) -> Option<Digest> {
        let current = self.slots.load().first().map(|s| s.backend.model_digest());
        let mut last = self
            .last_model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.is_some() {
            *last = current;
        }
        *last
    }

    async fn single(
        &self,
        encoding: &[f32],
        budget: Duration,
        started: Instant,
        strategy: Option<&dyn Strategy>,
    ) -> Result<Answer, RouterError> {
        self.with_failover(
            self.plan_with(strategy),
            budget,
            started,
            1,
            |slot, left| async move { slot.backend.reason(encoding, left).await },
        )
        .await
    }

    /// Tries `plan` in order until one answers, within `budget` and the retry budget.
    async fn with_failover<T, F>(
        &self,
        plan: Vec<Slot>,
        budget: Duration,
        started: Instant,
        items: u32,
        call: impl Fn(Slot, Duration) -> F,
    ) -> Result<T, RouterError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
        if plan.is_empty() {
            return Err(RouterError::NoEngineAvailable {
                reason: "no engine is registered".into(),
            });
        }
        let mut failures = Vec::new();
        // An engine that vanished never did the work: moving it elsewhere adds no load, so
        // that failover is not charged to the retry budget (timeouts and failures are).
        let mut last_was_gone = false;
        for (tried, slot) in plan.iter().enumerate() {
            let Some(left) = budget
                .checked_sub(started.elapsed())
                .filter(|d| !d.is_zero())
            else {
                return Err(RouterError::DeadlineExceeded { budget, tried });
            };
            if tried > 0 {
                if !last_was_gone && !self.budget.withdraw() {
                    self.counters
                        .budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                    failures.push("retry budget exhausted".to_string());
                    break;
                }
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let limit = self.try_budget(left, tried + 1 < plan.len());
            match self
                .attempt(slot, limit, items, call(slot.clone(), limit))
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(BackendError::InvalidInput(why)) => return Err(RouterError::InvalidInput(why)),
                Err(err) => {
                    last_was_gone = matches!(err, BackendError::Gone { .. });
                    failures.push(err.to_string());
                }
            }
        }
        if started.elapsed() >= budget {
            return Err(RouterError::DeadlineExceeded {
                budget,
                tried: failures.len(),
            });
        }
        Err(RouterError::NoEngineAvailable {
            reason: failures.join("; "),
        })
    }

    async fn hedged(
        &self,
        encoding: &[f32],
        budget: Duration,
        started: Instant,
        strategy: Option<&dyn Strategy>,
    ) -> Result<Answer, RouterError> {
        let plan = self.plan_with(strategy);
        // Without a second engine, or before the first has a latency history, there is
        // nothing to hedge with or to compare against.
        let p95 = plan.first().and_then(|s| s.health.quantile(0.95));
        let (Some(p95), true) = (p95, plan.len() >= 2) else {
            return self
                .with_failover(plan, budget, started, 1, |slot, left| async move {
                    slot.backend.reason(encoding, left).await
                })
                .await;
        };
        let (primary, backup) = (&plan[0], &plan[1]);
        let limit = self.try_budget(budget, true);
        let first =
            Box::pin(self.attempt(primary, limit, 1, primary.backend.reason(encoding, limit)));
        let wait = Box::pin(tokio::time::sleep(p95.min(budget)));
        let first = match select(first, wait).await {
            Either::Left((Ok(answer), _)) => return Ok(answer),
            Either::Left((Err(BackendError::InvalidInput(why)), _)) => {
                return Err(RouterError::InvalidInput(why))
            }
            Either::Left((Err(_), _)) => {
                let rest = plan[1..].to_vec();
                return self
                    .with_failover(rest, budget, started, 1, |slot, left| async move {
                        slot.backend.reason(encoding, left).await
                    })
                    .await;
            }
            Either::Right(((), first)) => first,
        };
        // The primary is slower than usual: ask the backup too; the first answer wins.
        self.counters.hedges.fetch_add(1, Ordering::Relaxed);
        let left = budget.saturating_sub(started.elapsed());
        let second = Box::pin(self.attempt(backup, left, 1, backup.backend.reason(encoding, left)));
        let outcome = match select(first, second).await {
            Either::Left((Ok(answer), _)) => Ok(answer),
            Either::Right((Ok(answer), _)) => {
                self.counters.hedge_wins.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            }
            Either::Left((Err(_), other)) => other.await.map_err(|e| self.unavailable(e)),
            Either::Right((Err(_), other)) => other.await.map_err(|e| self.unavailable(e)),
        };
        outcome
    }

    fn unavailable(&self, err: BackendError) -> RouterError {
        match err {
            BackendError::InvalidInput(why) => RouterError::InvalidInput(why),
            other => RouterError::NoEngineAvailable {
                reason: other.to_string(),
            },
        }
    }

    async fn redundant(
        &self,
        encoding: &[f32],
        copies: usize,
        budget: Duration,
        strategy: Option<&dyn Strategy>,
    ) -> Result<Answer, RouterError> {
        let copies = copies.max(2);
        let plan: Vec<Slot> = self.plan_with(strategy).into_iter().take(copies).collect();
        if plan.len() < copies {
            let reason = format!(
                "redundant mode needs {copies} engines, {} available",
                plan.len()
            );
            return Err(RouterError::NoEngineAvailable { reason });
        }
        let outcomes = futures::future::join_all(
            plan.iter()
                .map(|slot| self.attempt(slot, budget, 1, slot.backend.reason(encoding, budget))),
        )
        .await;
        // Answers with the engine that gave them (failed tries drop out of the vote).
        let mut answers = Vec::new();
        let mut answered = Vec::new();
        for (slot, outcome) in plan.iter().zip(outcomes) {
            match outcome {
                Ok(answer) => {
                    answers.push(answer);
                    answered.push(slot);
                }
                Err(BackendError::InvalidInput(why)) => return Err(RouterError::InvalidInput(why)),
                Err(_) => {}
            }
        }
        // Count votes per result digest; a strict majority of the engines asked wins.
        let mut votes: Vec<(qnllm_engine::Digest, usize)> = Vec::new();
        for answer in &answers {
            match votes
                .iter_mut()
                .find(|(d, _)| *d == answer.reasoning.result_digest)
            {
                Some((_, n)) => *n += 1,
                None => votes.push((answer.reasoning.result_digest, 1)),
            }
        }
        let winner = votes.iter().find(|(_, n)| *n * 2 > copies).map(|(d, _)| *d);
        let detail = || {
            answers
                .iter()
                .map(|a| format!("{} → {}", a.engine, a.reasoning.result_digest.short()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(winner) = winner else {
            if votes.len() > 1 {
                self.counters.disagreements.fetch_add(1, Ordering::Relaxed);
                return Err(RouterError::Disagreement { detail: detail() });
            }
            let reason = format!(
                "only {} of {copies} redundant engines answered",
                answers.len()
            );
            return Err(RouterError::NoEngineAvailable { reason });
        };
        // Outvoted engines gave a wrong answer: count it and eject them at once.
        for (slot, answer) in answered.iter().zip(&answers) {
            if answer.reasoning.result_digest != winner {
                self.counters.disagreements.fetch_add(1, Ordering::Relaxed);
                if slot.health.failure(true) {
                    self.counters.ejections.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        answers
            .into_iter()
            .find(|a| a.reasoning.result_digest == winner)
            .ok_or_else(|| RouterError::NoEngineAvailable {
                reason: "no winning answer".into(),
            })
    }

    /// Reasons over a flat batch, answers in input order. A large batch is split into
    /// contiguous parts, one batch frame per engine (at least `MIN_BATCH_PART` encodings
    /// each), run at once; each part fails over on its own.
    ///
    /// # Errors
    ///
    /// See [`RouterError`]; the first failing part's error.
    pub async fn reason_batch(
        &self,
        values: &[f32],
        dim: usize,
        budget: Duration,
    ) -> Result<Vec<Answer>, RouterError> {
        self.reason_batch_with(values, dim, budget, &RequestOptions::default())
            .await
    }

    /// As [`Router::reason_batch`], ordered by `options.strategy` when given (batches are
    /// never cached).
    ///
    /// # Errors
    ///
    /// See [`RouterError`]; the first failing part's error.
    pub async fn reason_batch_with(
        &self,
        values: &[f32],
        dim: usize,
        budget: Duration,
        options: &RequestOptions<'_>,
    ) -> Result<Vec<Answer>, RouterError> {
        let started = Instant::now();
        let dim = dim.max(1);
        let count = values.len() / dim;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .batch_items
            .fetch_add(count as u64, Ordering::Relaxed);
        self.budget.deposit();
        let plan = self.plan_with(options.strategy);
        let parts = plan.len().min(count.div_ceil(MIN_BATCH_PART)).max(1);
        let per_part = count.div_ceil(parts).max(1);
        let runs =
            values.chunks(per_part * dim).enumerate().map(|(i, part)| {
                // Part i starts on the plan's i-th engine and fails over along the rest.
                let mut order = plan.clone();
                order.rotate_left(i % plan.len().max(1));
                let items = u32::try_from(part.len() / dim).unwrap_or(u32::MAX);
                self.with_failover(order, budget, started, items, move |slot, left| async move {
                slot.backend.reason_batch(part, dim, left).await
            })
            });
        let mut answers = Vec::with_capacity(count);
        for part in futures::future::join_all(runs).await {
            answers.extend(part?);
        }
        let latency = started.elapsed();
        for answer in &mut answers {
            answer.latency = latency;
        }
        Ok(answers)
    }
}
