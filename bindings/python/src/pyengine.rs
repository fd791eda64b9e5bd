//! A Python object with `reason(self, encoding) -> (label, scores)` as a Rust engine: the
//! [`Engine`] a worker process serves, and the [`Backend`] an in-process router routes to.

use std::time::{Duration, Instant};

use numpy::PyArray1;
use pyo3::prelude::*;
use qnllm_engine::{Digest, Engine, EngineError, Learned, ModelInfo, Params, Reasoning};
use qnllm_router::{Answer, Backend, BackendError, BackendFuture, EngineInfo};
use sha2::{Digest as _, Sha256};

use crate::error::ConfigError;
use crate::outputs::Outputs;

/// A Python engine and the model it declares.
#[derive(Debug)]
pub(crate) struct PyEngine {
    object: Py<PyAny>,
    class: String,
    info: std::sync::RwLock<ModelInfo>,
}

/// Reads the model an engine declares: `model = "seed:N"` (or a safetensors path) claims
/// that model's identity, so its answers compare with Rust engines of the same model; else
/// `input_size` (768) and `labels` (10) and a digest of the class's qualified name.
fn declared_model(object: &Bound<'_, PyAny>, class: &str) -> PyResult<ModelInfo> {
    if let Ok(spec) = object.getattr("model") {
        if let Ok(spec) = spec.extract::<String>() {
            let model = crate::engine::load_model(&spec)?;
            return Ok(ModelInfo {
                name: spec,
                params: *model.params(),
                version: model.version(),
                digest: model.digest(),
            });
        }
    }
    let get = |name: &str, default: u32| -> PyResult<u32> {
        match object.getattr(name) {
            Ok(v) => v.extract::<u32>().map_err(|_| {
                ConfigError::new_err(format!("{class}.{name} must be a positive integer"))
            }),
            Err(_) => Ok(default),
        }
    };
    let params = Params {
        inputs: get("input_size", 768)?,
        labels: get("labels", 10)?,
        ..Params::default()
    };
    if params.inputs == 0 || params.labels < 2 {
        return Err(ConfigError::new_err(format!(
            "{class}: input_size must be at least 1 and labels at least 2"
        )));
    }
    let mut h = Sha256::new();
    h.update(b"qnllm-python-engine-v1\0");
    h.update(class.as_bytes());
    h.update(params.inputs.to_le_bytes());
    h.update(params.labels.to_le_bytes());
    Ok(ModelInfo {
        name: format!("python:{class}"),
        params,
        version: 0,
        digest: Digest(h.finalize().into()),
    })
}

impl PyEngine {
    /// Wraps `object`, which must have a callable `reason`.
    pub(crate) fn new(object: &Bound<'_, PyAny>) -> PyResult<PyEngine> {
        let class = object
            .get_type()
            .qualname()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "engine".into());
        let callable = object
            .getattr("reason")
            .map(|r| r.is_callable())
            .unwrap_or(false);
        if !callable {
            return Err(ConfigError::new_err(format!(
                "{class} has no reason(self, encoding) method: a Python engine needs one"
            )));
        }
        let info = declared_model(object, &class)?;
        Ok(PyEngine {
            object: object.clone().unbind(),
            class,
            info: std::sync::RwLock::new(info),
        })
    }

    /// The engine's own name (`name` attribute) if it has one.
    pub(crate) fn preferred_name(&self) -> Option<String> {
        Python::attach(|py| {
            self.object
                .bind(py)
                .getattr("name")
                .ok()
                .and_then(|n| n.extract::<String>().ok())
        })
    }

    fn model(&self) -> ModelInfo {
        self.info
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Calls the Python `reason`; the error text says what the engine did wrong.
    pub(crate) fn call(&self, encoding: &[f32]) -> Result<Reasoning, String> {
        let info = self.model();
        Python::attach(|py| {
            let x = PyArray1::from_slice(py, encoding);
            let out = self
                .object
                .bind(py)
                .call_method1("reason", (x,))
                .map_err(|e| format!("the Python engine {} raised {e}", self.class))?;
            Outputs::extract(&out)
                .and_then(|o| o.into_reasoning(info.params.labels, info.version, info.digest))
                .map_err(|why| format!("the Python engine {} answered badly: {why}", self.class))
        })
    }

    fn check(&self, encoding: &[f32]) -> Result<(), EngineError> {
        let expected = self.model().params.inputs as usize;
        if encoding.len() != expected {
            return Err(EngineError::WrongLength {
                expected,
                found: encoding.len(),
            });
        }
        if let Some(index) = encoding.iter().position(|v| !v.is_finite()) {
            return Err(EngineError::NotFinite {
                index,
                value: encoding[index],
            });
        }
        Ok(())
    }
}

impl Engine for PyEngine {
    fn info(&self) -> ModelInfo {
        self.model()
    }

    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        self.check(encoding)?;
        // The worker turns an engine error into that request's error reply; the engine
        // error type has no variant for "the engine failed", so the text carries it.
        self.call(encoding).map_err(EngineError::InvalidParams)
    }

    fn learn(&mut self, encoding: &[f32], _label: u32) -> Result<Learned, EngineError> {
        self.check(encoding)?;
        Err(EngineError::InvalidParams(format!(
            "the Python engine {} does not learn",
            self.class
        )))
    }
}

/// A Python engine in this process, as the router sees it: a local backend whose
/// exceptions are that request's failure (retried on another engine), not bad input.
#[derive(Debug)]
pub(crate) struct PyBackend {
    name: String,
    engine: PyEngine,
}

impl PyBackend {
    pub(crate) fn new(name: String, engine: PyEngine) -> PyBackend {
        PyBackend { name, engine }
    }

    fn reason_now(&self, encoding: &[f32]) -> Result<Answer, BackendError> {
        self.engine
            .check(encoding)
            .map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let started = Instant::now();
        let reasoning = self
            .engine
            .call(encoding)
            .map_err(|reason| BackendError::Failed {
                engine: self.name.clone(),
                reason,
            })?;
        Ok(Answer::new(reasoning, self.name.clone(), started.elapsed()))
    }
}

impl Backend for PyBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn model_digest(&self) -> Digest {
        self.engine.model().digest
    }

    fn describe(&self) -> EngineInfo {
        let info = self.engine.model();
        EngineInfo {
            name: self.name.clone(),
            kind: "local",
            input_size: info.params.inputs,
            labels: info.params.labels,
            model_version: info.version,
            model_digest: info.digest,
        }
    }

    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        // The caller released the GIL; taking it here, on the caller's thread, is the
        // cheapest way into Python.
        Box::pin(std::future::ready(self.reason_now(encoding)))
    }

    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        let answers = values
            .chunks(dim.max(1))
            .map(|x| self.reason_now(x))
            .collect();
        Box::pin(std::future::ready(answers))
    }
}
