//! The reference spiking engine and its input generator, for Python engines that wrap it and
//! for tests that compare against it.

use std::sync::RwLock;

use numpy::{PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use qnllm_engine::{Engine, NormalInputs};
use qnllm_router::Answer;

use crate::convert;
use crate::engine::load_model;
use crate::error::{invalid_input, Place};
use crate::result::Reasoning;

/// The reference engine alone, in this process, without a router: `reason(x)` gives what
/// every qnllm engine of this model gives.
#[pyclass(module = "qnllm", frozen, name = "SpikingEngine")]
#[derive(Debug)]
pub(crate) struct SpikingEngine {
    engine: RwLock<qnllm_engine::SpikingEngine>,
}

impl SpikingEngine {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, qnllm_engine::SpikingEngine> {
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one learning update did: the label predicted before it, whether the weights
/// changed, and the model's new version and digest (hex). A Python engine's `learn` can
/// return it as it is.
#[pyclass(module = "qnllm", frozen, get_all, name = "Learned")]
#[derive(Debug, Clone)]
pub(crate) struct Learned {
    /// The label the model predicted before the update.
    predicted: u32,
    /// Whether the margin update moved the readout (docs/engine.md §7, step 2).
    changed: bool,
    /// The model version after the update.
    model_version: u64,
    /// The model digest after the update, 64 hex digits.
    model_digest: String,
}

#[pymethods]
impl Learned {
    fn __repr__(&self) -> String {
        format!(
            "Learned(predicted={}, changed={}, model_version={}, model_digest='{}')",
            self.predicted,
            if self.changed { "True" } else { "False" },
            self.model_version,
            self.model_digest
        )
    }
}

#[pymethods]
impl SpikingEngine {
    #[new]
    #[pyo3(signature = (model = "seed:1".to_string()))]
    fn new(model: String) -> PyResult<SpikingEngine> {
        Ok(SpikingEngine {
            engine: RwLock::new(qnllm_engine::SpikingEngine::new(load_model(&model)?)),
        })
    }

    /// Reasons over one encoding; the result's `engine` is `reference`.
    fn reason(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>) -> PyResult<Reasoning> {
        let x = convert::encoding(encoding)?;
        let dim = self.read().info().params.inputs as usize;
        convert::validate(&x, dim, None)?;
        let started = std::time::Instant::now();
        let reasoning = py
            .detach(|| self.read().reason(&x))
            .map_err(|e| invalid_input(e.to_string(), Place::default()))?;
        Ok(Reasoning::from_answer(Answer::new(
            reasoning,
            "reference",
            started.elapsed(),
        )))
    }

    /// Applies the learning update for `(encoding, label)` (`docs/engine.md`): every update
    /// bumps the model version. Raises InvalidInput for a bad encoding or label.
    fn learn(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>, label: u32) -> PyResult<Learned> {
        let x = convert::encoding(encoding)?;
        let dim = self.read().info().params.inputs as usize;
        convert::validate(&x, dim, None)?;
        let learned = py
            .detach(|| {
                self.engine
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .learn(&x, label)
            })
            .map_err(|e| invalid_input(e.to_string(), Place::default()))?;
        Ok(Learned {
            predicted: learned.predicted,
            changed: learned.changed,
            model_version: learned.version,
            model_digest: learned.digest.to_hex(),
        })
    }

    /// The model version (0 until the first update).
    #[getter]
    fn model_version(&self) -> u64 {
        self.read().info().version
    }

    /// The model digest, 64 hex digits.
    #[getter]
    fn model_digest(&self) -> String {
        self.read().info().digest.to_hex()
    }

    /// Model name, sizes, version and digest.
    fn info(&self) -> (String, u32, u32, u64, String) {
        let info = self.read().info();
        (
            info.name,
            info.params.inputs,
            info.params.labels,
            info.version,
            info.digest.to_hex(),
        )
    }
}

/// `n` reference encodings of `dim` values (normal, mean 0, σ 0.1) drawn from `seed`:
/// the ones `qnllm reason --random N --seed S` uses.
#[pyfunction]
#[pyo3(signature = (seed, n, dim = 768))]
pub(crate) fn normal_inputs<'py>(
    py: Python<'py>,
    seed: u64,
    n: usize,
    dim: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let rows: Vec<Vec<f32>> = NormalInputs::new(seed, dim).take(n).collect();
    let flat: Vec<f32> = rows.concat();
    numpy::PyArray1::from_vec(py, flat).reshape([n, dim])
}
