//! Router behaviour against mock backends in paused tokio time: strategies, failover,
//! deadlines, retry budget, ejection, redundancy, hedging and the cache.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qnllm_engine::{Digest, Reasoning};
use qnllm_router::strategy::{Performance, Preferred, RoundRobin};
use qnllm_router::{
    Answer, Backend, BackendError, BackendFuture, EngineInfo, Mode, ModelState, Pool,
    RequestOptions, Router, RouterConfig, RouterError,
};

const BUDGET: Duration = Duration::from_secs(5);
/// The model every mock serves unless told otherwise.
const MODEL: Digest = Digest([9; 32]);

/// What a mock does wrong in its replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    LabelOutOfRange,
    ShortScores,
    OtherModel,
    ForgedResultDigest,
    ShortBatch,
}

#[derive(Debug)]
struct Mock {
    name: String,
    local: bool,
    latency: Mutex<Duration>,
    failing: AtomicBool,
    lying: AtomicBool,
    /// Sleeps its latency whatever budget it was given (as a stalled worker would).
    ignores_budget: AtomicBool,
    fault: Mutex<Fault>,
    model: Mutex<ModelState>,
    max_in_flight: Option<u32>,
    calls: AtomicU64,
    describes: AtomicU64,
}

impl Mock {
    fn new(name: &str, local: bool) -> Arc<Mock> {
        Mock::build(name, local, MODEL, None)
    }
    fn build(name: &str, local: bool, model: Digest, max_in_flight: Option<u32>) -> Arc<Mock> {
        Arc::new(Mock {
            name: name.into(),
            local,
            latency: Mutex::new(Duration::from_millis(1)),
            failing: AtomicBool::new(false),
            lying: AtomicBool::new(false),
            ignores_budget: AtomicBool::new(false),
            fault: Mutex::new(Fault::None),
            model: Mutex::new(ModelState {
                version: 0,
                digest: model,
            }),
            max_in_flight,
            calls: AtomicU64::new(0),
            describes: AtomicU64::new(0),
        })
    }
    fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }
    fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
    fn set_model(&self, version: u64, digest: Digest) {
        *self.model.lock().unwrap() = ModelState { version, digest };
    }
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    fn reasoning(&self) -> Reasoning {
        reasoning(
            self.lying.load(Ordering::Relaxed),
            self.model.lock().unwrap().digest,
        )
    }
}

/// A well-formed answer of model `model`: the right one (label 1) or a consistent wrong one.
fn reasoning(wrong: bool, model: Digest) -> Reasoning {
    let (label, scores, label_spikes) = if wrong {
        (0, vec![1, 0], vec![1, 0])
    } else {
        (1, vec![0, 1], vec![0, 1])
    };
    let mut r = Reasoning {
        label,
        confidence: 0.5,
        scores,
        total_spikes: 10,
        label_spikes,
        model_version: 0,
        model_digest: model,
        result_digest: Digest::default(),
    };
    r.result_digest = r.expected_result_digest();
    r
}

fn right() -> Digest {
    reasoning(false, MODEL).result_digest
}

impl Backend for Mock {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        if self.local {
            "local"
        } else {
            "remote"
        }
    }
    fn model_digest(&self) -> Digest {
        self.model.lock().unwrap().digest
    }
    fn model_state(&self) -> ModelState {
        *self.model.lock().unwrap()
    }
    fn max_in_flight(&self) -> Option<u32> {
        self.max_in_flight
    }
    fn describe(&self) -> EngineInfo {
        self.describes.fetch_add(1, Ordering::Relaxed);
        let model = *self.model.lock().unwrap();
        EngineInfo {
            name: self.name.clone(),
            kind: if self.local { "local" } else { "remote" },
            input_size: 2,
            labels: 2,
            model_version: model.version,
            model_digest: model.digest,
        }
    }
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if encoding.iter().any(|x| x.is_nan()) {
                return Err(BackendError::InvalidInput("value at index 0 is NaN".into()));
            }
            let latency = *self.latency.lock().unwrap();
            if latency > budget && !self.ignores_budget.load(Ordering::Relaxed) {
                tokio::time::sleep(budget).await;
                return Err(BackendError::Timeout {
                    engine: self.name.clone(),
                    budget,
                });
            }
            tokio::time::sleep(latency).await;
            if self.failing.load(Ordering::Relaxed) {
                return Err(BackendError::Failed {
                    engine: self.name.clone(),
                    reason: "injected".into(),
                });
            }
            let mut r = self.reasoning();
            match *self.fault.lock().unwrap() {
                Fault::LabelOutOfRange => r.label = 7,
                Fault::ShortScores => r.scores.truncate(1),
                Fault::OtherModel => r.model_digest = Digest([3; 32]),
                Fault::ForgedResultDigest => r.result_digest = Digest([1; 32]),
                Fault::None | Fault::ShortBatch => {}
            }
            Ok(Answer::new(r, self.name.clone(), latency))
        })
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for x in values.chunks(dim) {
                out.push(self.reason(x, budget).await?);
            }
            if *self.fault.lock().unwrap() == Fault::ShortBatch {
                out.pop();
            }
            Ok(out)
        })
    }
}

