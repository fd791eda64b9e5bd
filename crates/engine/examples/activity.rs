//! Prints how the default model behaves on the reference inputs: label spread, hidden
//! spike rate, label spikes and confidence. `cargo run --release -p qnllm-engine --example activity`

#![allow(clippy::unwrap_used)] // a test fails by panicking
use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut p = Params::default();
    if args.len() > 2 {
        p.hidden_threshold = args[1].parse().unwrap();
        p.output_threshold = args[2].parse().unwrap();
    }
    let engine = SpikingEngine::from_seed(1, p).unwrap();
    let n = 2_000;
    let mut labels = vec![0; p.labels as usize];
    let mut spikes = 0u64;
    let mut label_spikes = vec![0u64; p.labels as usize];
    let mut conf = Vec::new();
    for x in NormalInputs::new(11, p.inputs as usize).take(n) {
        let r = engine.reason(&x).unwrap();
        labels[r.label as usize] += 1;
        spikes += u64::from(r.total_spikes);
        for (a, b) in label_spikes.iter_mut().zip(&r.label_spikes) {
            *a += u64::from(*b);
        }
        conf.push(r.confidence);
    }
    conf.sort_by(f32::total_cmp);
    println!("labels {labels:?}");
    println!(
        "hidden spike rate {:.3}",
        spikes as f64 / (n as f64 * f64::from(p.hidden * p.steps))
    );
    println!(
        "label spikes per label per input {:?}",
        label_spikes
            .iter()
            .map(|&s| s as f64 / n as f64)
            .collect::<Vec<_>>()
    );
    println!(
        "confidence p5 {:.3} p50 {:.3} p95 {:.3}",
        conf[n / 20],
        conf[n / 2],
        conf[n * 19 / 20]
    );
}
