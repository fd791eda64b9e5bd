//! Tensors of the Open Inference Protocol: checking the `ENCODING` input (shape, datatype,
//! finite values, naming the index at fault) and laying out the outputs of a batch.

use qnllm::Answer;

use crate::error::FrontError;

/// The name of the model's one input.
pub const INPUT: &str = "ENCODING";

/// The outputs, in the order they are returned when a request names none.
pub const OUTPUTS: [&str; 10] = [
    "label",
    "confidence",
    "scores",
    "total_spikes",
    "label_spikes",
    "model_version",
    "model_digest",
    "result_digest",
    "engine",
    "cached",
];

/// Refuses an output name the model lacks.
pub(crate) fn check_outputs(names: &[String]) -> Result<(), FrontError> {
    match names.iter().find(|n| !OUTPUTS.contains(&n.as_str())) {
        Some(n) => Err(FrontError::BadRequest(format!(
            "unknown output `{n}`: the outputs are {}",
            OUTPUTS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The datatype and shape (with `labels` scores per row, `-1` for the batch) of an output.
pub(crate) fn output_metadata(name: &str, labels: i64) -> (&'static str, Vec<i64>) {
    match name {
        "label" => ("INT32", vec![-1]),
        "confidence" => ("FP32", vec![-1]),
        "scores" => ("INT32", vec![-1, labels]),
        "total_spikes" => ("UINT32", vec![-1]),
        "label_spikes" => ("UINT32", vec![-1, labels]),
        "model_version" => ("UINT64", vec![-1]),
        "cached" => ("BOOL", vec![-1]),
        _ => ("BYTES", vec![-1]),
    }
}

/// A checked batch of encodings: `rows` × `dim` finite values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Encodings {
    pub(crate) rows: usize,
    pub(crate) dim: usize,
    pub(crate) values: Vec<f32>,
}

impl Encodings {
    /// Checks the name, datatype and shape of the input against a model taking `dim` values.
    pub(crate) fn check_header(
        name: &str,
        datatype: &str,
        shape: &[i64],
        dim: usize,
    ) -> Result<usize, FrontError> {
        if name != INPUT {
            return Err(FrontError::BadRequest(format!(
                "unknown input `{name}`: this model has one input, `{INPUT}` (FP32, shape [-1, {dim}])"
            )));
        }
        if datatype != "FP32" {
            return Err(FrontError::BadRequest(format!(
                "input {INPUT} has datatype {datatype}; this model takes FP32"
            )));
        }
        match shape {
            [rows, cols] if *rows >= 1 && usize::try_from(*cols).ok() == Some(dim) => {
                usize::try_from(*rows).map_err(|_| FrontError::BadRequest("bad shape".into()))
            }
            _ => Err(FrontError::BadRequest(format!(
                "input {INPUT} has shape {shape:?}; this model takes [N, {dim}] with N ≥ 1"
            ))),
        }
    }

    /// From values already decoded; checks their count and that each is finite.
    pub(crate) fn new(rows: usize, dim: usize, values: Vec<f32>) -> Result<Encodings, FrontError> {
        let want = rows.saturating_mul(dim);
        if values.len() != want {
            return Err(FrontError::BadRequest(format!(
                "input {INPUT} of shape [{rows}, {dim}] needs {want} values, got {}",
                values.len()
            )));
        }
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            let (row, col) = (at / dim.max(1), at % dim.max(1));
            return Err(FrontError::BadRequest(format!(
                "input {INPUT}: value at index [{row}, {col}] is {}; encodings must be finite",
                values[at]
            )));
        }
        Ok(Encodings { rows, dim, values })
    }

    /// From little-endian FP32 bytes (binary tensor data, gRPC raw contents).
    pub(crate) fn from_le_bytes(
        rows: usize,
        dim: usize,
        bytes: &[u8],
    ) -> Result<Encodings, FrontError> {
        let want = rows.saturating_mul(dim).saturating_mul(4);
        if bytes.len() != want {
            return Err(FrontError::BadRequest(format!(
                "input {INPUT} of shape [{rows}, {dim}] needs {want} bytes of FP32, got {}",
                bytes.len()
            )));
        }
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Encodings::new(rows, dim, values)
    }

    /// From JSON data: a flat or nested array of numbers, row-major.
    pub(crate) fn from_json(
        rows: usize,
        dim: usize,
        data: &serde_json::Value,
    ) -> Result<Encodings, FrontError> {
        let mut values = Vec::with_capacity(rows.saturating_mul(dim).min(1 << 24));
        flatten(data, &mut values)?;
        Encodings::new(rows, dim, values)
    }
}

fn flatten(data: &serde_json::Value, out: &mut Vec<f32>) -> Result<(), FrontError> {
    match data {
        serde_json::Value::Array(items) => items.iter().try_for_each(|v| flatten(v, out)),
        serde_json::Value::Number(n) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            out.push(v);
            Ok(())
        }
        other => Err(FrontError::BadRequest(format!(
            "input {INPUT}: value at flat index {} is {other}, not a number",
            out.len()
        ))),
    }
}

/// The values of one output tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Data {
    I32(Vec<i32>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Bytes(Vec<String>),
}

impl Data {
    /// Little-endian bytes as in binary tensor data; BYTES elements are each prefixed by
    /// their 4-byte little-endian length.
    pub(crate) fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
            Data::Bytes(v) => {
                let mut out = Vec::new();
                for s in v {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                out
            }
        }
    }

    /// The values as a flat JSON array.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Data::I32(v) => serde_json::json!(v),
            Data::U32(v) => serde_json::json!(v),
            Data::U64(v) => serde_json::json!(v),
            Data::F32(v) => serde_json::json!(v),
            Data::Bool(v) => serde_json::json!(v),
            Data::Bytes(v) => serde_json::json!(v),
        }
    }
}

