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

use crate::backend::{
    Activity, Agreement, Answer, Backend, BackendError, EngineId, EngineInfo, ModelState,
};
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
    /// No engine of the served model is registered (or redundant mode has too few).
    #[error("no engine available ({reason}); start one with `qnllm worker --connect ADDR` or `qnllm serve --local 1`")]
    NoEngineAvailable {
        /// What is missing.
        reason: String,
    },
    /// Every engine tried failed (timed out, went away, answered badly).
    #[error("every engine tried failed ({tried} tries): {detail}")]
    EnginesFailed {
        /// Tries made.
        tried: usize,
        /// What each said.
        detail: String,
    },
    /// A try failed and the retry budget allows no other now (a sick fleet is not hammered
    /// with retries); `last` is the failure that would have been retried.
    #[error("retry budget exhausted after {tried} tries; the last failure: {last}")]
    RetryBudgetExhausted {
        /// Tries made.
        tried: usize,
        /// The last real cause.
        last: String,
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

/// Settings of one request that differ from the router's: its own strategy, or no cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOptions<'a> {
    /// Orders the engines for this request instead of the router's strategy.
    pub strategy: Option<&'a dyn Strategy>,
    /// Neither read the cache nor fill it (the frame header's `NO_CACHE` flag).
    pub no_cache: bool,
}

/// Where an engine stands with the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Of the served lineage, at its current model: requests go to it.
    Serving,
    /// Of the served lineage, at another version (behind, or diverged): no requests until
    /// it holds the current model again.
    Lagging,
    /// Another model: listed, never routed to, never mixed in.
    Foreign,
}

/// What [`Router::add`] made of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Its id in this router (what [`Router::remove`] takes).
    pub id: EngineId,
    /// The pool it joined.
    pub pool: Pool,
    /// The lineage's model digest at the time (the first of the lineage).
    pub lineage: Digest,
}

/// Fewest encodings worth a batch frame of their own when a batch is split across engines.
pub const MIN_BATCH_PART: usize = 64;

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
    id: EngineId,
    backend: Arc<dyn Backend>,
    health: Arc<Health>,
    /// Most tries in flight at once (`max_in_flight` from its registration).
    limit: Option<u64>,
    /// Labels it registered: every reply is checked against it.
    labels: u32,
}

/// The engines to try for one request, and the model they serve.
#[derive(Debug)]
struct Plan {
    slots: Vec<Slot>,
    head: Option<ModelState>,
}

/// Decrements a slot's in-flight count however a try ends (answered, failed, dropped).
struct InFlight<'a>(&'a Health);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A reply the router checks before it uses it.
trait Reply {
    /// What is wrong with it, if anything, for a call of `items` encodings to `slot`,
    /// whose model was `before` when the call began.
    fn fault(&self, slot: &Slot, items: u32, before: &ModelState) -> Option<String>;

    /// Names the engine that answered as this router knows it, whatever the engine itself
    /// wrote (a worker may leave it empty, and two workers may share one name).
    fn answered_by(&mut self, name: &str);
}

impl Answer {
    fn answered_by(&mut self, name: &str) {
        if self.engine != name {
            name.clone_into(&mut self.engine);
        }
    }
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
        Answer::answered_by(self, name);
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

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    hedges: AtomicU64,
    hedge_wins: AtomicU64,
    ejections: AtomicU64,
    disagreements: AtomicU64,
    bad_replies: AtomicU64,
    batches: AtomicU64,
    batch_items: AtomicU64,
}

