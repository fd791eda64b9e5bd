//! The HTTP front against a real `UnifiedEngine` on 127.0.0.1 port 0, through a real HTTP
//! client: health, metadata, JSON and binary infer, every error status, and `/metrics`.

use std::sync::Arc;

use qnllm::{Model, NormalInputs, Params, UnifiedEngine};
use qnllm_engine::Engine;
use qnllm_front::FrontConfig;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Front {
    base: String,
    stop: CancellationToken,
    engine: Arc<UnifiedEngine>,
    client: reqwest::Client,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn front(local: usize, tweak: impl FnOnce(&mut FrontConfig)) -> Front {
    front_on(UnifiedEngine::builder().local_engines(local), tweak).await
}

async fn front_on(builder: qnllm::Builder, tweak: impl FnOnce(&mut FrontConfig)) -> Front {
    let mut engine = builder
        .listen("127.0.0.1:0")
        .build()
        .expect("engine builds");
    engine.start().await.expect("hub starts");
    let engine = Arc::new(engine);
    let mut config = FrontConfig {
        http: Some("127.0.0.1:0".into()),
        ..FrontConfig::default()
    };
    tweak(&mut config);
    let stop = CancellationToken::new();
    let running = qnllm_front::start(engine.clone(), config, stop.clone())
        .await
        .expect("front starts");
    let addr = running.http.expect("http address");
    tokio::spawn(running.wait());
    Front {
        base: format!("http://{addr}"),
        stop,
        engine,
        client: reqwest::Client::new(),
    }
}

fn encodings(n: usize, seed: u64) -> Vec<Vec<f32>> {
    NormalInputs::new(seed, 768).take(n).collect()
}

fn expected(x: &[f32]) -> qnllm::Reasoning {
    let engine = qnllm::SpikingEngine::new(Model::from_seed(1, Params::default()).expect("model"));
    engine.reason(x).expect("reasons")
}

impl Front {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The `/metrics` text.
    async fn scrape(&self) -> String {
        let r = self.client.get(format!("{}/metrics", self.base)).send();
        r.await.expect("scraped").text().await.expect("text")
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn infer_body(rows: &[Vec<f32>]) -> Value {
    json!({
        "id": "req-7",
        "inputs": [{
            "name": "ENCODING", "datatype": "FP32", "shape": [rows.len(), 768],
            "data": rows.concat(),
        }],
    })
}

fn output<'a>(reply: &'a Value, name: &str) -> &'a Value {
    reply["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == name))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata_describe_the_model() {
    let f = front(1, |_| {}).await;
    assert_eq!(f.get("/v2/health/live").await.0, 200);
    assert_eq!(
        f.get("/v2/health/ready").await,
        (200, json!({ "ready": true }))
    );
    let (status, server) = f.get("/v2").await;
    assert_eq!(status, 200);
    assert!(server["extensions"]
        .as_array()
        .is_some_and(|e| e.contains(&json!("binary_tensor_data"))));
    let (status, model) = f.get("/v2/models/qnllm").await;
    assert_eq!(status, 200);
    assert_eq!(
        model["inputs"][0],
        json!({ "name": "ENCODING", "datatype": "FP32", "shape": [-1, 768] })
    );
    let info = Model::from_seed(1, Params::default()).expect("model");
    assert_eq!(model["versions"], json!([info.version().to_string()]));
    assert_eq!(
        model["parameters"]["model_digest"],
        json!(info.digest().to_hex())
    );
    let names: Vec<&str> = model["outputs"]
        .as_array()
        .map(|o| o.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, qnllm_front::OUTPUTS.to_vec());
    assert_eq!(f.get("/v2/models/qnllm/ready").await.0, 200);
    let v = info.version();
    assert_eq!(
        f.get(&format!("/v2/models/qnllm/versions/{v}")).await.0,
        200
    );
    assert_eq!(
        f.get(&format!("/v2/models/qnllm/versions/{}", v + 1))
            .await
            .0,
        404
    );
    assert_eq!(f.get("/v2/models/other").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_infer_matches_the_engine_and_echoes_the_id() {
    let f = front(1, |_| {}).await;
    let rows = encodings(3, 11);
    let (status, reply) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&rows))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["id"], "req-7");
    assert_eq!(reply["model_name"], "qnllm");
    for (i, x) in rows.iter().enumerate() {
        let want = expected(x);
        assert_eq!(output(&reply, "label")["data"][i], json!(want.label));
        assert_eq!(
            output(&reply, "result_digest")["data"][i],
            json!(want.result_digest.to_hex())
        );
        assert_eq!(
            output(&reply, "total_spikes")["data"][i],
            json!(want.total_spikes)
        );
        let confidence = output(&reply, "confidence")["data"][i]
            .as_f64()
            .map(|c| c as f32);
        assert_eq!(confidence, Some(want.confidence));
        let labels = want.scores.len();
        let scores: Vec<Value> = output(&reply, "scores")["data"]
            .as_array()
            .map(|s| s[i * labels..(i + 1) * labels].to_vec())
            .unwrap_or_default();
        assert_eq!(json!(scores), json!(want.scores));
    }
    let labels = expected(&rows[0]).scores.len();
    assert_eq!(output(&reply, "scores")["shape"], json!([3, labels]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_tensors_go_both_ways() {
    let f = front(1, |_| {}).await;
    let rows = encodings(2, 5);
    let raw: Vec<u8> = rows.concat().iter().flat_map(|v| v.to_le_bytes()).collect();
    let head = json!({
        "inputs": [{ "name": "ENCODING", "datatype": "FP32", "shape": [2, 768],
                     "parameters": { "binary_data_size": raw.len() } }],
        "outputs": [{ "name": "label", "parameters": { "binary_data": true } },
                    { "name": "result_digest", "parameters": { "binary_data": true } },
                    { "name": "engine" }],
    })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let r = f
        .client
        .post(format!("{}/v2/models/qnllm/infer", f.base))
        .header(qnllm_front::HEADER_LENGTH, head.len())
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
    let json_len: usize = r
        .headers()
        .get(qnllm_front::HEADER_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("header length in the reply");
    let bytes = r.bytes().await.expect("body");
    let reply: Value = serde_json::from_slice(&bytes[..json_len]).expect("json head");
    let tail = &bytes[json_len..];
    assert_eq!(
        reply["outputs"][0]["parameters"]["binary_data_size"],
        json!(8)
    );
    let labels: Vec<i32> = tail[..8]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want: Vec<i32> = rows.iter().map(|x| expected(x).label as i32).collect();
    assert_eq!(labels, want);
    // BYTES: 4-byte length, then the hex digest, per row.
    let digest_len = u32::from_le_bytes([tail[8], tail[9], tail[10], tail[11]]) as usize;
    assert_eq!(digest_len, 64);
    assert_eq!(
        std::str::from_utf8(&tail[12..12 + 64]).ok(),
        Some(expected(&rows[0]).result_digest.to_hex().as_str())
    );
    assert_eq!(
        output(&reply, "engine")["data"],
        json!(["local-0", "local-0"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_the_server_keeps_serving() {
    let f = front(1, |c| c.max_body_bytes = 64 * 1024).await;
    let x = encodings(1, 1).concat();
    let case = |shape: Value, dtype: &str, data: Value| json!({ "inputs": [{ "name": "ENCODING", "datatype": dtype, "shape": shape, "data": data }] });
    let (status, reply) = f
        .post_json(
            "/v2/models/qnllm/infer",
            &case(json!([1, 767]), "FP32", json!(x[..767])),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("[N, 768]")),
        "{reply}"
    );
    let (status, reply) = f
        .post_json(
            "/v2/models/qnllm/infer",
            &case(json!([1, 768]), "FP64", json!(x)),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().is_some_and(|e| e.contains("FP64")),
        "{reply}"
    );
    // A NaN only travels as binary data; the error names its row and column.
    let mut bad = x.clone();
    bad[42] = f32::NAN;
    let raw: Vec<u8> = bad.iter().flat_map(|v| v.to_le_bytes()).collect();
    let head = json!({ "inputs": [{ "name": "ENCODING", "datatype": "FP32", "shape": [1, 768],
                                     "parameters": { "binary_data_size": raw.len() } }] })
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&raw);
    let r = f
        .client
        .post(format!("{}/v2/models/qnllm/infer", f.base))
        .header(qnllm_front::HEADER_LENGTH, head.len())
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 400);
    let reply: Value = r.json().await.expect("json error");
    assert_eq!(
        reply["error"],
        "input ENCODING: value at index [0, 42] is NaN; encodings must be finite"
    );
    let (status, reply) = f
        .post_json(
            "/v2/models/nope/infer",
            &infer_body(std::slice::from_ref(&x)),
        )
        .await;
    assert_eq!(status, 404);
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("nope")));
    let (status, reply) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&encodings(40, 2)))
        .await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply["error"].as_str().is_some_and(|e| e.contains("limit")));
    let mut with_strategy = infer_body(std::slice::from_ref(&x));
    with_strategy["parameters"] = json!({ "strategy": "fastest" });
    let (status, reply) = f.post_json("/v2/models/qnllm/infer", &with_strategy).await;
    assert_eq!(status, 400);
    assert!(reply["error"]
        .as_str()
        .is_some_and(|e| e.contains("fastest")));
    // And everyone else is still served.
    let (status, _) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&[x]))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_engine_ready_is_false_and_infer_is_503() {
    let f = front(0, |_| {}).await;
    assert_eq!(f.get("/v2/health/live").await.0, 200);
    assert_eq!(
        f.get("/v2/health/ready").await,
        (503, json!({ "ready": false }))
    );
    assert_eq!(f.get("/v2/models/qnllm/ready").await.0, 503);
    let (status, reply) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&encodings(1, 3)))
        .await;
    assert_eq!(status, 503);
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("no engine")),
        "{reply}"
    );
    // An engine arriving flips it back at once.
    f.engine
        .router()
        .add(Arc::new(qnllm_router::LocalBackend::new(
            "late",
            qnllm::SpikingEngine::new(Model::from_seed(1, Params::default()).expect("model")),
        )));
    assert_eq!(f.get("/v2/health/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_one_is_set() {
    let f = front(1, |c| c.token = Some("s3cret".into())).await;
    assert_eq!(f.get("/v2/health/live").await.0, 200);
    let (status, reply) = f.get("/v2/models/qnllm").await;
    assert_eq!(status, 401);
    assert!(reply["error"]
        .as_str()
        .is_some_and(|e| e.contains("Bearer")));
    let r = f
        .client
        .get(format!("{}/v2/models/qnllm", f.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_address_without_a_token_is_refused() {
    let engine = Arc::new(
        UnifiedEngine::builder()
            .listen("127.0.0.1:0")
            .build()
            .expect("engine"),
    );
    let config = FrontConfig {
        http: Some("0.0.0.0:0".into()),
        ..FrontConfig::default()
    };
    let err = qnllm_front::start(engine, config, CancellationToken::new())
        .await
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("not a loopback address")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_not_ready_before_it_closes() {
    let f = front(1, |c| c.drain_delay = std::time::Duration::from_secs(30)).await;
    assert_eq!(f.get("/v2/health/ready").await.0, 200);
    f.stop.cancel();
    // Within the drain delay the listener is still open and says not ready.
    let mut seen = 0;
    for _ in 0..200 {
        let (status, _) = f.get("/v2/health/ready").await;
        if status == 503 {
            seen = status;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(seen, 503);
    let (status, _) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&encodings(1, 9)))
        .await;
    assert_eq!(status, 503);
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_bypasses_the_cache_and_metrics_read_back_the_load() {
    let f = front_on(UnifiedEngine::builder().local_engines(1).cache(16), |_| {}).await;
    let x = encodings(1, 21);
    let mut skip = infer_body(&x);
    skip["parameters"] = json!({ "no_cache": true });
    for _ in 0..2 {
        let (status, reply) = f.post_json("/v2/models/qnllm/infer", &skip).await;
        assert_eq!(status, 200);
        assert_eq!(output(&reply, "cached")["data"], json!([false]));
    }
    let mut cached = Vec::new();
    for _ in 0..2 {
        let (_, reply) = f.post_json("/v2/models/qnllm/infer", &infer_body(&x)).await;
        cached.push(output(&reply, "cached")["data"][0].clone());
    }
    assert_eq!(cached, vec![json!(false), json!(true)]);
    let (status, _) = f.post_json("/v2/models/other/infer", &infer_body(&x)).await;
    assert_eq!(status, 404);
    let text = f.scrape().await;
    let ok = r#"qnllm_front_requests_total{engine="local-0",outcome="ok"}"#;
    assert_eq!(metric(&text, ok), Some(4.0), "{text}");
    let unknown = r#"qnllm_front_requests_total{engine="none",outcome="unknown_model"}"#;
    assert_eq!(metric(&text, unknown), Some(1.0));
    assert_eq!(metric(&text, "qnllm_cache_hits_total"), Some(1.0));
    assert_eq!(metric(&text, "qnllm_cache_misses_total"), Some(1.0));
    assert_eq!(
        metric(
            &text,
            r#"qnllm_engine_requests_total{engine="local-0",kind="local"}"#
        ),
        Some(3.0)
    );
    assert!(text.contains("# TYPE qnllm_front_requests_total counter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_b_counts_b_inferences_in_one_request_and_one_execution() {
    let f = front_on(UnifiedEngine::builder().local_engines(1).cache(16), |_| {}).await;
    const B: usize = 5;
    let (status, _) = f
        .post_json("/v2/models/qnllm/infer", &infer_body(&encodings(B, 31)))
        .await;
    assert_eq!(status, 200);
    let x = encodings(1, 32);
    let mut cached = Vec::new();
    for _ in 0..2 {
        let (status, reply) = f.post_json("/v2/models/qnllm/infer", &infer_body(&x)).await;
        assert_eq!(status, 200);
        cached.push(output(&reply, "cached")["data"][0].clone());
    }
    assert_eq!(cached, vec![json!(false), json!(true)]);
    let (status, _) = f.post_json("/v2/models/other/infer", &infer_body(&x)).await;
    assert_eq!(status, 404);

    // The batch is B inferences and one execution; the single miss one of each; the hit none.
    let (status, stats) = f.get("/v2/models/qnllm/stats").await;
    assert_eq!(status, 200, "{stats}");
    let model = &stats["model_stats"][0];
    assert_eq!(model["name"], "qnllm");
    let version = Model::from_seed(1, Params::default())
        .expect("model")
        .version()
        .to_string();
    assert_eq!(model["version"], json!(version));
    assert_eq!(model["inference_count"], json!(B + 1), "{stats}");
    assert_eq!(model["execution_count"], 2, "{stats}");
    let counts = &model["inference_stats"];
    assert_eq!(counts["success"]["count"], 3);
    assert_eq!(counts["fail"]["count"], 1);
    assert_eq!(counts["cache_hit"]["count"], 1);
    assert!(model["last_inference"].as_u64().is_some_and(|ms| ms > 0));
    assert_eq!(f.get("/v2/models/stats").await.1, stats);
    let at_version = format!("/v2/models/qnllm/versions/{version}/stats");
    assert_eq!(f.get(&at_version).await.1, stats);
    assert_eq!(f.get("/v2/models/qnllm/versions/999/stats").await.0, 404);
    assert_eq!(f.get("/v2/models/other/stats").await.0, 404);

    let text = f.scrape().await;
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(r#"qnllm_front_requests_total{engine="local-0",outcome="ok"}"#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series(r#"qnllm_front_inferences_total{engine="local-0"}"#),
        Some((B + 1) as f64)
    );
    assert_eq!(
        series(r#"qnllm_front_executions_total{engine="local-0"}"#),
        Some(2.0)
    );
    let requests = series(r#"qnllm_front_request_duration_seconds_count{protocol="http"}"#);
    assert_eq!(requests, Some(4.0));

    // The dashboard's sums are the same figures.
    let (_, snapshot) = f.get("/api/snapshot").await;
    let front = &snapshot["front"];
    assert_eq!(front["requests"], 4);
    assert_eq!(front["ok"], 3);
    assert_eq!(front["encodings"], json!(B + 2));
    assert_eq!(front["inferences"], json!(B + 1));
    assert_eq!(front["executions"], 2);
}
