//! The batcher answers a queued request at its deadline, not when a slot frees: in paused
//! (virtual) time, with both batch slots held by an engine that is slow to answer.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use qnllm_engine::{Digest, Reasoning};
use qnllm_router::{
    Answer, Backend, BackendError, BackendFuture, BatchPolicy, DynamicBatcher, EngineInfo,
};

/// How long the engine takes per call.
const SLOW: Duration = Duration::from_millis(50);

/// Answers label 0 after [`SLOW`]; counts the encodings it computed.
#[derive(Debug, Default)]
struct Slow {
    computed: AtomicU64,
}

fn answer() -> Answer {
    let reasoning = Reasoning {
        label: 0,
        confidence: 1.0,
        scores: vec![],
        total_spikes: 0,
        label_spikes: vec![],
        model_version: 0,
        model_digest: Digest::default(),
        result_digest: Digest::default(),
    };
    Answer::new(reasoning, "slow", Duration::ZERO)
}

impl Backend for Slow {
    fn name(&self) -> &str {
        "slow"
    }
    fn describe(&self) -> EngineInfo {
        EngineInfo {
            name: "slow".into(),
            kind: "remote",
            input_size: 2,
            labels: 2,
            model_version: 0,
            model_digest: Digest::default(),
        }
    }
    fn reason<'a>(
        &'a self,
        _: &'a [f32],
        _: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move {
            tokio::time::sleep(SLOW).await;
            self.computed.fetch_add(1, Ordering::Relaxed);
            Ok(answer())
        })
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        _: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        Box::pin(async move {
            tokio::time::sleep(SLOW).await;
            let n = values.len() / dim;
            self.computed.fetch_add(n as u64, Ordering::Relaxed);
            Ok((0..n).map(|_| answer()).collect())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_queued_behind_busy_batches_is_answered_at_its_deadline() {
    let slow = Arc::new(Slow::default());
    let policy = Arc::new(ArcSwapOption::from_pointee(BatchPolicy {
        max_batch: 2,
        max_delay: Duration::ZERO,
    }));
    let batcher = Arc::new(DynamicBatcher::new(slow.clone(), policy));
    // Four requests fill both batch slots (two batches of two) for SLOW.
    let busy: Vec<_> = (0..4)
        .map(|_| {
            let b = batcher.clone();
            tokio::spawn(async move { b.reason(&[1.0, 0.0], Duration::from_secs(1)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    // This one waits in the queue: its deadline comes long before a slot frees.
    let budget = Duration::from_millis(3);
    let started = tokio::time::Instant::now();
    let err = batcher.reason(&[2.0, 0.0], budget).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
    // Virtual time: the answer comes at the deadline (the timer's millisecond), not when
    // the first slot frees at SLOW.
    assert!(
        waited >= budget && waited < budget + Duration::from_millis(1),
        "answered after {waited:?} for a budget of {budget:?}"
    );
    for task in busy {
        task.await.unwrap().unwrap();
    }
    // The queue is in order: once a later request is answered, the expired job has been
    // picked up, and it was dropped, not computed.
    batcher
        .reason(&[3.0, 0.0], Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(slow.computed.load(Ordering::Relaxed), 5);
}
