//! `cargo bench -p qnllm-router --bench route -- MODE N`: N router calls against mock
//! backends that answer at once, to count the router's own cost per call. Run it under
//! `valgrind --tool=callgrind` for N and 11 N calls: the difference over 10 N is the
//! instructions per call, without the set-up. MODE is `single` (cache off), `hit` (cache on,
//! every call a hit), `hedged` or `redundant` (two copies); without arguments it runs each
//! mode and prints wall-clock nanoseconds per call.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_engine::{Digest, Reasoning};
use qnllm_router::{
    Answer, Backend, BackendError, BackendFuture, EngineInfo, Mode, ModelState, Router,
    RouterConfig,
};

const MODEL: Digest = Digest([9; 32]);

/// An engine that answers at once with one well-formed answer.
#[derive(Debug)]
struct Instant0 {
    name: String,
    answer: Answer,
}

impl Instant0 {
    fn new(name: &str) -> Arc<Instant0> {
        let mut r = Reasoning {
            label: 1,
            confidence: 0.5,
            scores: vec![0, 1],
            total_spikes: 10,
            label_spikes: vec![0, 1],
            model_version: 0,
            model_digest: MODEL,
            result_digest: Digest::default(),
        };
        r.result_digest = r.expected_result_digest();
        Arc::new(Instant0 {
            name: name.into(),
            answer: Answer::new(r, name, Duration::from_micros(1)),
        })
    }
}

impl Backend for Instant0 {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "remote"
    }
    fn model_digest(&self) -> Digest {
        MODEL
    }
    fn model_state(&self) -> ModelState {
        ModelState {
            version: 0,
            digest: MODEL,
        }
    }
    fn describe(&self) -> EngineInfo {
        EngineInfo {
            name: self.name.clone(),
            kind: "remote",
            input_size: 2,
            labels: 2,
            model_version: 0,
            model_digest: MODEL,
        }
    }
    fn reason<'a>(
        &'a self,
        _encoding: &'a [f32],
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move { Ok(self.answer.clone()) })
    }
    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        let n = values.len() / dim.max(1);
        Box::pin(async move { Ok(vec![self.answer.clone(); n]) })
    }
}

fn router(mode: &str) -> Router {
    let (mode, cache) = match mode {
        "single" => (Mode::Single, None),
        "hit" => (Mode::Single, Some(1024)),
        "hedged" => (Mode::Hedged, None),
        "redundant" => (Mode::Redundant { copies: 2 }, None),
        other => panic!("unknown mode {other}: single, hit, hedged or redundant"),
    };
    let router = Router::with_config(RouterConfig {
        mode,
        cache_capacity: cache,
        ..RouterConfig::default()
    });
    for name in ["a", "b", "c"] {
        router.add(Instant0::new(name));
    }
    router
}

async fn run(router: &Router, n: usize) {
    let encoding = [0.25f32, 0.5];
    for _ in 0..n {
        let answer = router
            .reason(&encoding, Duration::from_secs(5))
            .await
            .unwrap();
        std::hint::black_box(answer);
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let [mode, n] = args.as_slice() {
        let n: usize = n.parse().unwrap();
        let router = router(mode);
        rt.block_on(run(&router, n));
        println!("{mode}: {n} calls");
        return;
    }
    for mode in ["single", "hit", "hedged", "redundant"] {
        let router = router(mode);
        rt.block_on(run(&router, 10_000));
        let started = Instant::now();
        rt.block_on(run(&router, 100_000));
        let ns = started.elapsed().as_nanos() / 100_000;
        println!("{mode:>10}: {ns} ns per call");
    }
}
