//! Strategy names: the original ones (`python_first`, `cpp_first`) and qnllm's, mapped to
//! the hub's strategy and mode settings.

use pyo3::prelude::*;

use crate::error::ConfigError;

/// Every name a caller may give, and the (strategy, mode) it selects; a `None` keeps the
/// one in force.
const NAMES: [(&str, Option<&str>, Option<&str>); 13] = [
    ("round_robin", Some("round-robin"), Some("single")),
    ("round-robin", Some("round-robin"), Some("single")),
    ("python_first", Some("local-first"), Some("single")),
    ("local_first", Some("local-first"), Some("single")),
    ("local-first", Some("local-first"), Some("single")),
    ("cpp_first", Some("remote-first"), Some("single")),
    ("remote_first", Some("remote-first"), Some("single")),
    ("remote-first", Some("remote-first"), Some("single")),
    ("performance", Some("performance"), Some("single")),
    ("redundant", None, Some("redundant")),
    ("hedged", None, Some("hedged")),
    ("single", None, Some("single")),
    ("fastest", Some("performance"), Some("single")),
];

/// Sets `config`'s strategy and mode from a caller's name (case-insensitive).
pub(crate) fn apply(config: &mut qnllm_hub::HubConfig, name: &str) -> PyResult<()> {
    let wanted = name.to_ascii_lowercase();
    let Some((_, strategy, mode)) = NAMES.iter().find(|(n, _, _)| *n == wanted) else {
        return Err(ConfigError::new_err(format!(
            "unknown strategy `{name}`: use one of {}",
            NAMES.map(|(n, _, _)| n).join(", ")
        )));
    };
    if let Some(strategy) = strategy {
        config.strategy = (*strategy).to_string();
    }
    if let Some(mode) = mode {
        config.mode = (*mode).to_string();
    }
    Ok(())
}

/// The strategy names `strategy=` accepts.
#[pyfunction]
pub(crate) fn strategy_names() -> Vec<&'static str> {
    NAMES.map(|(n, _, _)| n).to_vec()
}
