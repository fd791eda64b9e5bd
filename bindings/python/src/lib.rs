//! `qnllm._native`: the PyO3 layer that converts Python values and delegates to the Rust facade.

use pyo3::prelude::*;

mod client;
mod convert;
mod engine;
mod error;
mod outputs;
mod pyengine;
mod reference;
mod result;
mod runtime;
mod strategy;
mod worker;

/// The native half of the `qnllm` package; users import `qnllm`, which re-exports it.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    m.add_class::<engine::NativeEngine>()?;
    m.add_class::<result::Reasoning>()?;
    m.add_class::<client::Client>()?;
    m.add_class::<reference::SpikingEngine>()?;
    m.add_class::<reference::Learned>()?;
    m.add_function(wrap_pyfunction!(worker::serve_worker, m)?)?;
    m.add_function(wrap_pyfunction!(reference::normal_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(outputs::result_digest, m)?)?;
    m.add_function(wrap_pyfunction!(strategy::strategy_names, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