fn router(config: RouterConfig, mocks: &[Arc<Mock>]) -> Router {
    let router = Router::with_config(config);
    for m in mocks {
        router.add(m.clone());
    }
    router
}

fn config(strategy: Box<dyn qnllm_router::strategy::Strategy>, mode: Mode) -> RouterConfig {
    RouterConfig {
        strategy,
        mode,
        ..RouterConfig::default()
    }
}

async fn engines_answering(router: &Router, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
        *counts.entry(answer.engine).or_default() += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn round_robin_alternates_exactly_over_1000_calls() {
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = router(
        config(Box::new(RoundRobin::default()), Mode::Single),
        &[a, b],
    );
    let mut previous = String::new();
    for _ in 0..1_000 {
        let engine = router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine;
        assert_ne!(engine, previous);
        previous = engine;
    }
}

#[tokio::test(start_paused = true)]
async fn local_first_holds_its_share_and_spills_to_remote_when_local_is_down() {
    let (local, r1, r2) = (
        Mock::new("local", true),
        Mock::new("r1", false),
        Mock::new("r2", false),
    );
    let router = router(
        config(Box::new(Preferred::local(0.8)), Mode::Single),
        &[local.clone(), r1, r2],
    );
    let counts = engines_answering(&router, 10_000).await;
    let share = counts["local"] as f64 / 10_000.0;
    assert!(
        (share - 0.8).abs() <= 0.01,
        "local share {share}: {counts:?}"
    );
    local.failing.store(true, Ordering::Relaxed);
    let counts = engines_answering(&router, 1_000).await;
    assert!(
        !counts.contains_key("local"),
        "every request spilled to remote: {counts:?}"
    );
    assert!(
        router.metrics().ejections >= 1,
        "five failures in a row ejected the local engine"
    );
}

#[tokio::test(start_paused = true)]
async fn remote_first_is_the_mirror() {
    let (local, remote) = (Mock::new("local", true), Mock::new("remote", false));
    let router = router(
        config(Box::new(Preferred::remote(0.8)), Mode::Single),
        &[local, remote],
    );
    let counts = engines_answering(&router, 10_000).await;
    let share = counts["remote"] as f64 / 10_000.0;
    assert!((share - 0.8).abs() <= 0.01, "remote share {share}");
}

#[tokio::test(start_paused = true)]
async fn performance_sends_less_to_a_slow_engine_and_recovers_when_it_speeds_up() {
    let mocks = [
        Mock::new("a", false),
        Mock::new("b", false),
        Mock::new("c", false),
    ];
    let router = router(config(Box::new(Performance), Mode::Single), &mocks);
    let even = engines_answering(&router, 300).await;
    assert!(
        even.values().all(|&n| n > 50),
        "equal engines share the load: {even:?}"
    );
    mocks[2].set_latency(Duration::from_millis(20));
    let slowed = engines_answering(&router, 300).await;
    assert!(
        slowed.get("c").copied().unwrap_or(0) < 10,
        "the slow engine is avoided: {slowed:?}"
    );
    mocks[2].set_latency(Duration::from_millis(1));
    // Traffic goes on for two minutes; the slow engine's unused estimate decays until it
    // is tried again, and its fresh samples (τ = 10 s) show it has recovered.
    let mut late = BTreeMap::<String, usize>::new();
    for i in 0..1_200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let engine = router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine;
        if i >= 1_050 {
            *late.entry(engine).or_default() += 1;
        }
    }
    assert!(
        late.get("c").copied().unwrap_or(0) > 25,
        "it gets traffic again: {late:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_try_is_retried_on_another_engine() {
    let (bad, good) = (Mock::new("bad", false), Mock::new("good", false));
    bad.failing.store(true, Ordering::Relaxed);
    let router = router(RouterConfig::default(), &[bad.clone(), good]);
    for _ in 0..4 {
        assert_eq!(
            router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine,
            "good"
        );
    }
    let m = router.metrics();
    assert_eq!(
        m.retries, 2,
        "only requests that started on the bad engine were retried"
    );
    assert_eq!(bad.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalid_input_is_not_retried() {
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = router(RouterConfig::default(), &[a.clone(), b.clone()]);
    let err = router.reason(&[f32::NAN, 0.0], BUDGET).await.unwrap_err();
    assert_eq!(
        err,
        RouterError::InvalidInput("value at index 0 is NaN".into())
    );
    assert_eq!(a.calls() + b.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_engine_times_out_within_the_deadline_and_the_next_answers() {
    let (slow, fast) = (Mock::new("slow", false), Mock::new("fast", false));
    slow.set_latency(Duration::from_secs(60));
    let router = router(RouterConfig::default(), &[slow, fast]);
    let started = tokio::time::Instant::now();
    let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    assert_eq!(answer.engine, "fast");
    assert!(
        started.elapsed() <= BUDGET,
        "virtual time: the whole request stayed within its deadline"
    );
    // With only slow engines, the caller gets DeadlineExceeded, not a hang.
    let only_slow = Mock::new("slow", false);
    only_slow.set_latency(Duration::from_secs(60));
    let router = router_with(&[only_slow]);
    let err = router
        .reason(&[0.0, 0.0], Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, RouterError::DeadlineExceeded { .. }), "{err}");
}

fn router_with(mocks: &[Arc<Mock>]) -> Router {
    router(RouterConfig::default(), mocks)
}

#[tokio::test(start_paused = true)]
async fn retries_stay_within_the_budget_when_the_fleet_is_sick() {
    let mocks: Vec<Arc<Mock>> = (0..4).map(|i| Mock::new(&format!("m{i}"), false)).collect();
    for m in &mocks {
        m.failing.store(true, Ordering::Relaxed);
    }
    let cfg = RouterConfig {
        retry_ratio: 0.2,
        retry_min_per_second: 0.0,
        ..RouterConfig::default()
    };
    let router = router(cfg, &mocks);
    for _ in 0..100 {
        assert!(router.reason(&[0.0, 0.0], BUDGET).await.is_err());
    }
    let m = router.metrics();
    assert!(m.retries <= 20, "at most 20 % extra tries: {}", m.retries);
    assert!(m.budget_exhausted > 0);
}

#[tokio::test(start_paused = true)]
async fn five_failures_eject_for_a_growing_period_then_probation() {
    let (flaky, steady) = (Mock::new("flaky", false), Mock::new("steady", false));
    flaky.failing.store(true, Ordering::Relaxed);
    let router = router_with(&[flaky.clone(), steady]);
    // Round-robin starts half the requests on `flaky`; it fails 5 in a row within 10.
    for _ in 0..10 {
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    }
    assert_eq!(flaky.calls(), 5);
    assert_eq!(router.metrics().ejections, 1);
    for _ in 0..10 {
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    }
    assert_eq!(flaky.calls(), 5, "ejected: no traffic");
    // After the first period (1 s) it is back on probation: one failure ejects it again, for longer.
    tokio::time::advance(Duration::from_millis(1_100)).await;
    for _ in 0..2 {
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    }
    assert_eq!(flaky.calls(), 6);
    assert_eq!(router.metrics().ejections, 2);
    tokio::time::advance(Duration::from_millis(1_100)).await;
    for _ in 0..4 {
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    }
    assert_eq!(flaky.calls(), 6, "the second ejection lasts 2 s");
    // Healed and back after the period: a success ends probation.
    flaky.failing.store(false, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(2)).await;
    let counts = engines_answering(&router, 10).await;
    assert_eq!(counts.get("flaky"), Some(&5));
    assert!(!router.metrics().engines[0].health.ejected);
}

#[tokio::test(start_paused = true)]
async fn redundant_mode_catches_a_lying_engine_every_time_and_ejects_it() {
    let mocks: Vec<Arc<Mock>> = ["a", "b", "c", "liar"]
        .iter()
        .map(|n| Mock::new(n, false))
        .collect();
    mocks[3].lying.store(true, Ordering::Relaxed);
    let router = router(
        config(
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 3 },
        ),
        &mocks,
    );
    for _ in 0..50 {
        let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
        assert_eq!(
            answer.reasoning.result_digest,
            right(),
            "the majority answer wins"
        );
        assert_ne!(answer.engine, "liar");
    }
    let m = router.metrics();
    let liar_calls = mocks[3].calls();
    assert!(liar_calls >= 1);
    assert_eq!(
        m.disagreements, liar_calls,
        "every wrong answer was caught and counted"
    );
    assert_eq!(m.ejections, 1, "and the liar was ejected");
}

#[tokio::test(start_paused = true)]
async fn with_two_copies_a_disagreement_is_an_error_never_a_silent_pick() {
    let (a, liar) = (Mock::new("a", false), Mock::new("liar", false));
    liar.lying.store(true, Ordering::Relaxed);
    let router = router(
        config(
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 2 },
        ),
        &[a, liar],
    );
    let err = router.reason(&[0.0, 0.0], BUDGET).await.unwrap_err();
    match err {
        RouterError::Disagreement { detail } => assert!(
            detail.contains("liar") && detail.contains("a →"),
            "{detail}"
        ),
        other => panic!("{other}"),
    }
    assert_eq!(router.metrics().disagreements, 1);
}

#[tokio::test(start_paused = true)]
async fn hedging_cuts_the_tail_when_one_engine_stalls() {
    async fn worst(mode: Mode) -> Duration {
        let (a, b) = (Mock::new("a", false), Mock::new("b", false));
        let router = router(
            config(Box::new(RoundRobin::default()), mode),
            &[a.clone(), b],
        );
        engines_answering(&router, 100).await; // a latency history: p95 = 1 ms
        a.set_latency(Duration::from_millis(500));
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            worst = worst.max(router.reason(&[0.0, 0.0], BUDGET).await.unwrap().latency);
        }
        if mode == Mode::Hedged {
            assert!(router.metrics().hedges > 0 && router.metrics().hedge_wins > 0);
        }
        worst
    }
    let single = worst(Mode::Single).await;
    let hedged = worst(Mode::Hedged).await;
    // Virtual time: these are exact, not measurements of a noisy machine.
    assert_eq!(single, Duration::from_millis(500));
    assert!(
        hedged <= Duration::from_millis(3),
        "hedged worst case {hedged:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn routing_and_caching_build_no_engine_description_per_request() {
    // Descriptions clone strings under a lock; the per-request path asks engines only for
    // their kind and model digest.
    let (a, b) = (Mock::new("a", true), Mock::new("b", false));
    let cfg = RouterConfig {
        cache_capacity: Some(100),
        ..RouterConfig::default()
    };
    let router = router(cfg, &[a.clone(), b.clone()]);
    router.reason(&[0.5, 0.25], BUDGET).await.unwrap();
    let before = a.describes.load(Ordering::Relaxed) + b.describes.load(Ordering::Relaxed);
    for i in 0..50 {
        let hit = router.reason(&[0.5, 0.25], BUDGET).await.unwrap();
        assert!(hit.cached);
        let miss = router.reason(&[i as f32, 1.0], BUDGET).await.unwrap();
        assert!(!miss.cached);
    }
    let after = a.describes.load(Ordering::Relaxed) + b.describes.load(Ordering::Relaxed);
    assert_eq!(after, before, "descriptions built while routing");
}

#[tokio::test(start_paused = true)]
async fn the_cache_answers_repeats_and_runs_concurrent_misses_once() {
    let a = Mock::new("a", false);
    let cfg = RouterConfig {
        cache_capacity: Some(100),
        ..RouterConfig::default()
    };
    let router = Arc::new(router(cfg, std::slice::from_ref(&a)));
    let first = router.reason(&[0.5, 0.25], BUDGET).await.unwrap();
    assert!(!first.cached);
    let again = router.reason(&[0.5, 0.25], BUDGET).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.reasoning, first.reasoning);
    // -0.0 and 0.0 are different bytes: a different key.
    assert!(!router.reason(&[-0.0, 0.25], BUDGET).await.unwrap().cached);
    let calls = a.calls();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { router.reason(&[0.75, 0.75], BUDGET).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        a.calls() - calls,
        1,
        "ten concurrent identical misses ran the engine once"
    );
    let stats = router.metrics().cache.unwrap();
    assert_eq!((stats.entries, stats.misses), (3, 3));
    assert_eq!(stats.hits, 10);
}

#[tokio::test(start_paused = true)]
async fn the_cache_is_bounded_and_counts_evictions() {
    let a = Mock::new("a", false);
    let router = router(
        RouterConfig {
            cache_capacity: Some(10),
            ..RouterConfig::default()
        },
        &[a],
    );
    for i in 0..100 {
        router.reason(&[i as f32, 0.0], BUDGET).await.unwrap();
    }
    let stats = router.metrics().cache.unwrap();
    assert!(stats.entries <= 10, "{stats:?}");
    assert!(stats.evictions >= 80, "{stats:?}");
}

#[derive(Debug)]
struct Vanishing(Arc<Mock>);

impl Backend for Vanishing {
    fn name(&self) -> &str {
        "vanishing"
    }
    fn describe(&self) -> EngineInfo {
        EngineInfo {
            name: "vanishing".into(),
            ..self.0.describe()
        }
    }
    fn reason<'a>(
        &'a self,
        _: &'a [f32],
        _: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async {
            Err(BackendError::Gone {
                engine: "vanishing".into(),
                reason: "killed".into(),
            })
        })
    }
    fn reason_batch<'a>(
        &'a self,
        _: &'a [f32],
        _: usize,
        _: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        Box::pin(async {
            Err(BackendError::Gone {
                engine: "vanishing".into(),
                reason: "killed".into(),
            })
        })
    }
}

