//! The one conversion from `CoreError` to Python exceptions, and the ridge-escalation warnings.

use std::ffi::CString;

use isa_core::{format_lam, CoreError};
use pyo3::exceptions::{PyFloatingPointError, PyRuntimeWarning, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

/// Validation errors -> `ValueError`, wrong dtypes -> `TypeError`, overflow ->
/// `FloatingPointError`, an indefinite ridge system ->
/// `isa_distill.errors.NotPositiveDefiniteError` (imported when raised, so this module does not
/// import torch at load time).
pub(crate) fn to_py_err(py: Python<'_>, err: CoreError) -> PyErr {
    let message = err.to_string();
    match err {
        CoreError::DType { .. } => PyTypeError::new_err(message),
        CoreError::Overflow { .. } => PyFloatingPointError::new_err(message),
        CoreError::NotPositiveDefinite { .. } => not_positive_definite(py, message),
        _ => PyValueError::new_err(message),
    }
}

fn not_positive_definite(py: Python<'_>, message: String) -> PyErr {
    let class = py
        .import("isa_distill.errors")
        .and_then(|module| module.getattr("NotPositiveDefiniteError"))
        .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        // The package is broken if its errors module cannot be imported; say so.
        Err(import_error) => import_error,
    }
}

/// One `RuntimeWarning` per escalated ridge; an error if warnings are turned into errors.
pub(crate) fn warn_escalations(py: Python<'_>, escalations: &[f64]) -> PyResult<()> {
    let category = py.get_type::<PyRuntimeWarning>();
    for &lam in escalations {
        let message = format!(
            "Cholesky factorization failed; retrying with lam={}",
            format_lam(lam)
        );
        let message = CString::new(message).map_err(|e| PyValueError::new_err(e.to_string()))?;
        PyErr::warn(py, &category, &message, 1)?;
    }
    Ok(())
}

/// Turns the result of a detached computation into a Python result: warns for each escalated
/// ridge first (also when the factorization finally failed), then maps any error.
pub(crate) fn finish<T>(
    py: Python<'_>,
    result: Result<T, CoreError>,
    escalations: impl Fn(&T) -> &[f64],
) -> PyResult<T> {
    match result {
        Ok(value) => {
            warn_escalations(py, escalations(&value))?;
            Ok(value)
        }
        Err(err) => {
            if let CoreError::NotPositiveDefinite { escalations, .. } = &err {
                warn_escalations(py, escalations)?;
            }
            Err(to_py_err(py, err))
        }
    }
}
