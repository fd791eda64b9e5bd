//! Where encodings come from: the reference generator or JSON lines.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use qnllm_engine::NormalInputs;

/// `n` reference encodings of `dim` values from `seed`.
pub(crate) fn random(n: usize, seed: u64, dim: usize) -> Vec<Vec<f32>> {
    NormalInputs::new(seed, dim).take(n).collect()
}

/// One encoding per non-blank line: `[0.1, -0.2, …]` or `{"encoding": [ … ]}`.
pub(crate) fn json_lines(reader: impl BufRead) -> Result<Vec<Vec<f32>>> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprintln!("reading JSON lines from stdin (end with Ctrl-D); see `qnllm reason --help`");
    }
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let array = match &value {
            serde_json::Value::Array(values) => values,
            serde_json::Value::Object(map) => match map.get("encoding") {
                Some(serde_json::Value::Array(values)) => values,
                _ => bail!("line {}: an object needs an \"encoding\" array", i + 1),
            },
            _ => bail!(
                "line {}: expected an array of numbers or {{\"encoding\": [...]}}",
                i + 1
            ),
        };
        let encoding = array
            .iter()
            .enumerate()
            .map(|(j, v)| {
                v.as_f64()
                    .map(|x| x as f32)
                    .with_context(|| format!("line {}: value {j} is not a number", i + 1))
            })
            .collect::<Result<Vec<f32>>>()?;
        out.push(encoding);
    }
    Ok(out)
}
