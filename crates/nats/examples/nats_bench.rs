//! The NATS path against its baselines, in one run on loopback: a raw NATS request-reply of
//! the same sizes (the floor), a request through `NatsBackend` to a NATS worker, and the
//! direct hub path (client → hub → socket worker). The engine is `FixedEngine` in both
//! worker paths, so the figures are transport, not compute.
//!
//! `cargo run --release -p qnllm-nats --example nats_bench [-- REQUESTS]` (nats-server on PATH).

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use qnllm_engine::{FixedEngine, NormalInputs, Params, SpikingEngine};
use qnllm_nats::{connect, Announce, NatsBackend, NatsOptions, WorkerConfig};
use qnllm_protocol::{encode_frame, encode_reason_frame, Deadline, Message};
use qnllm_router::{Backend, LocalBackend};
use tokio_util::sync::CancellationToken;

const BUDGET: Duration = Duration::from_secs(5);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, floor: Option<Duration>) -> Duration {
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    let p99 = percentile(&samples, 0.99);
    let ratio = floor.map_or(String::new(), |f| {
        format!("  {:.2}× raw p50", p50.as_secs_f64() / f.as_secs_f64())
    });
    println!(
        "{name:<34} p50 {:>7.1} µs  p99 {:>7.1} µs{ratio}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    p50
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("nats://127.0.0.1:{port}");
    let client = loop {
        // The server takes a moment to bind; connecting is the readiness check.
        match connect(&NatsOptions::new(&url)).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let spiking = SpikingEngine::from_seed(1, Params::default())?;
    let fixed = FixedEngine::new(&spiking);
    let x: Vec<f32> = NormalInputs::new(1, 768).next().ok_or("no encoding")?;

    // 1. Raw NATS request-reply with the same request and reply sizes.
    let mut request = BytesMut::new();
    encode_reason_frame(&x, 1, Deadline::NONE, &mut request);
    let request = request.freeze();
    let reply_bytes = {
        let answer = LocalBackend::new("w", fixed.clone()).reason_now(&x)?;
        let mut out = BytesMut::new();
        let body = qnllm_protocol::ResultBody {
            label: answer.reasoning.label,
            confidence: answer.reasoning.confidence,
            total_spikes: answer.reasoning.total_spikes,
            scores: answer.reasoning.scores.clone(),
            label_spikes: answer.reasoning.label_spikes.clone(),
            model_version: 0,
            model_digest: answer.reasoning.model_digest.0,
            result_digest: answer.reasoning.result_digest.0,
            compute_ns: 0,
            engine: "w".into(),
        };
        encode_frame(&Message::Result(body), 1, Deadline::NONE, &mut out);
        out.freeze()
    };
    let echo = connect(&NatsOptions::new(&url)).await?;
    let mut sub = echo.subscribe("bench.raw").await?;
    let responder = {
        let echo = echo.clone();
        let reply_bytes = reply_bytes.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = echo.publish(reply, reply_bytes.clone()).await;
                }
            }
        })
    };
    echo.flush().await?;
    let mut raw = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        client.request("bench.raw", request.clone()).await?;
        if i >= n / 10 {
            raw.push(started.elapsed());
        }
    }
    println!(
        "{n} requests one at a time, loopback, request {} B, reply {} B",
        request.len(),
        reply_bytes.len()
    );
    let floor = report("raw NATS request-reply", raw, None);

    // 2. NatsBackend → NATS worker (fixed engine).
    let stop = CancellationToken::new();
    let mut config = WorkerConfig::new("bench-worker");
    config.follow_log = false;
    let worker_client = connect(&NatsOptions::new(&url)).await?;
    let worker = tokio::spawn(qnllm_nats::worker::run(
        worker_client,
        config,
        LocalBackend::new("bench-worker", fixed.clone()),
        stop.clone(),
    ));
    let announce = Announce {
        id: "bench-worker".into(),
        name: "bench-worker".into(),
        kind: "fixed".into(),
        model_digest: spiking_digest(&spiking),
        model_version: 0,
        lineage: String::new(),
        input_size: 768,
        labels: 10,
        max_in_flight: 64,
        protocol: qnllm_protocol::PROTOCOL_VERSION,
        subject: qnllm_nats::subject::engine("bench-worker"),
        leaving: false,
        run: 1,
    };
    let backend = NatsBackend::new(client.clone(), &announce, None);
    // The worker is subscribed once it answers a first request.
    loop {
        if backend.reason(&x, Duration::from_millis(200)).await.is_ok() {
            break;
        }
    }
    let mut via = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        backend.reason(&x, BUDGET).await?;
        if i >= n / 10 {
            via.push(started.elapsed());
        }
    }
    report("NatsBackend → NATS worker", via, Some(floor));

    // 3. The direct hub path: client → hub → socket worker.
    let hub_config = qnllm_hub::HubConfig {
        listen: Some("127.0.0.1:0".into()),
        ..qnllm_hub::HubConfig::default()
    };
    let hub = qnllm_hub::Hub::new(hub_config)?;
    let hub_stop = CancellationToken::new();
    let running = hub.start(hub_stop.clone()).await?;
    let addr = running.tcp.ok_or("the hub has no tcp address")?;
    let endpoint = qnllm_hub::Endpoint::parse(&addr.to_string());
    let socket_worker = tokio::spawn(qnllm_hub::worker::run(
        qnllm_hub::WorkerConfig::new(endpoint.clone()),
        LocalBackend::new("socket-worker", fixed),
        hub_stop.clone(),
    ));
    let hub_client = qnllm_hub::Client::connect(&endpoint, "bench", None).await?;
    loop {
        if hub_client
            .reason(&x, Duration::from_millis(200))
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut direct = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        hub_client.reason(&x, BUDGET).await?;
        if i >= n / 10 {
            direct.push(started.elapsed());
        }
    }
    report("client → hub → socket worker", direct, Some(floor));

    stop.cancel();
    hub_stop.cancel();
    let _ = worker.await;
    let _ = socket_worker.await;
    responder.abort();
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}

fn spiking_digest(engine: &SpikingEngine) -> String {
    use qnllm_engine::Engine;
    engine.info().digest.to_hex()
}
