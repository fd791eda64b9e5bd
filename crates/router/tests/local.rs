//! The in-process backend: its calls are lazy, so the router's timer measures them.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::{
    Digest, Engine, EngineError, FixedEngine, Learned, Model, ModelInfo, Params, Reasoning,
    SpikingEngine,
};
use qnllm_router::{Backend, BackendError, LocalBackend};

/// Counts the reasonings it computes.
#[derive(Debug)]
struct Counting {
    inner: FixedEngine,
    computed: Arc<AtomicU64>,
}

impl Engine for Counting {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        self.computed.fetch_add(1, Ordering::Relaxed);
        self.inner.reason(encoding)
    }
    fn learn(&mut self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        self.inner.learn(encoding, label)
    }
}

#[tokio::test]
async fn a_local_engine_computes_when_polled_not_when_called() {
    let real = SpikingEngine::new(Model::from_seed(1, Params::default()).unwrap());
    let computed = Arc::new(AtomicU64::new(0));
    let backend = LocalBackend::new(
        "local",
        Counting {
            inner: FixedEngine::new(&real),
            computed: computed.clone(),
        },
    );
    let x = vec![0.0; real.info().params.inputs as usize];
    let call = backend.reason(&x, Duration::from_secs(1));
    assert_eq!(
        computed.load(Ordering::Relaxed),
        0,
        "computed before the router's timer could start"
    );
    call.await.unwrap();
    assert_eq!(computed.load(Ordering::Relaxed), 1);
}

/// Takes 20 ms of the calling thread per reasoning, as a large model inline would.
#[derive(Debug)]
struct Slow(FixedEngine);

impl Engine for Slow {
    fn info(&self) -> ModelInfo {
        self.0.info()
    }
    fn digest(&self) -> Digest {
        self.0.digest()
    }
    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        std::thread::sleep(Duration::from_millis(20));
        self.0.reason(encoding)
    }
    fn learn(&mut self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        self.0.learn(encoding, label)
    }
}

#[tokio::test]
async fn an_answer_computed_past_the_deadline_is_not_returned_as_in_time() {
    let real = SpikingEngine::new(Model::from_seed(1, Params::default()).unwrap());
    let router = qnllm_router::Router::new();
    router.add(Arc::new(LocalBackend::new(
        "slow",
        Slow(FixedEngine::new(&real)),
    )));
    let x = vec![0.0; real.info().params.inputs as usize];
    // The engine computes inline for 20 ms: the router's 1 ms timer cannot cut it short,
    // but the late answer must not pass for one in time.
    let err = router
        .reason(&x, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, qnllm_router::RouterError::DeadlineExceeded { .. }),
        "{err}"
    );
    assert!(router.reason(&x, Duration::from_secs(5)).await.is_ok());
}

/// Refuses encodings whose first value is negative as a failure of its own, as a Python
/// engine that raised does.
#[derive(Debug)]
struct Failing {
    inner: SpikingEngine,
}

impl Engine for Failing {
    fn info(&self) -> ModelInfo {
        self.inner.info()
    }
    fn digest(&self) -> Digest {
        self.inner.digest()
    }
    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        if encoding.first().is_some_and(|v| *v < 0.0) {
            return Err(EngineError::Failed("the engine raised".into()));
        }
        self.inner.reason(encoding)
    }
    fn learn(&mut self, _encoding: &[f32], _label: u32) -> Result<Learned, EngineError> {
        Err(EngineError::Failed("the engine cannot learn".into()))
    }
}

#[test]
fn an_engine_failure_is_the_engines_fault_and_bad_input_the_callers() {
    let real = SpikingEngine::new(Model::from_seed(1, Params::default()).unwrap());
    let backend = LocalBackend::new(
        "failing",
        Failing {
            inner: SpikingEngine::new(Model::from_seed(1, Params::default()).unwrap()),
        },
    );
    let dim = real.info().params.inputs as usize;
    let mut x = vec![0.0; dim];
    x[0] = -1.0;
    let failed = backend.reason_now(&x).unwrap_err();
    assert!(
        matches!(&failed, BackendError::Failed { engine, reason } if engine == "failing" && reason == "the engine raised"),
        "{failed:?}"
    );
    assert!(failed.is_retryable());
    let mut batch = vec![0.0; 2 * dim];
    batch[dim] = -1.0;
    assert!(matches!(
        backend.reason_batch_now(&batch, dim).unwrap_err(),
        BackendError::Failed { .. }
    ));
    assert!(matches!(
        backend.learn_at(&x, 1, 0).unwrap_err(),
        BackendError::Failed { .. }
    ));
    // Bad input stays the caller's fault, alone or inside a batch.
    assert!(matches!(
        backend.reason_now(&x[1..]).unwrap_err(),
        BackendError::InvalidInput(_)
    ));
    batch[1] = f32::NAN;
    assert!(matches!(
        backend.reason_batch_now(&batch, dim).unwrap_err(),
        BackendError::InvalidInput(_)
    ));
    x[0] = 0.5;
    assert!(backend.reason_now(&x).is_ok(), "the engine keeps serving");
}