#[tokio::test(start_paused = true)]
async fn failover_from_a_vanished_engine_is_not_limited_by_the_retry_budget() {
    let good = Mock::new("good", false);
    let cfg = RouterConfig {
        retry_ratio: 0.0,
        retry_min_per_second: 0.0,
        ..RouterConfig::default()
    };
    let router = Router::with_config(cfg);
    router.add(Arc::new(Vanishing(good.clone())));
    router.add(good);
    for _ in 0..100 {
        assert_eq!(
            router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine,
            "good"
        );
    }
    assert_eq!(router.metrics().budget_exhausted, 0);
}

#[tokio::test(start_paused = true)]
async fn a_large_batch_is_split_across_engines_and_returned_in_input_order() {
    let mocks: Vec<Arc<Mock>> = ["a", "b", "c"]
        .iter()
        .map(|n| Mock::new(n, false))
        .collect();
    let router = router_with(&mocks);
    // 300 encodings of 2 values, each distinct: the first value is its index.
    let values: Vec<f32> = (0..300).flat_map(|i| [i as f32, 0.0]).collect();
    let answers = router.reason_batch(&values, 2, BUDGET).await.unwrap();
    assert_eq!(answers.len(), 300);
    let parts: Vec<&str> = answers.iter().map(|a| a.engine.as_str()).collect();
    assert_eq!(parts[..100], ["a"; 100], "contiguous parts, in input order");
    assert_eq!(parts[100..200], ["b"; 100]);
    assert_eq!(parts[200..], ["c"; 100]);
    assert!(mocks.iter().all(|m| m.calls() == 100));
    // A small batch stays in one frame.
    let small: Vec<f32> = vec![0.0; 2 * 10];
    let answers = router.reason_batch(&small, 2, BUDGET).await.unwrap();
    assert!(answers.iter().all(|a| a.engine == answers[0].engine));
}

