//! How results are shown: an aligned table for people, JSON lines for scripts.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use qnllm_engine::{Kernel, ModelInfo};
use qnllm_router::Answer;
use serde_json::json;

/// Prints one row (or JSON line) per answer; `title` heads the table.
pub(crate) fn results(
    title: &str,
    answers: &[Answer],
    per_item: Duration,
    as_json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        for (index, a) in answers.iter().enumerate() {
            let r = &a.reasoning;
            let line = json!({
                "index": index,
                "label": r.label,
                "confidence": r.confidence,
                "scores": r.scores,
                "total_spikes": r.total_spikes,
                "label_spikes": r.label_spikes,
                "engine": a.engine,
                "compute_us": a.compute.as_secs_f64() * 1e6,
                "model_version": r.model_version,
                "model_digest": r.model_digest,
                "result_digest": r.result_digest,
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "{:>5}  {:>5}  {:>10}  {:>6}  {:<29}  {:<16}  engine",
        "#", "label", "confidence", "spikes", "label spikes", "result digest"
    )?;
    for (index, a) in answers.iter().enumerate() {
        let r = &a.reasoning;
        let label_spikes: Vec<String> = r.label_spikes.iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{index:>5}  {:>5}  {:>10.4}  {:>6}  {:<29}  {:<16}  {}",
            r.label,
            r.confidence,
            r.total_spikes,
            label_spikes.join(" "),
            r.result_digest.short(),
            a.engine
        )?;
    }
    writeln!(
        out,
        "{} encodings, {:.1} µs each",
        answers.len(),
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
