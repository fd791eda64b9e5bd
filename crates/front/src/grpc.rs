//! KServe v2 over gRPC: `inference.GRPCInferenceService` on the same inference path as HTTP,
//! with `raw_input_contents` and `raw_output_contents` as `tritonclient.grpc` uses them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::error::FrontError;
use crate::pb::grpc_inference_service_server::GrpcInferenceService;
use crate::pb::infer_parameter::ParameterChoice;
use crate::pb::{
    model_infer_response, model_metadata_response, InferParameter, ModelInferRequest,
    ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest,
    ModelReadyResponse, ModelStatisticsRequest, ModelStatisticsResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest,
    ServerReadyResponse,
};
use crate::state::{Params, State};
use crate::statistics::Statistics;
use crate::tensor::{self, Encodings};

/// The gRPC service over the shared state.
#[derive(Debug, Clone)]
pub(crate) struct GrpcFront {
    pub(crate) state: Arc<State>,
}

impl GrpcFront {
    /// With a token configured, every call but the health checks must carry it.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.state.config.token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if crate::auth::token_matches(given, token) {
            Ok(())
        } else {
            Err(FrontError::Unauthorized(
                "this server needs metadata `authorization: Bearer <token>`".into(),
            )
            .into())
        }
    }
}

/// `grpc-timeout` as sent by clients: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn params_from_map(map: &HashMap<String, InferParameter>) -> Result<Params, FrontError> {
    let mut params = Params::default();
    for (key, value) in map {
        let choice = value.parameter_choice.as_ref();
        match (key.as_str(), choice) {
            ("timeout", Some(ParameterChoice::Int64Param(us))) => params.set_timeout_us(*us)?,
            ("timeout", Some(ParameterChoice::Uint64Param(us))) => {
                params.set_timeout_us(i64::try_from(*us).unwrap_or(i64::MAX))?;
            }
            ("no_cache", Some(ParameterChoice::BoolParam(b))) => params.no_cache = *b,
            ("strategy", Some(ParameterChoice::StringParam(s))) => params.set_strategy(s)?,
            ("timeout" | "no_cache" | "strategy", _) => {
                return Err(FrontError::BadRequest(format!(
                    "parameter {key} has the wrong type: timeout is int64 microseconds, no_cache a bool, strategy a string"
                )))
            }
            _ => {}
        }
    }
    Ok(params)
}

fn tensor_metadata(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
) -> model_metadata_response::TensorMetadata {
    model_metadata_response::TensorMetadata {
        name: name.to_string(),
        datatype: datatype.to_string(),
        shape,
    }
}

impl GrpcFront {
    async fn model_infer_inner(
        &self,
        request: Request<ModelInferRequest>,
        rows: &mut usize,
    ) -> Result<(crate::state::Reply, ModelInferResponse), FrontError> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let request = request.into_inner();
        let model = self
            .state
            .find_model(&request.model_name, Some(&request.model_version))?;
        let [input] = request.inputs.as_slice() else {
            return Err(FrontError::BadRequest(format!(
                "this model takes exactly one input, {}; the request has {}",
                tensor::INPUT,
                request.inputs.len()
            )));
        };
        let n = Encodings::check_header(&input.name, &input.datatype, &input.shape, model.dim)?;
        let encodings = match request.raw_input_contents.as_slice() {
            [] => {
                let values = input
                    .contents
                    .as_ref()
                    .map(|c| c.fp32_contents.clone())
                    .unwrap_or_default();
                Encodings::new(n, model.dim, values)?
            }
            [raw] => Encodings::from_le_bytes(n, model.dim, raw)?,
            more => {
                return Err(FrontError::BadRequest(format!(
                    "raw_input_contents has {} entries for 1 input",
                    more.len()
                )))
            }
        };
        *rows = encodings.rows;
        let mut params = params_from_map(&request.parameters)?;
        if let Some(d) = deadline {
            params.timeout = Some(params.timeout.map_or(d, |t| t.min(d)));
        }
        let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        tensor::check_outputs(&names)?;
        let reply = self.state.infer(model, &encodings, &params).await?;
        let outputs = reply.outputs(&names)?;
        let mut response = ModelInferResponse {
            model_name: reply.model.name.clone(),
            model_version: reply.version(),
            id: request.id,
            parameters: HashMap::new(),
            outputs: Vec::with_capacity(outputs.len()),
            raw_output_contents: Vec::with_capacity(outputs.len()),
        };
        if let Some(a) = reply.answers.first() {
            response.parameters.insert(
                "model_digest".into(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::StringParam(
                        a.reasoning.model_digest.to_hex(),
                    )),
                },
            );
        }
        for o in outputs {
            response.raw_output_contents.push(o.data.to_le_bytes());
            response
                .outputs
                .push(model_infer_response::InferOutputTensor {
                    name: o.name.to_string(),
                    datatype: o.datatype.to_string(),
                    shape: o.shape,
                    parameters: HashMap::new(),
                    contents: None,
                });
        }
        Ok((reply, response))
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for GrpcFront {
    async fn server_live(
        &self,
        _request: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _request: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        self.state.find_model(&r.name, Some(&r.version))?;
        Ok(Response::new(ModelReadyResponse {
            ready: self.state.ready(),
        }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(ServerMetadataResponse {
            name: "qnllm".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::http::EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let model = self.state.find_model(&r.name, Some(&r.version))?;
        let labels = i64::from(model.labels);
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: model
                .version
                .map(|v| vec![v.to_string()])
                .unwrap_or_default(),
            platform: "qnllm-spiking".into(),
            inputs: vec![tensor_metadata(
                tensor::INPUT,
                "FP32",
                vec![-1, i64::try_from(model.dim).unwrap_or(i64::MAX)],
            )],
            outputs: tensor::OUTPUTS
                .iter()
                .map(|name| {
                    let (datatype, shape) = tensor::output_metadata(name, labels);
                    tensor_metadata(name, datatype, shape)
                })
                .collect(),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        // An empty name asks for every model: this server's one.
        let model = if r.name.is_empty() {
            self.state.model()
        } else {
            self.state.find_model(&r.name, Some(&r.version))?
        };
        let statistics = Statistics::read(&model, &self.state.metrics.totals);
        Ok(Response::new(statistics.into_grpc()))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let started = Instant::now();
        let mut rows = 0;
        match self.model_infer_inner(request, &mut rows).await {
            Ok((reply, response)) => {
                self.state.record("grpc", started, rows, Ok(&reply));
                Ok(Response::new(response))
            }
            Err(e) => {
                self.state.record("grpc", started, rows, Err(&e));
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_with_their_unit() {
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout("x"), None);
        assert_eq!(grpc_timeout(""), None);
    }
}
