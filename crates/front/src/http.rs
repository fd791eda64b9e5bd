//! KServe v2 over HTTP/REST: health, metadata, and infer with JSON tensors and the binary
//! tensor data extension in both directions; `/metrics` and the dashboard ride along.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State as Extract};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::FrontError;
use crate::state::{ModelView, Params, State};
use crate::statistics::Statistics;
use crate::tensor::{self, Encodings, Output};

/// The header that says how long the JSON part of a binary-tensor body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

type Shared = Arc<State>;

/// Every HTTP route.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/stats", get(all_statistics))
        .route("/v2/models/{model}/stats", get(model_statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_statistics_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/metrics", get(metrics))
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

impl IntoResponse for FrontError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

async fn not_found(request: Request) -> FrontError {
    FrontError::UnknownModel(format!(
        "no such endpoint: {} {}",
        request.method(),
        request.uri().path()
    ))
}

/// With a token configured, every request but the health checks must carry it.
async fn authorize(Extract(state): Extract<Shared>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.config.token {
        let path = request.uri().path();
        if !path.starts_with("/v2/health/") {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !crate::auth::token_matches(given, token) {
                return FrontError::Unauthorized(
                    "this server needs `Authorization: Bearer <token>`".into(),
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready(Extract(state): Extract<Shared>) -> Response {
    let ready = state.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

/// The extensions this server implements.
pub(crate) const EXTENSIONS: [&str; 3] = ["binary_tensor_data", "parameters", "statistics"];

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "qnllm",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

pub(crate) fn metadata_json(model: &ModelView) -> Value {
    let labels = i64::from(model.labels);
    let outputs: Vec<Value> = tensor::OUTPUTS
        .iter()
        .map(|name| {
            let (datatype, shape) = tensor::output_metadata(name, labels);
            json!({ "name": name, "datatype": datatype, "shape": shape })
        })
        .collect();
    json!({
        "name": model.name,
        "versions": model.version.map(|v| vec![v.to_string()]).unwrap_or_default(),
        "platform": "qnllm-spiking",
        "inputs": [{ "name": tensor::INPUT, "datatype": "FP32", "shape": [-1, model.dim] }],
        "outputs": outputs,
        "parameters": { "model_digest": model.digest, "labels": model.labels },
    })
}

async fn model_metadata(
    Extract(state): Extract<Shared>,
    Path(model): Path<String>,
) -> Result<Json<Value>, FrontError> {
    Ok(Json(metadata_json(&state.find_model(&model, None)?)))
}

async fn model_metadata_v(
    Extract(state): Extract<Shared>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, FrontError> {
    Ok(Json(metadata_json(
        &state.find_model(&model, Some(&version))?,
    )))
}

fn model_ready_reply(state: &State, model: &str, version: Option<&str>) -> Response {
    match state.find_model(model, version) {
        Ok(_) => ready_status(state.ready()),
        Err(e) => e.into_response(),
    }
}

fn ready_status(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn model_ready(Extract(state): Extract<Shared>, Path(model): Path<String>) -> Response {
    model_ready_reply(&state, &model, None)
}

async fn model_ready_v(
    Extract(state): Extract<Shared>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_ready_reply(&state, &model, Some(&version))
}

async fn all_statistics(Extract(state): Extract<Shared>) -> Json<Value> {
    Json(Statistics::read(&state.model(), &state.metrics.totals).to_json())
}

async fn model_statistics(
    Extract(state): Extract<Shared>,
    Path(model): Path<String>,
) -> Result<Json<Value>, FrontError> {
    let model = state.find_model(&model, None)?;
    Ok(Json(
        Statistics::read(&model, &state.metrics.totals).to_json(),
    ))
}

async fn model_statistics_v(
    Extract(state): Extract<Shared>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, FrontError> {
    let model = state.find_model(&model, Some(&version))?;
    Ok(Json(
        Statistics::read(&model, &state.metrics.totals).to_json(),
    ))
}

async fn metrics(Extract(state): Extract<Shared>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            state.metrics.encode_openmetrics(),
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            state.metrics.encode_prometheus(),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
struct InferBody {
    id: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Vec<OutputBody>,
}

#[derive(Debug, Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(
    Extract(state): Extract<Shared>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(&state, &model, None, &headers, body).await
}

async fn infer_v(
    Extract(state): Extract<Shared>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_infer(&state, &model, Some(&version), &headers, body).await
}

async fn run_infer(
    state: &State,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut rows = 0;
    let outcome = async {
        let model = state.find_model(model, version)?;
        let body = read_body(state, body).await?;
        let (request, encodings, binary_out) = parse_infer(&body, headers, &model)?;
        rows = encodings.rows;
        let params = params_from_json(&request.parameters)?;
        let names: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
        tensor::check_outputs(&names)?;
        let reply = state.infer(model, &encodings, &params).await?;
        let outputs = reply.outputs(&names)?;
        let response = respond(&request, &reply, &outputs, &binary_out);
        Ok::<_, FrontError>((reply, response))
    }
    .await;
    match outcome {
        Ok((reply, response)) => {
            state.record("http", started, rows, Ok(&reply));
            response
        }
        Err(e) => {
            state.record("http", started, rows, Err(&e));
            e.into_response()
        }
    }
}

/// Most bytes read and thrown away from a body over the limit, so the client (which is
/// still sending) reads the 413 instead of a reset connection.
const DRAIN_BYTES: usize = 64 << 20;

/// Reads the whole body within the size limit and the slow-client time limit.
async fn read_body(state: &State, body: Body) -> Result<Bytes, FrontError> {
    use futures::StreamExt;
    let limit = state.config.max_body_bytes;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut kept = Vec::new();
        let mut seen = 0_usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                FrontError::BadRequest(format!("cannot read the request body: {e}"))
            })?;
            seen = seen.saturating_add(chunk.len());
            if seen <= limit {
                kept.extend_from_slice(&chunk);
            } else if seen > DRAIN_BYTES {
                break;
            }
        }
        if seen > limit {
            return Err(FrontError::TooLarge(format!(
                "request body larger than the limit of {limit} bytes; send smaller batches"
            )));
        }
        Ok(Bytes::from(kept))
    };
    match tokio::time::timeout(state.config.body_timeout, read).await {
        Ok(outcome) => outcome,
        Err(_) => Err(FrontError::SlowClient(format!(
            "request body not received within {:?}",
            state.config.body_timeout
        ))),
    }
}

/// Which outputs go back as binary data.
#[derive(Debug, Default)]
struct BinaryOut {
    all: bool,
    named: Vec<String>,
}

impl BinaryOut {
    fn wants(&self, name: &str) -> bool {
        self.all || self.named.iter().any(|n| n == name)
    }
}

fn flag(map: &Map<String, Value>, key: &str) -> Result<bool, FrontError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(FrontError::BadRequest(format!(
            "parameter {key} must be true or false, got {other}"
        ))),
    }
}

fn parse_infer(
    body: &[u8],
    headers: &HeaderMap,
    model: &ModelView,
) -> Result<(InferBody, Encodings, BinaryOut), FrontError> {
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n <= body.len())
            .ok_or_else(|| {
                FrontError::BadRequest(format!(
                    "header Inference-Header-Content-Length must be a byte count within the body of {} bytes",
                    body.len()
                ))
            })?,
    };
    let (head, mut binary) = body.split_at(json_len);
    let request: InferBody = serde_json::from_slice(head).map_err(|e| {
        FrontError::BadRequest(format!("the request is not valid JSON for infer: {e}"))
    })?;
    let [input] = request.inputs.as_slice() else {
        return Err(FrontError::BadRequest(format!(
            "this model takes exactly one input, {}; the request has {}",
            tensor::INPUT,
            request.inputs.len()
        )));
    };
    let rows = Encodings::check_header(&input.name, &input.datatype, &input.shape, model.dim)?;
    let encodings = match (input.parameters.get("binary_data_size"), &input.data) {
        (Some(size), None) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    FrontError::BadRequest("binary_data_size must be a byte count".into())
                })?;
            if size > binary.len() {
                return Err(FrontError::BadRequest(format!(
                    "input {} says binary_data_size {size}, but only {} bytes follow the JSON header",
                    tensor::INPUT,
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            binary = rest;
            Encodings::from_le_bytes(rows, model.dim, mine)?
        }
        (None, Some(data)) => Encodings::from_json(rows, model.dim, data)?,
        (Some(_), Some(_)) => {
            return Err(FrontError::BadRequest(format!(
                "input {} has both data and binary_data_size; give one",
                tensor::INPUT
            )))
        }
        (None, None) => {
            return Err(FrontError::BadRequest(format!(
                "input {} has neither data nor binary_data_size",
                tensor::INPUT
            )))
        }
    };
    if !binary.is_empty() {
        return Err(FrontError::BadRequest(format!(
            "{} bytes of binary data follow the inputs that no input claims",
            binary.len()
        )));
    }
    let mut binary_out = BinaryOut {
        all: flag(&request.parameters, "binary_data_output")?,
        named: Vec::new(),
    };
    for o in &request.outputs {
        if flag(&o.parameters, "binary_data")? {
            binary_out.named.push(o.name.clone());
        }
    }
    Ok((request, encodings, binary_out))
}

/// Request parameters: `strategy`, `no_cache` and `timeout` (microseconds).
fn params_from_json(map: &Map<String, Value>) -> Result<Params, FrontError> {
    let mut params = Params::default();
    if let Some(v) = map.get("timeout") {
        let us = v.as_i64().ok_or_else(|| {
            FrontError::BadRequest(format!(
                "parameter timeout must be an integer number of microseconds, got {v}"
            ))
        })?;
        params.set_timeout_us(us)?;
    }
    params.no_cache = flag(map, "no_cache")?;
    match map.get("strategy") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => params.set_strategy(s)?,
        Some(other) => {
            return Err(FrontError::BadRequest(format!(
                "parameter strategy must be a string, got {other}"
            )))
        }
    }
    Ok(params)
}

fn respond(
    request: &InferBody,
    reply: &crate::state::Reply,
    outputs: &[Output],
    binary_out: &BinaryOut,
) -> Response {
    let mut tail: Vec<u8> = Vec::new();
    let mut listed = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut entry = json!({ "name": o.name, "datatype": o.datatype, "shape": o.shape });
        if binary_out.wants(o.name) {
            let bytes = o.data.to_le_bytes();
            entry["parameters"] = json!({ "binary_data_size": bytes.len() });
            tail.extend_from_slice(&bytes);
        } else {
            entry["data"] = o.data.to_json();
        }
        listed.push(entry);
    }
    let mut head = json!({
        "model_name": reply.model.name,
        "model_version": reply.version(),
        "parameters": {
            "model_digest": reply.answers.first().map(|a| a.reasoning.model_digest.to_hex()),
        },
        "outputs": listed,
    });
    if let Some(id) = &request.id {
        head["id"] = id.clone();
    }
    let head = head.to_string();
    if tail.is_empty() {
        return (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            head,
        )
            .into_response();
    }
    let json_len = head.len();
    let mut body = head.into_bytes();
    body.extend_from_slice(&tail);
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert(HEADER_LENGTH, HeaderValue::from(json_len));
    response
}
