//! `cargo bench -p qnllm-engine`: the time of one `reason` at the default size, per kernel,
//! next to the time to stream the model's weights once (the memory floor) measured in the
//! same run, and batch throughput per thread count.
//!
//! `QNLLM_BENCH_MS` sets the time spent on each figure (default 1000).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use qnllm_engine::{available_kernels, Engine, Model, NormalInputs, Params, SpikingEngine};

/// Runs `f` repeatedly for `budget` and returns the per-call times, sorted.
fn sample(budget: Duration, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..10 {
        f(); // warm caches and branch predictors
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 20 {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    times
}

fn quantile(times: &[Duration], q: f64) -> Duration {
    times[((times.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Reads every weight byte once, eight at a time, as the cheapest possible pass over them.
fn stream(words: &[u64], readout: &[i16]) -> u64 {
    let mut acc = [0u64; 4];
    for chunk in words.chunks_exact(4) {
        for (a, &w) in acc.iter_mut().zip(chunk) {
            *a = a.wrapping_add(w);
        }
    }
    let tail: i64 = readout.iter().map(|&w| i64::from(w)).sum();
    acc.iter().fold(tail as u64, |x, &a| x ^ a)
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let ms = std::env::var("QNLLM_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 1_000 });
    let budget = Duration::from_millis(ms);
    let params = Params::default();
    let model = Model::from_seed(1, params).expect("the default parameters are valid");
    let inputs: Vec<Vec<f32>> = NormalInputs::new(7, params.inputs as usize)
        .take(64)
        .collect();

    let words: Vec<u64> = model
        .input_weights()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(std::array::from_fn(|i| c[i] as u8)))
        .collect();
    let weight_bytes = model.input_weights().len() + model.readout().len() * 2;
    let floor = sample(budget, || {
        black_box(stream(black_box(&words), black_box(model.readout())));
    });
    let floor_p50 = quantile(&floor, 0.5);
    println!(
        "model: {} inputs, {} hidden, {} steps, {} labels; weights {} KiB",
        params.inputs,
        params.hidden,
        params.steps,
        params.labels,
        weight_bytes / 1024
    );
    println!(
        "memory floor (stream weights once): p50 {:>8.2} µs  ({:.1} GB/s)",
        us(floor_p50),
        weight_bytes as f64 / floor_p50.as_secs_f64() / 1e9
    );

    for kernel in available_kernels() {
        let engine = SpikingEngine::new(model.clone()).with_kernel(kernel);
        let mut i = 0;
        let times = sample(budget, || {
            black_box(
                engine
                    .reason(black_box(&inputs[i % inputs.len()]))
                    .expect("valid input"),
            );
            i += 1;
        });
        let p50 = quantile(&times, 0.5);
        println!(
            "reason, {:<11} kernel:       p50 {:>8.2} µs  p99 {:>8.2} µs  = {:.2} × memory floor",
            kernel.name(),
            us(p50),
            us(quantile(&times, 0.99)),
            p50.as_secs_f64() / floor_p50.as_secs_f64()
        );
    }

    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    for threads in [1, cores]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
    {
        let engine = SpikingEngine::new(model.clone())
            .with_threads(NonZeroUsize::new(threads).expect("at least 1"));
        let times = sample(budget, || {
            black_box(engine.reason_batch(black_box(&refs)).expect("valid input"));
        });
        let p50 = quantile(&times, 0.5);
        println!(
            "reason_batch of {}, {threads} thread(s):   {:>10.0} encodings/s",
            refs.len(),
            refs.len() as f64 / p50.as_secs_f64()
        );
    }
}
