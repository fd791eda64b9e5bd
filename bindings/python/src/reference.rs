//! The reference spiking engine and its input generator, for Python engines that wrap it and
//! for tests that compare against it.

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
    engine: qnllm_engine::SpikingEngine,
}

#[pymethods]
impl SpikingEngine {
    #[new]
    #[pyo3(signature = (model = "seed:1".to_string()))]
    fn new(model: String) -> PyResult<SpikingEngine> {
        Ok(SpikingEngine {
            engine: qnllm_engine::SpikingEngine::new(load_model(&model)?),
        })
    }

    /// Reasons over one encoding; the result's `engine` is `reference`.
    fn reason(&self, py: Python<'_>, encoding: &Bound<'_, PyAny>) -> PyResult<Reasoning> {
        let x = convert::encoding(encoding)?;
        let dim = self.engine.info().params.inputs as usize;
        convert::validate(&x, dim, None)?;
        let started = std::time::Instant::now();
        let reasoning = py
            .detach(|| self.engine.reason(&x))
            .map_err(|e| invalid_input(e.to_string(), Place::default()))?;
        Ok(Reasoning::from_answer(Answer::new(
            reasoning,
            "reference",
            started.elapsed(),
        )))
    }

    /// Model name, sizes, version and digest.
    fn info(&self) -> (String, u32, u32, u64, String) {
        let info = self.engine.info();
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