#[tokio::test(start_paused = true)]
async fn with_every_engine_down_a_cached_answer_is_still_served() {
    let a = Mock::new("a", false);
    let router = router(
        RouterConfig {
            cache_capacity: Some(10),
            ..RouterConfig::default()
        },
        std::slice::from_ref(&a),
    );
    let first = router.reason(&[0.5, 0.5], BUDGET).await.unwrap();
    a.failing.store(true, Ordering::Relaxed);
    let again = router.reason(&[0.5, 0.5], BUDGET).await.unwrap();
    assert!(again.cached);
    assert_eq!(again.reasoning, first.reasoning);
    // An encoding never seen gets the clear error instead.
    let err = router.reason(&[0.25, 0.5], BUDGET).await.unwrap_err();
    assert!(matches!(err, RouterError::EnginesFailed { .. }), "{err}");
    router.remove(router.metrics().engines[0].id);
    assert!(
        router.reason(&[0.5, 0.5], BUDGET).await.unwrap().cached,
        "even with no engine registered"
    );
}

// ---- model identity (issue 10 §2) ----

#[tokio::test(start_paused = true)]
async fn an_engine_of_another_model_is_kept_in_its_own_pool_and_never_answers() {
    let (a, b) = (Mock::new("seed1", false), Mock::new("seed1b", false));
    let other = Mock::build("seed2", false, Digest([5; 32]), None);
    let router = router(RouterConfig::default(), &[a, b]);
    let admission = router.add(other.clone());
    assert_eq!(admission.pool, Pool::Foreign);
    assert_eq!(admission.lineage, MODEL);
    for mode in [Mode::Single, Mode::Hedged, Mode::Redundant { copies: 2 }] {
        router.set_policy(Box::new(RoundRobin::default()), mode);
        for _ in 0..300 {
            let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
            assert_eq!(answer.reasoning.model_digest, MODEL, "{mode:?}");
        }
    }
    assert_eq!(other.calls(), 0, "never asked");
    let m = router.metrics();
    let listed = m.engines.iter().find(|e| e.info.name == "seed2").unwrap();
    assert_eq!(listed.pool, Pool::Foreign, "visible in the metrics");
    assert!(router.backends().iter().all(|b| b.name() != "seed2"));
}

