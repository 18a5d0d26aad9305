//! The one error type of the crate.
//!
//! Every function validates its arguments before doing any work and returns a [`CoreError`]
//! naming the offending argument and what was expected; nothing panics on user input.

use std::fmt;

/// Everything that can go wrong in `isa-core`.
#[derive(Clone, Debug, PartialEq)]
pub enum CoreError {
    /// An array whose shape disagrees with the others (`expected` says how, e.g. `"(M, C) = (4, 3)"`).
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An array with no rows (M = 0 or N = 0) or no columns.
    Empty { arg: &'static str },
    /// An option outside its range, or an unknown mode string.
    InvalidOption {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An array of the wrong element type; raised by bindings that accept dynamically typed
    /// arrays (the core itself is statically typed).
    DType {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// NaN or infinity in an input.
    NonFinite { arg: &'static str },
    /// A partner index, partner offset or kept index outside its valid range.
    PartnerOutOfRange {
        arg: &'static str,
        position: usize,
        value: i64,
        low: i64,
        high: i64,
    },
    /// A product of finite inputs exceeded the input type's range (`what` names it).
    Overflow { what: &'static str },
    /// The ridge system stayed indefinite after escalating lam by 10, 100 and 1000.
    /// `lam` is the last ridge tried; `escalations` every escalated ridge, in order.
    NotPositiveDefinite { lam: f64, escalations: Vec<f64> },
}

impl CoreError {
    /// True for errors caused by bad arguments (as opposed to a numerically failed solve).
    pub fn is_validation(&self) -> bool {
        !matches!(
            self,
            CoreError::NotPositiveDefinite { .. }
                | CoreError::DType { .. }
                | CoreError::Overflow { .. }
        )
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Shape { arg, expected, got } => {
                write!(f, "{arg}: expected shape {expected}, got {got}")
            }
            CoreError::Empty { arg } => write!(f, "{arg}: expected a non-empty array"),
            CoreError::InvalidOption { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            CoreError::DType { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            CoreError::NonFinite { arg } => {
                write!(f, "{arg} contains NaN or Inf; all inputs must be finite")
            }
            CoreError::PartnerOutOfRange {
                arg,
                position,
                value,
                low,
                high,
            } => write!(
                f,
                "{arg}[{position}] = {value}: expected a value in [{low}, {high}]"
            ),
            CoreError::Overflow { what } => write!(
                f,
                "{what} overflowed although every input is finite; rescale the support \
                 features (e.g. normalise them)"
            ),
            CoreError::NotPositiveDefinite { lam, .. } => write!(
                f,
                "the ridge system K + lam I is not positive definite even with lam={}",
                format_lam(*lam)
            ),
        }
    }
}

impl std::error::Error for CoreError {}

/// Formats a ridge like Python's `f"{lam:.3e}"` (e.g. `1.000e-05`), the spelling of the
/// escalation warnings in both backends.
pub fn format_lam(lam: f64) -> String {
    let rust = format!("{lam:.3e}");
    match rust.split_once('e') {
        Some((mantissa, exponent)) => match exponent.parse::<i32>() {
            Ok(e) => {
                let sign = if e < 0 { '-' } else { '+' };
                format!("{mantissa}e{sign}{:02}", e.unsigned_abs())
            }
            Err(_) => rust,
        },
        // inf and NaN have no exponent; Python spells them the same way lowercase.
        None => rust.to_lowercase(),
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, CoreError>;
