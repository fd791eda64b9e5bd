//! `cargo run -p qnllm-front --example front_bench --release`: what the front adds over the HTTP
//! and gRPC stacks themselves. In one run, one request at a time over loopback, it measures a
//! minimal axum echo server and a minimal tonic server (the same generated service, answering
//! empty) next to qnllm's HTTP JSON, HTTP binary and gRPC infer with one in-process engine,
//! and prints p50/p99 and the ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_front::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use qnllm_front::pb::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use qnllm_front::pb::{self, model_infer_request::InferInputTensor, ModelInferRequest};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const WARMUP: usize = 200;
const SAMPLES: usize = 3_000;

fn quantiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

async fn measure<F, Fut>(mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..WARMUP {
        call().await;
    }
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        call().await;
        times.push(t.elapsed());
    }
    quantiles(times)
}

/// The tonic baseline: the protocol's service, answering every call at once and empty.
#[derive(Debug)]
struct Empty;

#[tonic::async_trait]
impl GrpcInferenceService for Empty {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse::default()))
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        Ok(Response::new(pb::ModelMetadataResponse::default()))
    }
    async fn model_infer(
        &self,
        _: Request<ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        Ok(Response::new(pb::ModelInferResponse::default()))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Baselines: an axum route that returns the body it got, a tonic service that answers empty.
    let echo = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    );
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    tokio::spawn(async move { axum::serve(echo_listener, echo).await });
    let empty_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let empty_addr = empty_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(Empty))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                empty_listener,
            )),
    );

    let mut engine = qnllm::UnifiedEngine::builder()
        .listen("127.0.0.1:0")
        .local_engines(1)
        .build()?;
    engine.start().await?;
    let stop = CancellationToken::new();
    let front = qnllm_front::start(
        Arc::new(engine),
        qnllm_front::FrontConfig {
            http: Some("127.0.0.1:0".into()),
            grpc: Some("127.0.0.1:0".into()),
            ..qnllm_front::FrontConfig::default()
        },
        stop.clone(),
    )
    .await?;
    let http = front.http.ok_or("no http address")?;
    let grpc = front.grpc.ok_or("no grpc address")?;

    let x: Vec<f32> = qnllm::NormalInputs::new(1, 768)
        .next()
        .ok_or("no encoding")?;
    let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let json_body = serde_json::json!({
        "inputs": [{ "name": "ENCODING", "datatype": "FP32", "shape": [1, 768], "data": x }],
        "parameters": { "no_cache": true },
    })
    .to_string();
    let head = serde_json::json!({
        "inputs": [{ "name": "ENCODING", "datatype": "FP32", "shape": [1, 768],
                     "parameters": { "binary_data_size": raw.len() } }],
        "parameters": { "binary_data_output": true, "no_cache": true },
    })
    .to_string();
    let mut binary_body = head.clone().into_bytes();
    binary_body.extend_from_slice(&raw);

    let client = reqwest::Client::new();
    let echo_url = format!("http://{echo_addr}/echo");
    let infer_url = format!("http://{http}/v2/models/qnllm/infer");
    let rows = [
        (
            "axum echo (binary body)",
            measure(|| {
                let r = client.post(&echo_url).body(binary_body.clone()).send();
                async move {
                    let _ = r.await.map(|r| r.bytes());
                }
            })
            .await,
        ),
        (
            "qnllm HTTP binary",
            measure(|| {
                let r = client
                    .post(&infer_url)
                    .header(qnllm_front::HEADER_LENGTH, head.len())
                    .body(binary_body.clone())
                    .send();
                async move {
                    if let Ok(r) = r.await {
                        let _ = r.bytes().await;
                    }
                }
            })
            .await,
        ),
        (
            "qnllm HTTP JSON",
            measure(|| {
                let r = client
                    .post(&infer_url)
                    .header("content-type", "application/json")
                    .body(json_body.clone())
                    .send();
                async move {
                    if let Ok(r) = r.await {
                        let _ = r.bytes().await;
                    }
                }
            })
            .await,
        ),
    ];
    let empty = GrpcInferenceServiceClient::connect(format!("http://{empty_addr}")).await?;
    let qnllm_grpc = GrpcInferenceServiceClient::connect(format!("http://{grpc}")).await?;
    let request = ModelInferRequest {
        model_name: "qnllm".into(),
        inputs: vec![InferInputTensor {
            name: "ENCODING".into(),
            datatype: "FP32".into(),
            shape: vec![1, 768],
            ..InferInputTensor::default()
        }],
        raw_input_contents: vec![raw.clone()],
        parameters: [(
            "no_cache".to_string(),
            pb::InferParameter {
                parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
            },
        )]
        .into_iter()
        .collect(),
        ..ModelInferRequest::default()
    };
    // Every qnllm row must really be answered: one checked call each before measuring.
    let check = qnllm_grpc.clone().model_infer(request.clone()).await?;
    if check.get_ref().outputs.len() != qnllm_front::OUTPUTS.len() {
        return Err("the gRPC infer did not return every output".into());
    }
    for (name, body, extra) in [
        ("binary", binary_body.clone(), Some(head.len())),
        ("JSON", json_body.clone().into_bytes(), None),
    ] {
        let mut r = client.post(&infer_url).body(body);
        if let Some(len) = extra {
            r = r.header(qnllm_front::HEADER_LENGTH, len);
        }
        let status = r.send().await?.status();
        if !status.is_success() {
            return Err(format!("the HTTP {name} infer answered {status}").into());
        }
    }
    let tonic_empty = measure(|| {
        let mut c = empty.clone();
        let r = request.clone();
        async move {
            let _ = c.model_infer(r).await;
        }
    })
    .await;
    let qnllm_tonic = measure(|| {
        let mut c = qnllm_grpc.clone();
        let r = request.clone();
        async move {
            let _ = c.model_infer(r).await;
        }
    })
    .await;

    println!(
        "{:<28} {:>10} {:>10} {:>12}",
        "one request at a time", "p50 µs", "p99 µs", "p50 ratio"
    );
    let base = rows[0].1 .0;
    for (name, (p50, p99)) in &rows {
        println!("{name:<28} {p50:>10.1} {p99:>10.1} {:>11.2}×", p50 / base);
    }
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>11.2}×",
        "tonic empty service", tonic_empty.0, tonic_empty.1, 1.0
    );
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>11.2}×",
        "qnllm gRPC (raw contents)",
        qnllm_tonic.0,
        qnllm_tonic.1,
        qnllm_tonic.0 / tonic_empty.0
    );
    println!("{SAMPLES} samples per row after {WARMUP} warm-up; engine in process, cache off");
    stop.cancel();
    Ok(())
}
