//! The requests of the KServe v2 front's rows: one encoding as JSON tensors, as binary
//! tensor data, and as a gRPC `ModelInfer` with raw input contents, each asking the hub
//! not to answer from its cache.

use bytes::Bytes;
use qnllm_front::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use qnllm_front::pb::{self, model_infer_request::InferInputTensor, ModelInferRequest};

use crate::error::BenchError;

/// The three bodies, built once per run.
#[derive(Debug, Clone)]
pub(crate) struct Bodies {
    /// `application/json` with the tensor's values as numbers.
    pub(crate) json: Bytes,
    /// A JSON header, then the tensor's raw little-endian bytes.
    pub(crate) binary: Bytes,
    /// Length of `binary`'s JSON header (`Inference-Header-Content-Length`).
    pub(crate) header_length: usize,
    /// The gRPC request.
    pub(crate) grpc: ModelInferRequest,
}

impl Bodies {
    pub(crate) fn new() -> Bodies {
        let x: Vec<f32> = qnllm_engine::NormalInputs::new(1, 768)
            .next()
            .unwrap_or_default();
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let json = serde_json::json!({
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
        let header_length = head.len();
        let mut binary = head.into_bytes();
        binary.extend_from_slice(&raw);
        let grpc = ModelInferRequest {
            model_name: "qnllm".into(),
            inputs: vec![InferInputTensor {
                name: "ENCODING".into(),
                datatype: "FP32".into(),
                shape: vec![1, 768],
                ..InferInputTensor::default()
            }],
            raw_input_contents: vec![raw],
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
        Bodies {
            json: json.into(),
            binary: binary.into(),
            header_length,
            grpc,
        }
    }
}

/// A gRPC channel to `addr` (`HOST:PORT`).
pub(crate) async fn grpc(
    addr: &str,
) -> Result<GrpcInferenceServiceClient<tonic::transport::Channel>, BenchError> {
    GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| BenchError::start(format!("a gRPC channel to {addr}"), e))
}
