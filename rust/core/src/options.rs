//! Options of the op: modes parsed from their Python spellings, and their numeric ranges.

use crate::error::{CoreError, Result};

/// How the ridge lam is derived from `reg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegMode {
    /// lam = reg * trace(K) / M (scale-invariant; the default).
    Trace,
    /// lam = reg.
    Absolute,
}

/// Which linear system the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// The smaller system: primal iff M > d.
    Auto,
    Dual,
    Primal,
}

/// The linear system actually solved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// (K + lam I_M) W = Y_S, K = F_S F_S^T (M x M).
    Dual,
    /// (F_S^T F_S + lam I_d) beta = F_S^T Y_S (d x d).
    Primal,
}

/// Reduction of the per-target losses (see [`crate::reduce`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
    None,
}

fn unknown(arg: &'static str, expected: &str, got: &str) -> CoreError {
    CoreError::InvalidOption {
        arg,
        expected: expected.to_owned(),
        got: format!("'{got}'"),
    }
}

impl RegMode {
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "trace" => Ok(Self::Trace),
            "absolute" => Ok(Self::Absolute),
            other => Err(unknown("reg_mode", "one of 'trace', 'absolute'", other)),
        }
    }

    /// The ridge for a given `reg`, trace(K) and M. All-zero support features (trace 0) would
    /// give lam = 0 however often it is escalated; the trace rule then falls back to lam = reg
    /// (K = 0, so any positive ridge gives the exact answer: predictions of zero).
    pub fn lam(self, reg: f64, trace: f64, m: usize) -> f64 {
        match self {
            Self::Trace if trace > 0.0 => reg * trace / m as f64,
            Self::Trace | Self::Absolute => reg,
        }
    }
}

impl Solver {
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "auto" => Ok(Self::Auto),
            "dual" => Ok(Self::Dual),
            "primal" => Ok(Self::Primal),
            other => Err(unknown("solver", "one of 'auto', 'dual', 'primal'", other)),
        }
    }

    /// The form solved for M support samples of dimension d.
    pub fn form(self, m: usize, d: usize) -> Form {
        match self {
            Self::Dual => Form::Dual,
            Self::Primal => Form::Primal,
            Self::Auto if m > d => Form::Primal,
            Self::Auto => Form::Dual,
        }
    }
}

impl Reduction {
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "mean" => Ok(Self::Mean),
            "sum" => Ok(Self::Sum),
            "none" => Ok(Self::None),
            other => Err(unknown("reduction", "one of 'mean', 'sum', 'none'", other)),
        }
    }
}

/// Options of the kernel ridge regression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KrrOptions {
    /// Ridge strength, > 0 and finite (default 1e-6).
    pub reg: f64,
    pub reg_mode: RegMode,
    pub solver: Solver,
    /// Factorize and solve in f64 (default) rather than in the input type.
    pub solve_f64: bool,
}

impl Default for KrrOptions {
    fn default() -> Self {
        Self {
            reg: 1e-6,
            reg_mode: RegMode::Trace,
            solver: Solver::Auto,
            solve_f64: true,
        }
    }
}

/// Options of the ISA loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IsaOptions {
    pub krr: KrrOptions,
    /// Fraction of the easiest targets dropped, in [0, 1) (default 0.2).
    pub discard: f64,
    /// Augmentation strength; 0 turns ISA off, < 0 extrapolates away (default 1.0).
    pub epsilon: f64,
}

impl Default for IsaOptions {
    fn default() -> Self {
        Self {
            krr: KrrOptions::default(),
            discard: 0.2,
            epsilon: 1.0,
        }
    }
}

/// How partners are chosen for the kept targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partners<'a> {
    /// Largest cosine similarity of target features among the other kept targets.
    Nearest,
    /// (n_keep,) offsets in [1, n_keep - 1]: partner of kept[r] is kept[(r + o[r]) % n_keep].
    Offsets(&'a [i64]),
    /// (N,) partner index into the full batch for every target (entries of kept ones used).
    Explicit(&'a [i64]),
}

impl<'a> Partners<'a> {
    /// Builds from the Python `partner_mode` string and `partner_index` array.
    pub fn parse(mode: &str, index: &'a [i64]) -> Result<Self> {
        match mode {
            "nearest" if index.is_empty() => Ok(Self::Nearest),
            "nearest" => Err(CoreError::Shape {
                arg: "partner_index",
                expected: "an empty array (0,) with partner_mode='nearest'".to_owned(),
                got: format!("({},)", index.len()),
            }),
            "offsets" => Ok(Self::Offsets(index)),
            "explicit" => Ok(Self::Explicit(index)),
            other => Err(unknown(
                "partner_mode",
                "one of 'nearest', 'offsets', 'explicit'",
                other,
            )),
        }
    }
}

/// Number of kept targets: N - floor(discard * N).
pub fn n_keep(n: usize, discard: f64) -> usize {
    let n_drop = (discard * n as f64).floor() as usize;
    n - n_drop.min(n)
}