/// One output tensor of a response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    pub(crate) name: &'static str,
    pub(crate) datatype: &'static str,
    pub(crate) shape: Vec<i64>,
    pub(crate) data: Data,
}

/// The output `name` over a batch of answers, or `None` for a name the model lacks.
pub(crate) fn output(name: &str, answers: &[Answer]) -> Option<Output> {
    let name = OUTPUTS.iter().copied().find(|n| *n == name)?;
    let rows = answers.len() as i64;
    let labels = answers.first().map_or(0, |a| a.reasoning.scores.len()) as i64;
    let map = |f: &dyn Fn(&Answer) -> String| answers.iter().map(f).collect::<Vec<_>>();
    let data = match name {
        "label" => Data::I32(
            answers
                .iter()
                .map(|a| i32::try_from(a.reasoning.label).unwrap_or(i32::MAX))
                .collect(),
        ),
        "confidence" => Data::F32(answers.iter().map(|a| a.reasoning.confidence).collect()),
        "scores" => Data::I32(
            answers
                .iter()
                .flat_map(|a| a.reasoning.scores.iter().copied())
                .collect(),
        ),
        "total_spikes" => Data::U32(answers.iter().map(|a| a.reasoning.total_spikes).collect()),
        "label_spikes" => Data::U32(
            answers
                .iter()
                .flat_map(|a| a.reasoning.label_spikes.iter().copied())
                .collect(),
        ),
        "model_version" => Data::U64(answers.iter().map(|a| a.reasoning.model_version).collect()),
        "model_digest" => Data::Bytes(map(&|a| a.reasoning.model_digest.to_hex())),
        "result_digest" => Data::Bytes(map(&|a| a.reasoning.result_digest.to_hex())),
        "engine" => Data::Bytes(map(&|a| a.engine.clone())),
        _ => Data::Bool(answers.iter().map(|a| a.cached).collect()),
    };
    let (datatype, mut shape) = output_metadata(name, labels);
    shape[0] = rows;
    Some(Output {
        name,
        datatype,
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_is_refused_naming_its_row_and_column() {
        let mut v = vec![0.0_f32; 8];
        v[6] = f32::NAN;
        let err = Encodings::new(2, 4, v).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("input ENCODING: value at index [1, 2] is NaN; encodings must be finite")
        );
    }

    #[test]
    fn nested_and_flat_json_give_the_same_values() {
        let flat = serde_json::json!([1.0, 2.0, 3.0, 4.0]);
        let nested = serde_json::json!([[1.0, 2.0], [3.0, 4.0]]);
        let a = Encodings::from_json(2, 2, &flat).ok();
        let b = Encodings::from_json(2, 2, &nested).ok();
        assert!(a.is_some());
        assert_eq!(a, b);
    }

    #[test]
    fn header_checks_name_dtype_and_shape() {
        assert_eq!(
            Encodings::check_header("ENCODING", "FP32", &[3, 768], 768).ok(),
            Some(3)
        );
        for (name, dtype, shape) in [
            ("X", "FP32", vec![1, 768]),
            ("ENCODING", "FP64", vec![1, 768]),
            ("ENCODING", "FP32", vec![768]),
            ("ENCODING", "FP32", vec![1, 767]),
            ("ENCODING", "FP32", vec![0, 768]),
        ] {
            let e = Encodings::check_header(name, dtype, &shape, 768);
            assert!(
                matches!(e, Err(FrontError::BadRequest(_))),
                "{name} {dtype} {shape:?}"
            );
        }
    }

    #[test]
    fn bytes_elements_carry_a_length_prefix() {
        let d = Data::Bytes(vec!["ab".into(), "".into()]);
        assert_eq!(d.to_le_bytes(), vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    }
}
