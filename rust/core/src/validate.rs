//! Argument checks shared by the public entry points. All run before any computation.

use crate::error::{CoreError, Result};
use crate::matrix::{all_finite, Float, MatView};

/// Rejects an empty matrix (no rows or no columns) or one with NaN / Inf.
pub(crate) fn nonempty_finite<T: Float>(arg: &'static str, mat: MatView<'_, T>) -> Result<()> {
    if mat.rows() == 0 || mat.cols() == 0 {
        return Err(CoreError::Empty { arg });
    }
    finite(arg, mat.data())
}

/// Rejects NaN / Inf.
pub(crate) fn finite<T: Float>(arg: &'static str, values: &[T]) -> Result<()> {
    if all_finite(values) {
        Ok(())
    } else {
        Err(CoreError::NonFinite { arg })
    }
}

/// Checks `mat` is `rows x cols`; `expected` spells the shape symbolically, e.g. "(M, C)".
pub(crate) fn shape<T: Float>(
    arg: &'static str,
    mat: MatView<'_, T>,
    expected: &str,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if (mat.rows(), mat.cols()) == (rows, cols) {
        Ok(())
    } else {
        Err(CoreError::Shape {
            arg,
            expected: format!("{expected} = ({rows}, {cols})"),
            got: format!("({}, {})", mat.rows(), mat.cols()),
        })
    }
}

/// Checks a vector has `len` elements.
pub(crate) fn length(arg: &'static str, len: usize, expected: &str, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(CoreError::Shape {
            arg,
            expected: format!("{expected} = ({want},)"),
            got: format!("({len},)"),
        })
    }
}

/// Checks every entry lies in [low, high].
pub(crate) fn indices_in(arg: &'static str, values: &[i64], low: i64, high: i64) -> Result<()> {
    match values.iter().position(|&v| v < low || v > high) {
        None => Ok(()),
        Some(position) => Err(CoreError::PartnerOutOfRange {
            arg,
            position,
            value: values[position],
            low,
            high,
        }),
    }
}

/// Checks `reg` (or `lam`) is finite and > 0.
pub(crate) fn positive(arg: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(CoreError::InvalidOption {
            arg,
            expected: "a finite value > 0".to_owned(),
            got: format!("{value}"),
        })
    }
}

/// Checks `epsilon` is finite.
pub(crate) fn finite_option(arg: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(CoreError::InvalidOption {
            arg,
            expected: "a finite value".to_owned(),
            got: format!("{value}"),
        })
    }
}

/// Checks `discard` lies in [0, 1).
pub(crate) fn discard(value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(CoreError::InvalidOption {
            arg: "discard",
            expected: "a value in [0, 1)".to_owned(),
            got: format!("{value}"),
        })
    }
}