#[tokio::test(start_paused = true)]
async fn a_replica_at_another_version_gets_no_requests_until_it_catches_up() {
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = router(RouterConfig::default(), &[a.clone(), b.clone()]);
    let learned = Digest([6; 32]);
    a.set_model(1, learned); // a learned; b has not yet
    let calls = b.calls();
    for _ in 0..20 {
        let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
        assert_eq!(
            (answer.engine.as_str(), answer.reasoning.model_digest),
            ("a", learned)
        );
    }
    assert_eq!(b.calls(), calls);
    let pools: Vec<Pool> = router.metrics().engines.iter().map(|e| e.pool).collect();
    assert_eq!(pools, [Pool::Serving, Pool::Lagging]);
    // A late joiner of the lineage's first model is of the lineage (lagging), not foreign.
    assert_eq!(router.add(Mock::new("late", false)).pool, Pool::Lagging);
    b.set_model(1, learned);
    let counts = engines_answering(&router, 20).await;
    assert_eq!(
        counts.get("b"),
        Some(&10),
        "caught up: back in rotation {counts:?}"
    );
    // An engine joining at the learned model is of the lineage too.
    assert_eq!(
        router.add(Mock::build("synced", false, learned, None)).pool,
        Pool::Serving
    );
}

// ---- every reply is checked (issue 10 §2) ----

