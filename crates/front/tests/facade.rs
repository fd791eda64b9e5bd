//! The front started from `UnifiedEngine::builder()`'s own settings (`.http`, `.grpc`) on
//! 127.0.0.1 port 0, queried by a real HTTP client and a real gRPC client.

use std::sync::Arc;

use qnllm::{Model, NormalInputs, Params, UnifiedEngine};
use qnllm_engine::Engine;
use qnllm_front::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use qnllm_front::pb::{model_infer_request::InferInputTensor, ModelInferRequest};
use qnllm_front::FrontConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Cancels the front (and with it the test's servers) on every path.
struct Stop(CancellationToken);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The BYTES element of a raw gRPC output: a 4-byte little-endian length, then the bytes.
fn first_bytes(raw: &[u8]) -> String {
    let len = u32::from_le_bytes(raw[..4].try_into().expect("4 bytes")) as usize;
    String::from_utf8(raw[4..4 + len].to_vec()).expect("utf-8")
}

#[test]
fn a_builder_without_front_addresses_serves_no_front() {
    let engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .build()
        .expect("engine builds");
    let config = FrontConfig::for_engine(&engine);
    assert_eq!((config.http, config.grpc), (None, None));
    assert!(!engine.front_settings().enabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_http_and_grpc_addresses_serve_the_front() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .http("127.0.0.1:0")
        .grpc("127.0.0.1:0")
        .build()
        .expect("engine builds");
    assert!(engine.front_settings().enabled());
    engine.start().await.expect("hub starts");
    let engine = Arc::new(engine);
    let stop = Stop(CancellationToken::new());
    let front = qnllm_front::start(
        engine.clone(),
        FrontConfig::for_engine(&engine),
        stop.0.clone(),
    )
    .await
    .expect("front starts");
    let (http, grpc) = (
        front.http.expect("HTTP listens"),
        front.grpc.expect("gRPC listens"),
    );
    assert!(http.port() != 0 && grpc.port() != 0 && http != grpc);
    let reference =
        qnllm::SpikingEngine::new(Model::from_seed(1, Params::default()).expect("model"));
    let x: Vec<f32> = NormalInputs::new(5, 768).next().expect("an encoding");
    let want = reference
        .reason(&x)
        .expect("reasons")
        .result_digest
        .to_hex();

    let client = reqwest::Client::new();
    let ready = client
        .get(format!("http://{http}/v2/health/ready"))
        .send()
        .await
        .expect("ready answered");
    assert_eq!(ready.status().as_u16(), 200);
    let body =
        json!({"inputs": [{"name": "ENCODING", "datatype": "FP32", "shape": [1, 768], "data": x}]});
    let reply: Value = client
        .post(format!("http://{http}/v2/models/qnllm/infer"))
        .json(&body)
        .send()
        .await
        .expect("infer answered")
        .json()
        .await
        .expect("JSON reply");
    let digest = reply["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "result_digest"))
        .map(|t| t["data"][0].clone());
    assert_eq!(digest, Some(Value::String(want.clone())), "{reply}");

    let mut grpc_client = GrpcInferenceServiceClient::connect(format!("http://{grpc}"))
        .await
        .expect("gRPC connects");
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let reply = grpc_client
        .model_infer(ModelInferRequest {
            model_name: "qnllm".into(),
            inputs: vec![InferInputTensor {
                name: "ENCODING".into(),
                datatype: "FP32".into(),
                shape: vec![1, 768],
                ..InferInputTensor::default()
            }],
            raw_input_contents: vec![raw],
            ..ModelInferRequest::default()
        })
        .await
        .expect("gRPC infer answered")
        .into_inner();
    let at = reply
        .outputs
        .iter()
        .position(|o| o.name == "result_digest")
        .expect("a result_digest output");
    assert_eq!(first_bytes(&reply.raw_output_contents[at]), want);

    drop(stop);
    front.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_still_serves_after_twice_the_grace_period_without_a_shutdown() {
    let mut engine = UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .grpc("127.0.0.1:0")
        .build()
        .expect("engine builds");
    engine.start().await.expect("hub starts");
    let engine = Arc::new(engine);
    let stop = Stop(CancellationToken::new());
    let mut config = FrontConfig::for_engine(&engine);
    // The grace period bounds a drain after shutdown; it used to bound the server's life.
    config.grace = std::time::Duration::from_millis(50);
    let front = qnllm_front::start(engine.clone(), config, stop.0.clone())
        .await
        .expect("front starts");
    let grpc = front.grpc.expect("gRPC listens");
    let live = || async move {
        let mut client = GrpcInferenceServiceClient::connect(format!("http://{grpc}")).await?;
        let reply = client
            .server_live(qnllm_front::pb::ServerLiveRequest::default())
            .await?;
        Ok::<bool, Box<dyn std::error::Error>>(reply.into_inner().live)
    };
    assert!(live().await.expect("live at start"));
    // What is under test is time passing with no shutdown: well past grace + drain + grace.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(live().await.expect("still live"));
}
