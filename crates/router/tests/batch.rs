//! Dynamic batching: concurrent single requests become batch requests, each caller gets its
//! own answer, and a bad encoding does not fail its neighbours.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use qnllm_engine::{Digest, Reasoning};
use qnllm_router::{
    Activity, Answer, Backend, BackendError, BackendFuture, BatchPolicy, DynamicBatcher,
    EngineInfo, Router,
};

/// Answers with label = first value of the encoding; records batch sizes.
#[derive(Debug, Default)]
struct Echo {
    singles: AtomicU64,
    batches: Mutex<Vec<usize>>,
    describes: AtomicU64,
}

/// What `Echo` says it has done, as a worker reached over NATS would.
const ECHO_ACTIVITY: Activity = Activity {
    in_flight: 3,
    served: 7,
    last_heard_ms: 11,
};

fn answer(x: &[f32]) -> Result<Answer, BackendError> {
    if x.iter().any(|v| v.is_nan()) {
        return Err(BackendError::InvalidInput("NaN".into()));
    }
    let reasoning = Reasoning {
        label: x[0] as u32,
        confidence: 1.0,
        scores: vec![],
        total_spikes: 0,
        label_spikes: vec![],
        model_version: 0,
        model_digest: Digest::default(),
        result_digest: Digest::default(),
    };
    Ok(Answer::new(reasoning, "echo", Duration::ZERO))
}

impl Backend for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn kind(&self) -> &'static str {
        "remote"
    }
    fn describe(&self) -> EngineInfo {
        self.describes.fetch_add(1, Ordering::Relaxed);
        EngineInfo {
            name: "echo".into(),
            kind: "remote",
            input_size: 2,
            labels: 100,
            model_version: 0,
            model_digest: Digest::default(),
        }
    }
    fn activity(&self) -> Option<Activity> {
        Some(ECHO_ACTIVITY)
    }
    fn follows_update_log(&self) -> bool {
        true
    }
    fn in_flight(&self) -> Option<u64> {
        Some(ECHO_ACTIVITY.in_flight)
    }
    fn reason<'a>(
        &'a self,
        x: &'a [f32],
        _: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        self.singles.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { answer(x) })
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        _: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        self.batches.lock().unwrap().push(values.len() / dim);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            values.chunks(dim).map(answer).collect()
        })
    }
}

fn batcher(policy: Option<BatchPolicy>) -> (Arc<Echo>, Arc<DynamicBatcher>) {
    let echo = Arc::new(Echo::default());
    let shared = Arc::new(ArcSwapOption::from(policy.map(Arc::new)));
    (echo.clone(), Arc::new(DynamicBatcher::new(echo, shared)))
}

async fn fire(
    batcher: &Arc<DynamicBatcher>,
    inputs: Vec<Vec<f32>>,
) -> Vec<Result<Answer, BackendError>> {
    let tasks: Vec<_> = inputs
        .into_iter()
        .map(|x| {
            let b = batcher.clone();
            tokio::spawn(async move { b.reason(&x, Duration::from_secs(1)).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_are_coalesced_and_each_gets_its_own_answer() {
    let (echo, b) = batcher(Some(BatchPolicy {
        max_batch: 8,
        max_delay: Duration::from_millis(5),
    }));
    let inputs: Vec<Vec<f32>> = (0..16).map(|i| vec![i as f32, 0.0]).collect();
    let answers = fire(&b, inputs).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.as_ref().unwrap().reasoning.label, i as u32);
    }
    assert_eq!(*echo.batches.lock().unwrap(), [8, 8]);
    assert_eq!(echo.singles.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_waits_at_most_the_delay() {
    let (echo, b) = batcher(Some(BatchPolicy {
        max_batch: 8,
        max_delay: Duration::from_millis(5),
    }));
    let started = tokio::time::Instant::now();
    let answer = b.reason(&[3.0, 0.0], Duration::from_secs(1)).await.unwrap();
    assert_eq!(answer.reasoning.label, 3);
    // Virtual time: exactly the delay, then sent alone.
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    assert_eq!(echo.singles.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn a_bad_encoding_fails_alone() {
    let (_, b) = batcher(Some(BatchPolicy {
        max_batch: 4,
        max_delay: Duration::from_millis(5),
    }));
    let inputs = vec![
        vec![1.0, 0.0],
        vec![f32::NAN, 0.0],
        vec![2.0, 0.0],
        vec![3.0, 0.0],
    ];
    let answers = fire(&b, inputs).await;
    assert_eq!(answers[0].as_ref().unwrap().reasoning.label, 1);
    assert!(matches!(answers[1], Err(BackendError::InvalidInput(_))));
    assert_eq!(answers[3].as_ref().unwrap().reasoning.label, 3);
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_requests_pass_straight_through() {
    let (echo, b) = batcher(None);
    let answers = fire(&b, (0..5).map(|i| vec![i as f32, 0.0]).collect()).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(echo.singles.load(Ordering::Relaxed), 5);
    assert!(echo.batches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_batcher_reports_its_engine_kind_without_building_a_description() {
    // The router asks every engine's kind on every request: through the batcher that must
    // stay as cheap as the wrapped engine makes it.
    let (echo, b) = batcher(None);
    let before = echo.describes.load(Ordering::Relaxed);
    assert_eq!(b.kind(), "remote");
    assert_eq!(echo.describes.load(Ordering::Relaxed), before);
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_deadline_passes_in_the_queue_is_answered_and_never_computed() {
    let (echo, b) = batcher(Some(BatchPolicy {
        max_batch: 2,
        max_delay: Duration::ZERO,
    }));
    // Two batches of two fill both slots for 1 ms each.
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.reason(&[i as f32, 0.0], Duration::from_secs(1)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    // This one can wait 100 µs: it expires in the queue, before a slot frees.
    let started = tokio::time::Instant::now();
    let late = b.reason(&[9.0, 0.0], Duration::from_micros(100));
    let err = late.await.unwrap_err();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() <= Duration::from_millis(1),
        "{:?}",
        started.elapsed()
    );
    for t in busy {
        t.await.unwrap().unwrap();
    }
    let computed: usize = echo.batches.lock().unwrap().iter().sum::<usize>()
        + echo.singles.load(Ordering::Relaxed) as usize;
    assert_eq!(computed, 4, "the expired request was computed");
}

#[tokio::test]
async fn the_batcher_passes_on_what_its_engine_reports_of_itself() {
    let policy = Arc::new(ArcSwapOption::from_pointee(BatchPolicy {
        max_batch: 8,
        max_delay: Duration::ZERO,
    }));
    let batcher = Arc::new(DynamicBatcher::new(Arc::new(Echo::default()), policy));
    assert_eq!(batcher.activity(), Some(ECHO_ACTIVITY));
    assert!(batcher.follows_update_log());
    assert_eq!(batcher.in_flight(), Some(ECHO_ACTIVITY.in_flight));
    // A listing shows the worker's figures, batched or not.
    let router = Router::new();
    router.add(batcher);
    assert_eq!(router.metrics().engines[0].activity, Some(ECHO_ACTIVITY));
}