#[tokio::test(start_paused = true)]
async fn a_bad_reply_is_counted_ejects_its_engine_and_the_request_goes_elsewhere() {
    for fault in [
        Fault::LabelOutOfRange,
        Fault::ShortScores,
        Fault::OtherModel,
        Fault::ForgedResultDigest,
    ] {
        let (bad, good) = (Mock::new("bad", false), Mock::new("good", false));
        bad.set_fault(fault);
        let router = router(RouterConfig::default(), &[bad.clone(), good]);
        for _ in 0..10 {
            let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
            assert_eq!(answer.engine, "good", "{fault:?}");
        }
        let m = router.metrics();
        assert_eq!(
            (bad.calls(), m.bad_replies, m.ejections),
            (1, 1, 1),
            "{fault:?}"
        );
        assert!(m.engines[0].health.ejected, "{fault:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_short_batch_reply_is_refused_not_shifted_against_its_inputs() {
    let (short, good) = (Mock::new("short", false), Mock::new("good", false));
    short.set_fault(Fault::ShortBatch);
    let router = router(RouterConfig::default(), &[short, good]);
    let values = vec![0.0; 2 * 10];
    let answers = router.reason_batch(&values, 2, BUDGET).await.unwrap();
    assert_eq!(answers.len(), 10);
    assert!(answers.iter().all(|a| a.engine == "good"));
    assert_eq!(router.metrics().bad_replies, 1);
}

// ---- the cache (issue 10 §2) ----

/// Learns (moves to model `to`) while it computes, and answers with the new model.
#[derive(Debug)]
struct LearnsMidCall(Arc<Mock>, Digest);

impl Backend for LearnsMidCall {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn describe(&self) -> EngineInfo {
        self.0.describe()
    }
    fn model_state(&self) -> ModelState {
        self.0.model_state()
    }
    fn model_digest(&self) -> Digest {
        self.0.model_digest()
    }
    fn reason<'a>(
        &'a self,
        x: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        self.0.set_model(1, self.1);
        self.0.reason(x, budget)
    }
    fn reason_batch<'a>(
        &'a self,
        v: &'a [f32],
        d: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        self.0.reason_batch(v, d, budget)
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_cached_under_the_model_that_produced_it() {
    let learner = Mock::new("learner", false);
    let steady = Mock::new("steady", false);
    let learned = Digest([6; 32]);
    let router = Router::with_config(RouterConfig {
        cache_capacity: Some(100),
        ..RouterConfig::default()
    });
    let id = router
        .add(Arc::new(LearnsMidCall(learner.clone(), learned)))
        .id;
    router.add(steady.clone());
    // Asked under the first model, answered by the learned one.
    let first = router.reason(&[0.5, 0.5], BUDGET).await.unwrap();
    assert_eq!(first.reasoning.model_digest, learned);
    // The learner leaves; the first model serves again. Its key must not hold the
    // learned model's answer.
    router.remove(id);
    let again = router.reason(&[0.5, 0.5], BUDGET).await.unwrap();
    assert!(
        !again.cached,
        "served another model's answer from the cache"
    );
    assert_eq!(again.reasoning.model_digest, MODEL);
    assert_eq!(steady.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn no_cache_neither_reads_nor_fills_the_cache() {
    let a = Mock::new("a", false);
    let router = router(
        RouterConfig {
            cache_capacity: Some(100),
            ..RouterConfig::default()
        },
        std::slice::from_ref(&a),
    );
    let no_cache = RequestOptions {
        no_cache: true,
        ..Default::default()
    };
    router.reason(&[0.5, 0.5], BUDGET).await.unwrap(); // fills
    let fresh = router
        .reason_with(&[0.5, 0.5], BUDGET, no_cache)
        .await
        .unwrap();
    assert!(!fresh.cached, "NO_CACHE read the cache");
    assert_eq!(a.calls(), 2);
    router
        .reason_with(&[0.25, 0.5], BUDGET, no_cache)
        .await
        .unwrap();
    let later = router.reason(&[0.25, 0.5], BUDGET).await.unwrap();
    assert!(!later.cached, "NO_CACHE filled the cache");
    assert_eq!(router.metrics().cache.unwrap().entries, 2);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_on_another_requests_cache_miss_is_bounded_by_its_own_deadline() {
    let slow = Mock::new("slow", false);
    slow.set_latency(Duration::from_secs(2));
    let router = Arc::new(router(
        RouterConfig {
            cache_capacity: Some(100),
            ..RouterConfig::default()
        },
        &[slow],
    ));
    let first = {
        let router = router.clone();
        tokio::spawn(async move { router.reason(&[0.5, 0.5], BUDGET).await })
    };
    tokio::task::yield_now().await; // the first request is computing
    let started = tokio::time::Instant::now();
    let short = Duration::from_millis(10);
    let err = router.reason(&[0.5, 0.5], short).await.unwrap_err();
    assert!(matches!(err, RouterError::DeadlineExceeded { .. }), "{err}");
    assert_eq!(
        started.elapsed(),
        short,
        "virtual time: answered at its deadline"
    );
    assert!(first.await.unwrap().is_ok());
}

// ---- redundant mode (issue 10 §2) ----

#[tokio::test(start_paused = true)]
async fn with_two_copies_a_liar_is_outvoted_by_a_larger_sample_and_ejected() {
    let mocks: Vec<Arc<Mock>> = ["a", "b", "liar"]
        .iter()
        .map(|n| Mock::new(n, false))
        .collect();
    mocks[2].lying.store(true, Ordering::Relaxed);
    let router = router(
        config(
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 2 },
        ),
        &mocks,
    );
    for _ in 0..30 {
        let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
        assert_eq!(answer.reasoning.result_digest, right());
    }
    let m = router.metrics();
    assert_eq!(m.ejections, 1);
    assert!(m.engines[2].health.ejected, "the liar is out");
}

#[tokio::test(start_paused = true)]
async fn with_fewer_healthy_engines_than_copies_the_agreeing_answer_is_marked() {
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = router(
        config(
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 3 },
        ),
        &[a, b],
    );
    let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    let agreement = answer.agreement.unwrap();
    assert_eq!(
        (agreement.agreed, agreement.asked, agreement.wanted),
        (2, 2, 3)
    );
    assert!(agreement.degraded());
    // One engine cannot be compared with anything: the error says what is needed.
    let lone = router_with(&[Mock::new("lone", false)]);
    lone.set_policy(
        Box::new(RoundRobin::default()),
        Mode::Redundant { copies: 3 },
    );
    let err = lone.reason(&[0.0, 0.0], BUDGET).await.unwrap_err();
    assert!(err.to_string().contains("start another worker"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_in_process_engine_breaks_a_tie_as_the_reference() {
    let (local, liar) = (Mock::new("local", true), Mock::new("liar", false));
    liar.lying.store(true, Ordering::Relaxed);
    let router = router(
        config(
            Box::new(RoundRobin::default()),
            Mode::Redundant { copies: 2 },
        ),
        &[local, liar],
    );
    let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    assert_eq!(answer.reasoning.result_digest, right());
    assert!(router.metrics().engines[1].health.ejected);
}

// ---- health (issue 10 §4) ----

#[tokio::test(start_paused = true)]
async fn a_short_stall_ejects_once_and_the_engine_is_back_after_the_period() {
    let (stalled, steady) = (Mock::new("stalled", false), Mock::new("steady", false));
    stalled.set_latency(Duration::from_secs(1));
    let router = Arc::new(router(
        RouterConfig {
            retry_ratio: 1.0,
            retry_min_per_second: 1_000.0,
            per_try_timeout: Some(Duration::from_millis(100)),
            ..RouterConfig::default()
        },
        &[stalled.clone(), steady],
    ));
    // 120 requests in flight at once: 60 start on the stalled engine and time out together.
    let tasks: Vec<_> = (0..120)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { router.reason(&[0.0, 0.0], BUDGET).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().engine, "steady");
    }
    assert_eq!(stalled.calls(), 60);
    assert_eq!(router.metrics().ejections, 1, "one stall, one ejection");
    // The stall is over; the first ejection lasts 1 s, whatever failed meanwhile.
    stalled.set_latency(Duration::from_millis(1));
    tokio::time::advance(Duration::from_millis(1_100)).await;
    let counts = engines_answering(&router, 10).await;
    assert_eq!(counts.get("stalled"), Some(&5), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn when_the_retry_budget_runs_out_the_error_says_so() {
    let (bad, good) = (Mock::new("bad", false), Mock::new("good", false));
    bad.failing.store(true, Ordering::Relaxed);
    let router = router(
        RouterConfig {
            retry_ratio: 0.0,
            retry_min_per_second: 0.0,
            ..RouterConfig::default()
        },
        &[bad, good],
    );
    let err = router.reason(&[0.0, 0.0], BUDGET).await.unwrap_err();
    match &err {
        RouterError::RetryBudgetExhausted { tried, last } => {
            assert_eq!(*tried, 1);
            assert!(last.contains("injected"), "{err}");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_at_its_in_flight_limit_gets_no_more_tries() {
    let stalled = Mock::build("stalled", false, MODEL, Some(2));
    stalled.set_latency(Duration::from_secs(60));
    let steady = Mock::new("steady", false);
    let router = Arc::new(router(RouterConfig::default(), &[stalled.clone(), steady]));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let router = router.clone();
            tokio::spawn(async move { router.reason(&[0.0, 0.0], BUDGET).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().engine, "steady");
    }
    assert_eq!(
        stalled.calls(),
        2,
        "its limit of 2, not every other request"
    );
}

// ---- issue 9 ----

#[tokio::test(start_paused = true)]
async fn two_engines_with_one_name_are_two_and_removing_one_keeps_the_other() {
    let router = Router::new();
    let first = router.add(Mock::new("w", false)).id;
    let second = router.add(Mock::new("w", false)).id;
    assert_ne!(first, second);
    assert!(router.remove(first));
    assert_eq!(router.metrics().engines.len(), 1);
    assert_eq!(router.metrics().engines[0].id, second);
    assert_eq!(
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine,
        "w"
    );
}

#[tokio::test(start_paused = true)]
async fn hedges_and_hedged_failover_are_retries_within_the_budget() {
    // Failover from a failed hedged primary is a retry, counted as one.
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = router(
        config(Box::new(RoundRobin::default()), Mode::Hedged),
        &[a.clone(), b],
    );
    engines_answering(&router, 10).await; // a latency history
    a.failing.store(true, Ordering::Relaxed);
    let retries = router.metrics().retries;
    for _ in 0..2 {
        assert_eq!(
            router.reason(&[0.0, 0.0], BUDGET).await.unwrap().engine,
            "b"
        );
    }
    assert_eq!(router.metrics().retries - retries, 1);
    // With no retry budget, a slow primary is not hedged.
    let (a, b) = (Mock::new("a", false), Mock::new("b", false));
    let router = self::router(
        RouterConfig {
            retry_ratio: 0.0,
            retry_min_per_second: 0.0,
            ..config(Box::new(RoundRobin::default()), Mode::Hedged)
        },
        &[a.clone(), b],
    );
    engines_answering(&router, 10).await;
    a.set_latency(Duration::from_millis(500));
    for _ in 0..4 {
        router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    }
    let m = router.metrics();
    assert_eq!(m.hedges, 0, "hedges are charged to the retry budget");
    assert!(m.budget_exhausted > 0);
}

#[tokio::test(start_paused = true)]
async fn the_latency_ewma_decays_once_per_interval() {
    let a = Mock::new("a", false);
    let router = router_with(std::slice::from_ref(&a));
    a.set_latency(Duration::from_millis(10));
    router.reason(&[0.0, 0.0], BUDGET).await.unwrap(); // a peak: 10 ms
    a.set_latency(Duration::from_millis(1));
    // The next sample lands exactly one time constant (10 s) after the first.
    tokio::time::advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
    router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    let w = (-1.0f64).exp();
    let expected = 10_000.0 * w + 1_000.0 * (1.0 - w); // µs
    let ewma = router.metrics().engines[0].health.ewma_us;
    assert!(
        (ewma - expected).abs() < 1.0,
        "ewma {ewma} µs, expected {expected}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_router_times_out_a_try_whose_engine_ignores_its_budget() {
    let (stuck, good) = (Mock::new("stuck", false), Mock::new("good", false));
    stuck.set_latency(Duration::from_secs(3_600));
    stuck.ignores_budget.store(true, Ordering::Relaxed);
    let router = router(RouterConfig::default(), &[stuck, good]);
    let started = tokio::time::Instant::now();
    let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    assert_eq!(answer.engine, "good");
    assert!(
        started.elapsed() <= BUDGET,
        "virtual time: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_engine_at_its_limit_is_still_where_a_vanished_engines_request_goes() {
    let busy = Mock::build("busy", false, MODEL, Some(1));
    busy.set_latency(Duration::from_millis(10));
    let router = Arc::new(Router::new());
    router.add(busy.clone());
    router.add(Arc::new(Vanishing(busy.clone())));
    // The first request holds `busy`'s only slot.
    let first = {
        let router = router.clone();
        tokio::spawn(async move { router.reason(&[0.0, 0.0], BUDGET).await })
    };
    tokio::task::yield_now().await;
    // The second goes where there is room, that engine vanishes, and it fails over to the
    // full one rather than to nothing.
    let answer = router.reason(&[0.0, 0.0], BUDGET).await.unwrap();
    assert_eq!(answer.engine, "busy");
    assert_eq!(first.await.unwrap().unwrap().engine, "busy");
}

/// A mock that also counts requests it holds from elsewhere (another router, a
/// coordinator's learning calls), as a worker's table of waiting requests does.
#[derive(Debug)]
struct Loaded {
    inner: Arc<Mock>,
    held: AtomicU64,
}

impl Backend for Loaded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn describe(&self) -> EngineInfo {
        self.inner.describe()
    }
    fn max_in_flight(&self) -> Option<u32> {
        self.inner.max_in_flight()
    }
    fn in_flight(&self) -> Option<u64> {
        Some(self.held.load(Ordering::Relaxed))
    }
    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        self.inner.reason(encoding, budget)
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        self.inner.reason_batch(values, dim, budget)
    }
}

#[tokio::test(start_paused = true)]
async fn an_engine_full_with_requests_from_elsewhere_gets_no_tries_while_another_has_room() {
    let (full, free) = (
        Mock::build("full", false, MODEL, Some(2)),
        Mock::new("free", false),
    );
    let loaded = Arc::new(Loaded {
        inner: full.clone(),
        held: AtomicU64::new(2),
    });
    let router = Router::new();
    router.add(loaded.clone());
    router.add(free);
    let counts = engines_answering(&router, 10).await;
    assert_eq!(counts.get("free"), Some(&10), "{counts:?}");
    assert_eq!(full.calls(), 0, "it said it holds its limit");
    // With room again it gets its share.
    loaded.held.store(0, Ordering::Relaxed);
    let counts = engines_answering(&router, 10).await;
    assert_eq!(counts.get("full"), Some(&5), "{counts:?}");
}
