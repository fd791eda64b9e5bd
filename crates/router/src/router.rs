//! `Router`: the live engines, a strategy that orders them into a plan per request, and
//! the stack of layers (`layer/`) the configured mode composes to run it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::time::Instant;

use crate::backend::{Activity, Answer, Backend, EngineId, EngineInfo, ModelState};
use crate::budget::RetryBudget;
use crate::cache::CacheStats;
use crate::health::{Health, HealthSnapshot};
use crate::layer::attempt::{Counters, Slot, Tries};
use crate::layer::cache::CacheState;
use crate::layer::failover::Failover;
use crate::layer::{Request, Route, Stack};
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

/// The strategy, mode and the layers the mode composes; swapped whole, so a request sees
/// one or the other.
#[derive(Debug)]
struct Policy {
    strategy: Box<dyn Strategy>,
    mode: Mode,
    stack: Stack,
}

/// The engines to try for one request, and the model they serve.
#[derive(Debug)]
struct Plan {
    slots: Vec<Slot>,
    head: Option<ModelState>,
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
    rng: Mutex<fastrand::Rng>,
    /// What every layer shares: counters, retry budget, per-try limit.
    tries: Arc<Tries>,
    /// The cache layer's state, when the router has a cache.
    cache: Option<Arc<CacheState>>,
    /// Failover for batches, whatever the mode.
    failover: Failover,
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
        let tries = Arc::new(Tries::new(
            RetryBudget::new(config.retry_ratio, config.retry_min_per_second),
            config.per_try_timeout,
        ));
        let cache = config.cache_capacity.map(|n| Arc::new(CacheState::new(n)));
        Router {
            slots: ArcSwap::from_pointee(Vec::new()),
            foreign: ArcSwap::from_pointee(Vec::new()),
            lineage: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            policy: ArcSwap::from_pointee(Policy {
                strategy: config.strategy,
                mode: config.mode,
                stack: Stack::new(config.mode, &tries, cache.as_ref()),
            }),
            rng: Mutex::new(fastrand::Rng::with_seed(config.seed)),
            failover: Failover::new(tries.clone()),
            tries,
            cache,
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

    /// Changes strategy and mode (the mode's layers are composed anew); requests already
    /// routed finish under the old ones.
    pub fn set_policy(&self, strategy: Box<dyn Strategy>, mode: Mode) {
        let stack = Stack::new(mode, &self.tries, self.cache.as_ref());
        self.policy.store(Arc::new(Policy {
            strategy,
            mode,
            stack,
        }));
    }

    /// Turns the result cache on or off (when one is configured); entries are kept.
    pub fn set_cache_enabled(&self, enabled: bool) {
        if let Some(cache) = &self.cache {
            cache.set_enabled(enabled);
        }
    }

    /// Empties the result cache.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.cache.clear();
        }
    }

    /// A snapshot of every figure.
    pub fn metrics(&self) -> RouterMetrics {
        let c = &self.tries.counters;
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
            cache: self.cache.as_ref().map(|c| c.cache.stats()),
        }
    }

    /// The engines to try, best first: the strategy's order over the lineage's engines at
    /// the current model that are healthy and below their in-flight limit, then the healthy
    /// ones at their limit; or, when no engine has room, over every engine at the current
    /// model (better a sick or busy engine than none). Lagging and foreign engines are never
    /// in it. `strategy` orders them (the router's, or the request's own).
    fn plan(&self, strategy: &dyn Strategy) -> Plan {
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
                let slot = &slots[c.index];
                !slot.health.is_ejected() && slot.has_room()
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
            strategy.order(&candidates, &cost, &mut rng)
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
        Counters::count(&self.tries.counters.requests);
        self.tries.budget.deposit();
        // One policy for the whole request: its strategy orders the plan, its layers run it.
        let policy = self.policy.load_full();
        let plan = self.plan(options.strategy.unwrap_or(&*policy.strategy));
        let request = Request {
            encoding,
            plan: &plan.slots,
            head: plan.head,
            no_cache: options.no_cache,
            budget,
            started,
        };
        let mut answer = policy.stack.route(request).await?;
        answer.latency = started.elapsed();
        // The caller has stopped waiting: an answer past the deadline (an engine computing
        // inline can overrun its timer) is not returned as if it were in time.
        if answer.latency > budget {
            return Err(RouterError::DeadlineExceeded { budget, tried: 1 });
        }
        Ok(answer)
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
        let counters = &self.tries.counters;
        Counters::count(&counters.batches);
        counters
            .batch_items
            .fetch_add(count as u64, Ordering::Relaxed);
        self.tries.budget.deposit();
        let plan = {
            let policy = self.policy.load();
            self.plan(options.strategy.unwrap_or(&*policy.strategy))
                .slots
        };
        let parts = plan.len().min(count.div_ceil(MIN_BATCH_PART)).max(1);
        let per_part = count.div_ceil(parts).max(1);
        let runs = values.chunks(per_part * dim).enumerate().map(|(i, part)| {
            // Part i starts on the plan's i-th engine and fails over along the rest.
            let mut order = plan.clone();
            order.rotate_left(i % plan.len().max(1));
            let items = u32::try_from(part.len() / dim).unwrap_or(u32::MAX);
            async move {
                self.failover
                    .run(&order, budget, started, items, None, |slot, left| {
                        slot.backend.reason_batch(part, dim, left)
                    })
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
