//! How results are shown: an aligned table for people, JSON lines for scripts.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use qnllm_engine::{Kernel, ModelInfo, Reasoning};
use serde_json::json;

pub(crate) fn results(
    info: &ModelInfo,
    results: &[Reasoning],
    per_item: Duration,
    as_json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        for (index, r) in results.iter().enumerate() {
            let line = json!({
                "index": index,
                "label": r.label,
                "confidence": r.confidence,
                "scores": r.scores,
                "total_spikes": r.total_spikes,
                "label_spikes": r.label_spikes,
                "engine": "local",
                "model": info.name,
                "model_version": r.model_version,
                "model_digest": r.model_digest,
                "result_digest": r.result_digest,
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "model {} v{} digest {}",
        info.name,
        info.version,
        info.digest.short()
    )?;
    writeln!(
        out,
        "{:>5}  {:>5}  {:>10}  {:>6}  {:<29}  result digest",
        "#", "label", "confidence", "spikes", "label spikes"
    )?;
    for (index, r) in results.iter().enumerate() {
        let label_spikes: Vec<String> = r.label_spikes.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{index:>5}  {:>5}  {:>10.4}  {:>6}  {:<29}  {}",
            r.label,
            r.confidence,
            r.total_spikes,
            label_spikes.join(" "),
            r.result_digest.short()
        )?;
    }
    writeln!(
        out,
        "{} encodings, {:.1} µs each on the local engine",
        results.len(),
        per_item.as_secs_f64() * 1e6
    )?;
    Ok(())
}

pub(crate) fn info(info: &ModelInfo, kernel: Kernel, as_json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        writeln!(out, "{}", json!({ "model": info, "kernel": kernel.name() }))?;
        return Ok(());
    }
    let p = &info.params;
    writeln!(out, "model      {}", info.name)?;
    writeln!(out, "version    {}", info.version)?;
    writeln!(out, "digest     {}", info.digest)?;
    writeln!(
        out,
        "network    {} inputs → {} hidden LIF neurons × {} steps → {} labels",
        p.inputs, p.hidden, p.steps, p.labels
    )?;
    writeln!(
        out,
        "hidden     threshold {}, leak v >> {}",
        p.hidden_threshold, p.hidden_leak_shift
    )?;
    writeln!(
        out,
        "output     threshold {}, leak u >> {}",
        p.output_threshold, p.output_leak_shift
    )?;
    writeln!(
        out,
        "weights    {} input (i8), {} readout (i16)",
        p.input_weight_count(),
        p.readout_weight_count()
    )?;
    writeln!(out, "kernel     {}", kernel.name())?;
    Ok(())
}
