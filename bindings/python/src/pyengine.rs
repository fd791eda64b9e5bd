//! A Python object with `reason(self, encoding) -> (label, scores)` (and, to learn,
//! `learn(self, encoding, label)`) as a Rust engine: the [`Engine`] a worker process serves,
//! and the [`Backend`] an in-process router routes to.

use std::time::{Duration, Instant};

use numpy::PyArray1;
use pyo3::prelude::*;
use qnllm_engine::{Digest, Engine, EngineError, Learned, ModelInfo, Params, Reasoning};
use qnllm_router::{Answer, Backend, BackendError, BackendFuture, EngineInfo, ModelState};
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

/// Reads the model state a Python `learn` reports: an object (or the engine itself) with
/// `model_version` and `model_digest` (and optionally `predicted`), or a tuple
/// `(version, digest)`. The digest is 64 hex digits or 32 bytes.
fn learned_state(out: &Bound<'_, PyAny>) -> Result<(u64, Digest, Option<u32>), String> {
    let (version, digest, predicted) = match out.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() {
        Ok((version, digest)) => (version, digest, None),
        Err(_) => {
            let get = |name: &str| {
                out.getattr(name)
                    .map_err(|_| format!("no `{name}` (return (version, digest) or an object with model_version and model_digest)"))
            };
            let predicted = out
                .getattr("predicted")
                .ok()
                .and_then(|p| p.extract::<u32>().ok());
            (get("model_version")?, get("model_digest")?, predicted)
        }
    };
    let version = version
        .extract::<u64>()
        .map_err(|_| "the model version must be a non-negative integer".to_string())?;
    let digest = if let Ok(text) = digest.extract::<String>() {
        Digest::from_hex(&text)
    } else if let Ok(bytes) = digest.extract::<Vec<u8>>() {
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Digest)
    } else {
        None
    }
    .ok_or_else(|| "the model digest must be 64 hex digits or 32 bytes".to_string())?;
    Ok((version, digest, predicted))
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

    /// Checks the label and encoding, then calls the Python `learn`.
    fn learn_checked(&self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        let labels = self.model().params.labels;
        if label >= labels {
            return Err(EngineError::UnknownLabel { label, labels });
        }
        self.check(encoding)?;
        self.call_learn(encoding, label)
            .map_err(EngineError::Failed)
    }

    /// Calls the Python `learn` and records the model state it reports.
    fn call_learn(&self, encoding: &[f32], label: u32) -> Result<Learned, String> {
        let before = self.model();
        let state = Python::attach(|py| {
            let object = self.object.bind(py);
            let callable = object
                .getattr("learn")
                .map(|r| r.is_callable())
                .unwrap_or(false);
            if !callable {
                return Err(format!(
                    "the Python engine {} does not learn: give it a learn(self, encoding, label) \
                     method that reports the model's new version and digest",
                    self.class
                ));
            }
            let x = PyArray1::from_slice(py, encoding);
            let out = object
                .call_method1("learn", (x, label))
                .map_err(|e| format!("the Python engine {} raised {e}", self.class))?;
            // `None`: the engine's own `model_version` and `model_digest` say where it is.
            let source = if out.is_none() { object.clone() } else { out };
            learned_state(&source).map_err(|why| {
                format!(
                    "the Python engine {} reported its model badly after learning: {why}",
                    self.class
                )
            })
        })?;
        let (version, digest, predicted) = state;
        if version <= before.version {
            return Err(format!(
                "the Python engine {} reported model version {version} after learning from \
                 version {}: every update must bump the version",
                self.class, before.version
            ));
        }
        {
            let mut info = self
                .info
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            info.version = version;
            info.digest = digest;
        }
        Ok(Learned {
            predicted: predicted.unwrap_or(label),
            changed: digest != before.digest,
            version,
            digest,
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
        // An exception is the engine's failure, not bad input: the worker answers it with
        // `EngineFailed`, and the router may try another engine.
        self.call(encoding).map_err(EngineError::Failed)
    }

    fn learn(&mut self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        self.learn_checked(encoding, label)
    }
}

/// A Python engine in this process, as the router sees it: a local backend whose
/// exceptions are that request's failure (retried on another engine), not bad input.
#[derive(Debug)]
pub(crate) struct PyBackend {
    name: String,
    engine: PyEngine,
    /// Held from the version check to the update: two updates for one version cannot
    /// both apply.
    learning: std::sync::Mutex<()>,
}

impl PyBackend {
    pub(crate) fn new(name: String, engine: PyEngine) -> PyBackend {
        PyBackend {
            name,
            engine,
            learning: std::sync::Mutex::new(()),
        }
    }

    fn learn_now(
        &self,
        encoding: &[f32],
        label: u32,
        base_version: u64,
    ) -> Result<ModelState, BackendError> {
        let _one = self
            .learning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let actual = self.engine.model().version;
        if actual != base_version {
            return Err(BackendError::VersionConflict {
                engine: self.name.clone(),
                expected: base_version,
                actual,
            });
        }
        match self.engine.learn_checked(encoding, label) {
            Ok(learned) => Ok(ModelState {
                version: learned.version,
                digest: learned.digest,
            }),
            Err(EngineError::Failed(reason)) => Err(BackendError::Failed {
                engine: self.name.clone(),
                reason,
            }),
            Err(other) => Err(BackendError::InvalidInput(other.to_string())),
        }
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

    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        _budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        Box::pin(std::future::ready(self.learn_now(
            encoding,
            label,
            base_version,
        )))
    }
}
