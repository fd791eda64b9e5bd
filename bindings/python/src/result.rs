//! `Reasoning`: one answer as a typed Python object that also reads like the original dict.

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use qnllm_engine::Digest;
use qnllm_router::Answer;

/// Keys of the mapping view, in `to_dict()` order.
const KEYS: [&str; 15] = [
    "success",
    "label",
    "confidence",
    "latency_ms",
    "compute_ms",
    "spikes",
    "total_spikes",
    "label_spikes",
    "scores",
    "engine",
    "cached",
    "model_version",
    "model_digest",
    "result_digest",
    "error",
];

/// The answer of one `reason` call: attributes (`r.label`) and the original mapping
/// access (`r['confidence']`, `r.get('success')`) both work; `to_dict()` gives it all.
#[pyclass(module = "qnllm", frozen, name = "Reasoning")]
#[derive(Debug)]
pub(crate) struct Reasoning {
    /// The label with the highest score.
    #[pyo3(get)]
    label: u32,
    /// In [1/labels, 1), from the integer scores.
    #[pyo3(get)]
    confidence: f32,
    scores: Vec<i32>,
    /// Hidden-neuron spikes over all steps.
    #[pyo3(get)]
    total_spikes: u32,
    label_spikes: Vec<u32>,
    /// Version of the model that answered.
    #[pyo3(get)]
    model_version: u64,
    model_digest: Digest,
    result_digest: Digest,
    /// Name of the engine that answered.
    #[pyo3(get)]
    engine: String,
    /// Milliseconds from the router receiving the request to the answer.
    #[pyo3(get)]
    latency_ms: f64,
    /// Milliseconds the engine spent computing.
    #[pyo3(get)]
    compute_ms: f64,
    /// Whether the answer came from the result cache.
    #[pyo3(get)]
    cached: bool,
}

impl Reasoning {
    pub(crate) fn from_answer(a: Answer) -> Reasoning {
        let r = a.reasoning;
        Reasoning {
            label: r.label,
            confidence: r.confidence,
            scores: r.scores,
            total_spikes: r.total_spikes,
            label_spikes: r.label_spikes,
            model_version: r.model_version,
            model_digest: r.model_digest,
            result_digest: r.result_digest,
            engine: a.engine,
            latency_ms: a.latency.as_secs_f64() * 1e3,
            compute_ms: a.compute.as_secs_f64() * 1e3,
            cached: a.cached,
        }
    }

    fn value<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(Some(match key {
            "success" => true.into_pyobject(py)?.to_owned().into_any(),
            "label" => self.label.into_pyobject(py)?.into_any(),
            "confidence" => self.confidence.into_pyobject(py)?.into_any(),
            "latency_ms" => self.latency_ms.into_pyobject(py)?.into_any(),
            "compute_ms" => self.compute_ms.into_pyobject(py)?.into_any(),
            "spikes" | "total_spikes" => self.total_spikes.into_pyobject(py)?.into_any(),
            "label_spikes" => PyList::new(py, &self.label_spikes)?.into_any(),
            "scores" => PyList::new(py, &self.scores)?.into_any(),
            "engine" => self.engine.clone().into_pyobject(py)?.into_any(),
            "cached" => self.cached.into_pyobject(py)?.to_owned().into_any(),
            "model_version" => self.model_version.into_pyobject(py)?.into_any(),
            "model_digest" => self.model_digest.to_hex().into_pyobject(py)?.into_any(),
            "result_digest" => self.result_digest.to_hex().into_pyobject(py)?.into_any(),
            "error" => py.None().into_bound(py),
            _ => return Ok(None),
        }))
    }
}

#[pymethods]
impl Reasoning {
    /// Always True: a failed request raises a `qnllm.QnllmError` instead of returning.
    #[getter]
    fn success(&self) -> bool {
        true
    }

    /// Hidden-neuron spikes over all steps (the original key `spikes`).
    #[getter]
    fn spikes(&self) -> u32 {
        self.total_spikes
    }

    /// Integer readout score per label.
    #[getter]
    fn scores(&self) -> Vec<i32> {
        self.scores.clone()
    }

    /// Output-neuron spikes per label.
    #[getter]
    fn label_spikes(&self) -> Vec<u32> {
        self.label_spikes.clone()
    }

    /// Digest of the model that answered, 64 hex digits.
    #[getter]
    fn model_digest(&self) -> String {
        self.model_digest.to_hex()
    }

    /// SHA-256 over the integer outputs, 64 hex digits: equal results have equal digests
    /// on every engine, process and language.
    #[getter]
    fn result_digest(&self) -> String {
        self.result_digest.to_hex()
    }

    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        self.value(py, key)?
            .ok_or_else(|| PyKeyError::new_err(key.to_string()))
    }

    /// The value under `key`, or `default` when the result has no such key.
    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.value(py, key)? {
            Some(v) => v,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __contains__(&self, key: &str) -> bool {
        KEYS.contains(&key)
    }

    /// The keys of the mapping view.
    fn keys(&self) -> Vec<&'static str> {
        KEYS.to_vec()
    }

    fn __len__(&self) -> usize {
        KEYS.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        PyList::new(py, KEYS)?.try_iter().map(Bound::into_any)
    }

    /// The whole result as a plain dict.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for key in KEYS {
            if let Some(v) = self.value(py, key)? {
                d.set_item(key, v)?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Reasoning(label={}, confidence={:.4}, engine={:?}, latency_ms={:.3}, cached={}, result_digest={:?})",
            self.label,
            self.confidence,
            self.engine,
            self.latency_ms,
            if self.cached { "True" } else { "False" },
            self.result_digest.short()
        )
    }
}
