//! The error text a client sees when a worker's engine fails, through a real hub on
//! 127.0.0.1:0, a real worker process loop and a real client: it names the engine once.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use qnllm_engine::{
    Digest, Engine, EngineError, Learned, ModelInfo, Params, Reasoning, SpikingEngine,
};
use qnllm_hub::{Client, ClientError};
use qnllm_protocol::ErrorCode;
use qnllm_router::LocalBackend;

/// Fails every encoding whose first value is negative, as an engine that raised does.
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
            return Err(EngineError::Failed("out of cheese".into()));
        }
        self.inner.reason(encoding)
    }
    fn learn(&mut self, _encoding: &[f32], _label: u32) -> Result<Learned, EngineError> {
        Err(EngineError::Failed("cannot learn".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failure_reaches_the_client_naming_the_engine_once() {
    let (running, stop) = start(config()).await;
    let client = Client::connect(&tcp(&running), "c", None).await.unwrap();
    let engine = LocalBackend::new(
        "cheese",
        Failing {
            inner: SpikingEngine::from_seed(1, Params::default()).unwrap(),
        },
    );
    let worker = worker_serving(tcp(&running), "cheese", None, engine);
    wait_for_engines(&client, 1).await;

    let mut x = vec![0.5; 768];
    x[0] = -1.0;
    match client.reason(&x, WAIT).await.unwrap_err() {
        ClientError::Remote { code, message } => {
            assert_eq!(code, ErrorCode::EngineFailed);
            assert_eq!(
                message,
                "every engine tried failed (1 tries): engine cheese failed: out of cheese"
            );
        }
        other => panic!("{other}"),
    }
    // The worker keeps serving what its engine can answer.
    x[0] = 0.5;
    assert_eq!(client.reason(&x, WAIT).await.unwrap().engine, "cheese");
    worker.cancel();
    stop.cancel();
}