/// One engine in a metrics snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineMetrics {
    /// Its id in the router.
    pub id: EngineId,
    /// Serving, lagging or foreign.
    pub pool: Pool,
    /// How it is reached ([`Backend::transport`]).
    pub transport: &'static str,
    /// What the engine is.
    #[serde(flatten)]
    pub info: EngineInfo,
    /// What the router has seen of it.
    #[serde(flatten)]
    pub health: HealthSnapshot,
    /// What it has done, as its backend counts it ([`Backend::activity`]).
    pub activity: Option<Activity>,
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
    /// Replies that failed the router's checks (each ejected its engine).
    pub bad_replies: u64,
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
    /// Engines of the served lineage (serving or lagging).
    slots: ArcSwap<Vec<Slot>>,
    /// Engines of other models: listed, never routed.
    foreign: ArcSwap<Vec<Slot>>,
    /// Digests the served lineage is known to have had: its first engine's, and those its
    /// engines held whenever one was added.
    lineage: Mutex<Vec<Digest>>,
    next_id: AtomicU64,
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
            foreign: ArcSwap::from_pointee(Vec::new()),
            lineage: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
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

    /// Adds a backend under a fresh id. An engine of the served model lineage (the first
    /// engine's, or a version of it one of its engines holds) joins the lineage and gets
    /// requests while it holds the current model; an engine of another model joins the
    /// foreign pool, where it is listed and never routed to.
    pub fn add(&self, backend: Arc<dyn Backend>) -> Admission {
        let id = EngineId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let info = backend.describe();
        let slot = Slot {
            id,
            limit: backend.max_in_flight().filter(|&n| n > 0).map(u64::from),
            labels: info.labels,
            backend,
            health: Arc::new(Health::new()),
        };
        let push = |list: &ArcSwap<Vec<Slot>>| {
            list.rcu(|list| {
                let mut list = Vec::clone(list);
                list.push(slot.clone());
                list
            });
        };
        let mut known = self
            .lineage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Learning moves the lineage on: the models its engines hold now are its own.
        for s in self.slots.load().iter() {
            let digest = s.backend.model_digest();
            if !known.contains(&digest) {
                known.push(digest);
            }
        }
        let digest = info.model_digest;
        let pool = if known.is_empty() || known.contains(&digest) {
            if !known.contains(&digest) {
                known.push(digest);
            }
            push(&self.slots);
            let slots = self.slots.load();
            let head = head(
                &slots
                    .iter()
                    .map(|s| s.backend.model_state())
                    .collect::<Vec<_>>(),
            );
            if head.is_some_and(|h| h.digest == digest) {
                Pool::Serving
            } else {
                Pool::Lagging
            }
        } else {
            push(&self.foreign);
            Pool::Foreign
        };
        Admission {
            id,
            pool,
            lineage: known.first().copied().unwrap_or(digest),
        }
    }

    /// Removes the engine `id` (wherever it is); requests already sent to it finish or
    /// fail over. Returns whether it was there.
    pub fn remove(&self, id: EngineId) -> bool {
        let mut found = false;
        for list in [&self.slots, &self.foreign] {
            if list.load().iter().any(|s| s.id == id) {
                found = true;
                list.rcu(|list| {
                    list.iter()
                        .filter(|s| s.id != id)
                        .cloned()
                        .collect::<Vec<_>>()
                });
            }
        }
        found
    }

    /// The backends of the served lineage (serving and lagging), the ones learning teaches.
    pub fn backends(&self) -> Vec<Arc<dyn Backend>> {
        self.slots
            .load()
            .iter()
            .map(|s| s.backend.clone())
            .collect()
    }

    /// Every engine the router holds, with its id and pool.
    pub fn engines(&self) -> Vec<(EngineId, Pool, EngineInfo)> {
        let slots = self.slots.load();
        let states: Vec<ModelState> = slots.iter().map(|s| s.backend.model_state()).collect();
        let head = head(&states);
        let mut list: Vec<(EngineId, Pool, EngineInfo)> = slots
            .iter()
            .zip(&states)
            .map(|(s, state)| {
                let pool = if Some(*state) == head {
                    Pool::Serving
                } else {
                    Pool::Lagging
                };
                (s.id, pool, s.backend.describe())
            })
            .collect();
        list.extend(
            self.foreign
                .load()
                .iter()
                .map(|s| (s.id, Pool::Foreign, s.backend.describe())),
        );
        list
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
        let slots = self.slots.load();
        let states: Vec<ModelState> = slots.iter().map(|s| s.backend.model_state()).collect();
        let head = head(&states);
        let entry = |s: &Slot, pool: Pool| EngineMetrics {
            id: s.id,
            pool,
            transport: s.backend.transport(),
            info: s.backend.describe(),
            health: s.health.snapshot(),
            activity: s.backend.activity(),
        };
        let mut engines: Vec<EngineMetrics> = slots
            .iter()
            .zip(&states)
            .map(|(s, state)| {
                let pool = if Some(*state) == head {
                    Pool::Serving
                } else {
                    Pool::Lagging
                };
                entry(s, pool)
            })
            .collect();
        engines.extend(self.foreign.load().iter().map(|s| entry(s, Pool::Foreign)));
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
            bad_replies: load(&c.bad_replies),
            batches: load(&c.batches),
            batch_items: load(&c.batch_items),
            engines,
            cache: self.cache.as_ref().map(ResultCache::stats),
        }
    }

    /// The engines to try, best first: the strategy's order over the lineage's engines at
    /// the current model that are healthy and below their in-flight limit, then the healthy
    /// ones at their limit; or, when no engine has room, over every engine at the current
    /// model (better a sick or busy engine than none). Lagging and foreign engines are never
    /// in it. `strategy`, when given, orders them instead of the router's.
    fn plan(&self, strategy: Option<&dyn Strategy>) -> Plan {
        let slots = self.slots.load();
        let states: Vec<ModelState> = slots.iter().map(|s| s.backend.model_state()).collect();
        let head = head(&states);
        let current: Vec<Candidate> = slots
            .iter()
            .zip(&states)
            .enumerate()
            .filter(|(_, (_, state))| Some(**state) == head)
            .map(|(index, (s, _))| Candidate {
                index,
                local: s.backend.kind() == "local",
            })
            .collect();
        let ready: Vec<Candidate> = current
            .iter()
            .filter(|c| {
                let health = &slots[c.index].health;
                !health.is_ejected() && health.has_room(slots[c.index].limit)
            })
            .copied()
            .collect();
        let candidates = if ready.is_empty() {
            current.clone()
        } else {
            ready
        };
        let cost = |index: usize| slots.get(index).map_or(f64::MAX, |s| s.health.cost());
        let order = {
            let mut rng = self
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match strategy {
                Some(strategy) => strategy.order(&candidates, &cost, &mut rng),
                None => self
                    .policy
                    .load()
                    .strategy
                    .order(&candidates, &cost, &mut rng),
            }
        };
        if let Some(first) = order.first().and_then(|&i| slots.get(i)) {
            first.health.picks.fetch_add(1, Ordering::Relaxed);
        }
        // Healthy engines that are only full come last: where a request goes if the ones
        // with room fail (an engine that vanished must never leave a request with none).
        let full = current
            .iter()
            .map(|c| c.index)
            .filter(|i| !order.contains(i) && !slots[*i].health.is_ejected());
        let order: Vec<usize> = order.iter().copied().chain(full).collect();
        Plan {
            slots: order
                .into_iter()
                .filter_map(|i| slots.get(i).cloned())
                .collect(),
            head,
        }
    }

    /// The time one try may take when `left` remains and `more` engines could follow.
    fn try_budget(&self, left: Duration, more: bool) -> Duration {
        match self.per_try_timeout {
            Some(limit) => limit.min(left),
            None if more => left / 2,
            None => left,
        }
    }

    /// Runs one try on `slot` for at most `limit`, keeping its health up to date, and
    /// checks the reply before it is used. The limit is enforced here: a backend that
    /// ignores its budget still cannot hold the request. A reply that fails its checks is
    /// the engine's fault: counted, the engine ejected, and the try failed (retryable).
    /// `items` is how many encodings the call carries: a batch's latency is recorded per
    /// encoding, so one large batch does not make an engine look slow for single requests.
    async fn attempt<T: Reply>(
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
                    self.counters.bad_replies.fetch_add(1, Ordering::Relaxed);
                }
                if health.failure(bad, started) {
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
        self.reason_with(encoding, budget, RequestOptions::default())
            .await
    }

    /// [`Router::reason`] with per-request options.
    ///
    /// # Errors
    ///
    /// See [`RouterError`].
    pub async fn reason_with(
        &self,
        encoding: &[f32],
        budget: Duration,
        options: RequestOptions<'_>,
    ) -> Result<Answer, RouterError> {
        let started = Instant::now();
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.budget.deposit();
        let plan = self.plan(options.strategy);
        let cache = self
            .cache
            .as_ref()
            .filter(|_| self.cache_enabled.load(Ordering::Relaxed) && !options.no_cache);
        // The model (what cache keys start with) is only looked up by a router with a cache.
        let model = cache.and_then(|_| self.serving_model(plan.head));
        let mode = self.policy.load().mode;
        let routed = async {
            match mode {
                Mode::Single => self.single(encoding, plan.slots, budget, started).await,
                Mode::Hedged => self.hedged(encoding, plan.slots, budget, started).await,
                Mode::Redundant { copies } => {
                    self.redundant(encoding, plan.slots, copies, budget, started)
                        .await
                }
            }
        };
        let mut answer = match (cache, model) {
            (Some(cache), Some(model)) => {
                let wait = budget.saturating_sub(started.elapsed());
                let expired = || RouterError::DeadlineExceeded { budget, tried: 0 };
                let (answer, cached) = cache
                    .get_or_compute(model, encoding, wait, routed, expired)
                    .await?;
                Answer { cached, ..answer }
            }
            _ => routed.await?,
        };
        answer.latency = started.elapsed();
        // The caller has stopped waiting: an answer past the deadline (an engine computing
        // inline can overrun its timer) is not returned as if it were in time.
        if answer.latency > budget {
            return Err(RouterError::DeadlineExceeded { budget, tried: 1 });
        }
        Ok(answer)
    }

    /// The digest of the model in rotation, or, with every engine gone, the last one seen,
    /// so cached answers are still served (graceful degradation).
    fn serving_model(&self, head: Option<ModelState>) -> Option<Digest> {
        let mut last = self
            .last_model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(head) = head {
            *last = Some(head.digest);
        }
        *last
    }

    async fn single(
        &self,
        encoding: &[f32],
        plan: Vec<Slot>,
        budget: Duration,
        started: Instant,
    ) -> Result<Answer, RouterError> {
        self.with_failover(&plan, budget, started, 1, None, |slot, left| async move {
            slot.backend.reason(encoding, left).await
        })
        .await
    }

    /// The error for a request that got no answer after `failures`.
    fn give_up(&self, budget: Duration, started: Instant, failures: Vec<String>) -> RouterError {
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

    /// Tries `plan` in order until one answers, within `budget` and the retry budget.
    /// `prior` is the failure of a try already made for this request (a hedged primary):
    /// the first try here is then a retry, counted and charged as one.
    async fn with_failover<T: Reply, F>(
        &self,
        plan: &[Slot],
        budget: Duration,
        started: Instant,
        items: u32,
        prior: Option<BackendError>,
        call: impl Fn(Slot, Duration) -> F,
    ) -> Result<T, RouterError>
    where
        F: std::future::Future<Output = Result<T, BackendError>>,
    {
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
                if !last_was_gone && !self.budget.withdraw() {
                    self.counters
                        .budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(RouterError::RetryBudgetExhausted {
                        tried,
                        last: failures.pop().unwrap_or_default(),
                    });
                }
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let limit = self.try_budget(left, i + 1 < plan.len());
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
        Err(self.give_up(budget, started, failures))
    }

    async fn hedged(
        &self,
        encoding: &[f32],
        plan: Vec<Slot>,
        budget: Duration,
        started: Instant,
    ) -> Result<Answer, RouterError> {
        let call =
            |slot: Slot, left: Duration| async move { slot.backend.reason(encoding, left).await };
        // Without a second engine, or before the first has a latency history, there is
        // nothing to hedge with or to compare against.
        let p95 = plan.first().and_then(|s| s.health.quantile(0.95));
        let (Some(p95), true) = (p95, plan.len() >= 2) else {
            return self
                .with_failover(&plan, budget, started, 1, None, call)
                .await;
        };
        let (primary, backup) = (&plan[0], &plan[1]);
        let limit = self.try_budget(budget.saturating_sub(started.elapsed()), true);
        // The backend's future is made here but computes only when polled, inside
        // `attempt`'s timer (a local engine too).
        let first =
            Box::pin(self.attempt(primary, limit, 1, primary.backend.reason(encoding, limit)));
        let wait = Box::pin(tokio::time::sleep(p95.min(budget)));
        let first = match select(first, wait).await {
            Either::Left((Ok(answer), _)) => return Ok(answer),
            Either::Left((Err(BackendError::InvalidInput(why)), _)) => {
                return Err(RouterError::InvalidInput(why))
            }
            // Failing over from the primary is a retry: counted, and charged to the budget.
            Either::Left((Err(err), _)) => {
                return self
                    .with_failover(&plan[1..], budget, started, 1, Some(err), call)
                    .await;
            }
            Either::Right(((), first)) => first,
        };
        // The primary is slower than usual: ask the backup too, if the retry budget allows
        // the extra load; the first answer wins.
        if !self.budget.withdraw() {
            self.counters
                .budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
            return first.await.map_err(|err| match err {
                BackendError::InvalidInput(why) => RouterError::InvalidInput(why),
                err => self.give_up(budget, started, vec![err.to_string()]),
            });
        }
        self.counters.hedges.fetch_add(1, Ordering::Relaxed);
        let left = budget.saturating_sub(started.elapsed());
        let second = Box::pin(self.attempt(backup, left, 1, backup.backend.reason(encoding, left)));
        let (err, other) = match select(first, second).await {
            Either::Left((Ok(answer), _)) => return Ok(answer),
            Either::Right((Ok(answer), _)) => {
                self.counters.hedge_wins.fetch_add(1, Ordering::Relaxed);
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
            (a, Err(b)) => Err(self.give_up(budget, started, vec![a.to_string(), b.to_string()])),
        }
    }

    /// Runs `encoding` on every engine of `slots` at once, each within what is left.
    async fn ask_all(
        &self,
        encoding: &[f32],
        slots: &[Slot],
        budget: Duration,
        started: Instant,
    ) -> Vec<Result<Answer, BackendError>> {
        let left = budget.saturating_sub(started.elapsed());
        futures::future::join_all(
            slots
                .iter()
                .map(|slot| self.attempt(slot, left, 1, slot.backend.reason(encoding, left))),
        )
        .await
    }

    /// Redundant mode; the rule is in `docs/router.md`. `copies` engines answer; a result
    /// digest held by a strict majority of the engines asked wins. Without one (a tie, or
    /// failures), up to `copies` more healthy engines are asked and the vote is taken again
    /// over the larger sample; failing that, an in-process engine (the reference) breaks a
    /// tie. Outvoted engines are ejected. With fewer healthy engines than `copies` (but at
    /// least two) the answer is served, marked by its [`Agreement`].
    async fn redundant(
        &self,
        encoding: &[f32],
        plan: Vec<Slot>,
        copies: usize,
        budget: Duration,
        started: Instant,
    ) -> Result<Answer, RouterError> {
        let copies = copies.max(2);
        if plan.len() < 2 {
            let reason = format!(
                "redundant mode compares at least 2 engines of the served model (it asks for \
                 {copies}); {} healthy: start another worker, or use mode single",
                plan.len()
            );
            return Err(RouterError::NoEngineAvailable { reason });
        }
        let first = copies.min(plan.len());
        let mut outcomes = self
            .ask_all(encoding, &plan[..first], budget, started)
            .await;
        let mut asked = first;
        if vote(&plan[..asked], &outcomes).is_none() && plan.len() > asked {
            let more = (asked + copies).min(plan.len());
            outcomes.extend(
                self.ask_all(encoding, &plan[asked..more], budget, started)
                    .await,
            );
            asked = more;
        }
        let sample = &plan[..asked];
        if let Some(why) = outcomes.iter().find_map(|o| match o {
            Err(BackendError::InvalidInput(why)) => Some(why.clone()),
            _ => None,
        }) {
            return Err(RouterError::InvalidInput(why));
        }
        let detail = || {
            sample
                .iter()
                .zip(&outcomes)
                .map(|(slot, o)| match o {
                    Ok(a) => format!(
                        "{} → {}",
                        slot.backend.name(),
                        a.reasoning.result_digest.short()
                    ),
                    Err(e) => format!("{} → {e}", slot.backend.name()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((winner, agreed)) = vote(sample, &outcomes) else {
            let digests: Vec<Digest> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|a| a.reasoning.result_digest))
                .collect();
            if digests.iter().any(|d| *d != digests[0]) {
                self.counters.disagreements.fetch_add(1, Ordering::Relaxed);
                return Err(RouterError::Disagreement {
                    detail: format!(
                        "{}; no strict majority of {asked}: start another engine to break the tie",
                        detail()
                    ),
                });
            }
            return Err(self.give_up(
                budget,
                started,
                outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().err().map(ToString::to_string))
                    .collect(),
            ));
        };
        // Outvoted engines gave a wrong answer: count it and eject them at once.
        for (slot, outcome) in sample.iter().zip(&outcomes) {
            if let Ok(answer) = outcome {
                if answer.reasoning.result_digest != winner {
                    self.counters.disagreements.fetch_add(1, Ordering::Relaxed);
                    if slot.health.failure(true, started) {
                        self.counters.ejections.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        let agreement = Agreement {
            agreed: agreed as u32,
            asked: asked as u32,
            wanted: copies as u32,
        };
        outcomes
            .into_iter()
            .flatten()
            .find(|a| a.reasoning.result_digest == winner)
            .map(|answer| Answer {
                agreement: Some(agreement),
                ..answer
            })
            .ok_or_else(|| RouterError::EnginesFailed {
                tried: asked,
                detail: "no winning answer".into(),
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
        self.reason_batch_with(values, dim, budget, RequestOptions::default())
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
        options: RequestOptions<'_>,
    ) -> Result<Vec<Answer>, RouterError> {
        let started = Instant::now();
        let dim = dim.max(1);
        let count = values.len() / dim;
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .batch_items
            .fetch_add(count as u64, Ordering::Relaxed);
        self.budget.deposit();
        let plan = self.plan(options.strategy).slots;
        let parts = plan.len().min(count.div_ceil(MIN_BATCH_PART)).max(1);
        let per_part = count.div_ceil(parts).max(1);
        let runs = values.chunks(per_part * dim).enumerate().map(|(i, part)| {
            // Part i starts on the plan's i-th engine and fails over along the rest.
            let mut order = plan.clone();
            order.rotate_left(i % plan.len().max(1));
            let items = u32::try_from(part.len() / dim).unwrap_or(u32::MAX);
            async move {
                self.with_failover(
                        &order,
                        budget,
                        started,
                        items,
                        None,
                        move |slot, left| async move {
                            slot.backend.reason_batch(part, dim, left).await
                        },
                    )
                    .await
            }
        });
        let mut answers = Vec::with_capacity(count);
        for part in futures::future::join_all(runs).await {
            answers.extend(part?);
        }
        let latency = started.elapsed();
        if latency > budget {
            return Err(RouterError::DeadlineExceeded { budget, tried: 1 });
        }
        for answer in &mut answers {
            answer.latency = latency;
        }
        Ok(answers)
    }
}

/// The lineage's current model among `states`: the highest version, and at that version
/// the digest most engines hold (the first listed on a tie).
fn head(states: &[ModelState]) -> Option<ModelState> {
    let top = states.iter().map(|s| s.version).max()?;
    let at_top: Vec<&ModelState> = states.iter().filter(|s| s.version == top).collect();
    at_top
        .iter()
        .max_by_key(|s| {
            // max_by_key keeps the last maximum: rank earlier entries higher on a tie.
            let count = at_top.iter().filter(|o| o.digest == s.digest).count();
            let first = at_top
                .iter()
                .position(|o| o.digest == s.digest)
                .unwrap_or(0);
            (count, std::cmp::Reverse(first))
        })
        .map(|s| **s)
}

/// The result digest a strict majority of the engines asked agreed on, and how many did;
/// without a majority, an in-process engine's answer breaks a tie when every in-process
/// engine asked agrees on it and it has the most votes.
fn vote(asked: &[Slot], outcomes: &[Result<Answer, BackendError>]) -> Option<(Digest, usize)> {
    let mut votes: Vec<(Digest, usize, bool)> = Vec::new();
    for (slot, outcome) in asked.iter().zip(outcomes) {
        let Ok(answer) = outcome else { continue };
        let local = slot.backend.kind() == "local";
        let digest = answer.reasoning.result_digest;
        match votes.iter_mut().find(|(d, _, _)| *d == digest) {
            Some((_, n, l)) => {
                *n += 1;
                *l |= local;
            }
            None => votes.push((digest, 1, local)),
        }
    }
    if let Some(&(digest, n, _)) = votes.iter().find(|(_, n, _)| n * 2 > asked.len()) {
        return Some((digest, n));
    }
    let most = votes.iter().map(|(_, n, _)| *n).max()?;
    let reference: Vec<_> = votes.iter().filter(|(_, _, local)| *local).collect();
    match reference.as_slice() {
        [(digest, n, _)] if *n == most && *n >= 1 && votes.len() > 1 => Some((*digest, *n)),
        _ => None,
    }
}
