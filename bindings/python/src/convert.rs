//! Encodings in from Python: a C-contiguous float32 array is copied as one block; anything
//! else (float64, lists, strided views) goes through one vectorised `numpy` conversion.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyAny;

use crate::error::{invalid_input, Place};

static ASCONTIGUOUS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FLOAT32: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `x` as a C-contiguous float32 numpy array (the object itself when it already is one).
fn as_float32<'py>(x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = x.py();
    let f = ASCONTIGUOUS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("numpy")?.getattr("ascontiguousarray")?.unbind())
    })?;
    let dtype = FLOAT32.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("numpy")?.getattr("float32")?.unbind())
    })?;
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("dtype", dtype.bind(py))?;
    f.bind(py).call((x,), Some(&kwargs)).map_err(|e| {
        invalid_input(
            format!("the encoding is not an array of numbers: {e}"),
            Place::default(),
        )
    })
}

/// One encoding, copied out of Python so the GIL can be released while Rust works.
pub(crate) fn encoding(x: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    // `to_vec` copies under the GIL and keeps no borrow, so it needs no borrow tracking.
    if let Ok(array) = x.cast::<PyArray1<f32>>() {
        if let Ok(values) = array.to_vec() {
            return Ok(values);
        }
    }
    let converted = as_float32(x)?;
    let array = converted
        .extract::<PyReadonlyArray1<'_, f32>>()
        .map_err(|_| {
            let ndim = converted
                .getattr("ndim")
                .and_then(|n| n.extract::<usize>())
                .unwrap_or(0);
            invalid_input(
                format!("an encoding is a 1-D array of numbers, got {ndim} dimension(s)"),
                Place::default(),
            )
        })?;
    let slice = array
        .as_slice()
        .map_err(|e| invalid_input(e.to_string(), Place::default()))?;
    Ok(slice.to_vec())
}

/// A batch `[N, D]`, flattened row-major, and `D`.
pub(crate) fn batch(x: &Bound<'_, PyAny>) -> PyResult<(Vec<f32>, usize)> {
    let converted;
    let array = match x.extract::<PyReadonlyArray2<'_, f32>>() {
        Ok(array) if array.is_c_contiguous() => array,
        _ => {
            converted = as_float32(x)?;
            converted
                .extract::<PyReadonlyArray2<'_, f32>>()
                .map_err(|_| {
                    invalid_input(
                        "a batch is a 2-D array [N, D] of numbers (N encodings of D values)".into(),
                        Place::default(),
                    )
                })?
        }
    };
    let dim = array.shape()[1];
    let slice = array
        .as_slice()
        .map_err(|e| invalid_input(e.to_string(), Place::default()))?;
    Ok((slice.to_vec(), dim))
}

/// Checks one encoding's length and values; the error names the index.
pub(crate) fn validate(x: &[f32], dim: usize, item: Option<usize>) -> PyResult<()> {
    let prefix = item.map_or(String::new(), |i| format!("encoding {i} of the batch: "));
    if x.len() != dim {
        return Err(invalid_input(
            format!(
                "{prefix}encoding has {} values, the model takes {dim}",
                x.len()
            ),
            Place { item, index: None },
        ));
    }
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(invalid_input(
            format!(
                "{prefix}value at index {index} is {}: encodings must be finite",
                x[index]
            ),
            Place {
                item,
                index: Some(index),
            },
        ));
    }
    Ok(())
}

/// Checks every encoding of a flat batch.
pub(crate) fn validate_batch(values: &[f32], dim: usize, expected: usize) -> PyResult<()> {
    if dim != expected {
        return Err(invalid_input(
            format!("each encoding of the batch has {dim} values, the model takes {expected}"),
            Place::default(),
        ));
    }
    if values.is_empty() {
        return Err(invalid_input("the batch is empty".into(), Place::default()));
    }
    for (item, x) in values.chunks(dim).enumerate() {
        validate(x, dim, Some(item))?;
    }
    Ok(())
}
