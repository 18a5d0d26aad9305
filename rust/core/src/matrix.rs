//! Element types and the row-major matrices of the public API.
//!
//! Every matrix crossing the API is row-major: element (i, j) of a `rows x cols` matrix is
//! `data[i * cols + j]` (the layout of a C-contiguous numpy array or torch tensor). Internally
//! the data are viewed as faer matrices without copying.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub, SubAssign};

use faer::{MatMut, MatRef};
use rayon::prelude::*;

use crate::error::{CoreError, Result};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The supported element types: `f32` and `f64`.
pub trait Float:
    faer::traits::RealField
    + sealed::Sealed
    + Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + 'static
{
    /// The numpy / torch name of the type.
    const NAME: &'static str;
    /// Unit roundoff u: |fl(x) - x| <= u |x| (2^-24 for f32, 2^-53 for f64).
    const UNIT_ROUNDOFF: f64;
    /// Whether the product of any two finite values is a normal, finite f64 (true for f32,
    /// whose exponent range is a small part of f64's), so f64 sums of products need no scaling.
    const PRODUCTS_FIT_F64: bool;
    /// Rounds an `f64` to this type.
    fn from_f64(value: f64) -> Self;
    /// Widens to `f64` (exact for both types).
    fn to_f64(self) -> f64;
    /// False for NaN and infinities.
    fn finite(self) -> bool;
}

impl Float for f32 {
    const NAME: &'static str = "float32";
    const UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8;
    const PRODUCTS_FIT_F64: bool = true;
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn finite(self) -> bool {
        self.is_finite()
    }
}

impl Float for f64 {
    const NAME: &'static str = "float64";
    const UNIT_ROUNDOFF: f64 = 1.110_223_024_625_156_5e-16;
    const PRODUCTS_FIT_F64: bool = false;
    #[inline(always)]
    fn from_f64(value: f64) -> Self {
        value
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn finite(self) -> bool {
        self.is_finite()
    }
}

/// A borrowed row-major `rows x cols` matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatView<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
}

impl<'a, T: Float> MatView<'a, T> {
    /// Views `data` as a row-major `rows x cols` matrix; `arg` names it in errors.
    pub fn new(arg: &'static str, data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        let len = rows.checked_mul(cols);
        if len != Some(data.len()) {
            return Err(CoreError::Shape {
                arg,
                expected: format!("({rows}, {cols}), i.e. {rows} * {cols} elements"),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(Self { data, rows, cols })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn data(&self) -> &'a [T] {
        self.data
    }

    /// Row `i` (callers guarantee `i < rows`).
    pub(crate) fn row(&self, i: usize) -> &'a [T] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub(crate) fn faer(&self) -> MatRef<'a, T> {
        MatRef::from_row_major_slice(self.data, self.rows, self.cols)
    }
}

/// An owned row-major matrix (the outputs of the API).
#[derive(Clone, Debug, PartialEq)]
pub struct RowMajor<T> {
    pub data: Vec<T>,
    pub rows: usize,
    pub cols: usize,
}

impl<T: Float> RowMajor<T> {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            data: crate::pages::zeroed(T::from_f64(0.0), rows * cols),
            rows,
            cols,
        }
    }

    /// Copies a faer matrix of any layout.
    pub(crate) fn from_faer(mat: MatRef<'_, T>) -> Self {
        let mut out = Self::zeros(mat.nrows(), mat.ncols());
        out.faer_mut().copy_from(mat);
        out
    }

    pub fn view(&self) -> MatView<'_, T> {
        MatView {
            data: &self.data,
            rows: self.rows,
            cols: self.cols,
        }
    }

    pub(crate) fn faer(&self) -> MatRef<'_, T> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    pub(crate) fn faer_mut(&mut self) -> MatMut<'_, T> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// Element-wise conversion to another float type.
    pub(crate) fn cast<U: Float>(&self) -> RowMajor<U> {
        RowMajor {
            data: self.data.iter().map(|&x| U::from_f64(x.to_f64())).collect(),
            rows: self.rows,
            cols: self.cols,
        }
    }
}

/// The lower Cholesky factor of the ridge system, in `f64` (the default) or in the input type.
#[derive(Clone, Debug, PartialEq)]
pub enum Factor<T> {
    F64(RowMajor<f64>),
    Input(RowMajor<T>),
}

/// A borrowed [`Factor`], as the backward passes take it.
#[derive(Clone, Copy, Debug)]
pub enum FactorView<'a, T> {
    F64(MatView<'a, f64>),
    Input(MatView<'a, T>),
}

impl<T: Float> Factor<T> {
    pub fn view(&self) -> FactorView<'_, T> {
        match self {
            Factor::F64(m) => FactorView::F64(m.view()),
            Factor::Input(m) => FactorView::Input(m.view()),
        }
    }
}

impl<T: Float> FactorView<'_, T> {
    pub(crate) fn shape(&self) -> (usize, usize) {
        match self {
            FactorView::F64(m) => (m.rows(), m.cols()),
            FactorView::Input(m) => (m.rows(), m.cols()),
        }
    }

    pub(crate) fn all_finite(&self) -> bool {
        match self {
            FactorView::F64(m) => all_finite(m.data()),
            FactorView::Input(m) => all_finite(m.data()),
        }
    }
}

/// True when no value is NaN or infinite. Branch-free inside each chunk so the compiler
/// vectorises it (1.0 ms instead of `iter().all`'s 2.3 ms on a 32 MB feature matrix), early
/// exit between chunks, and large inputs split among the call's threads.
pub(crate) fn all_finite<T: Float>(values: &[T]) -> bool {
    let chunk_finite = |chunk: &[T]| {
        chunk
            .chunks(256)
            .all(|piece| piece.iter().fold(true, |ok, x| ok & x.finite()))
    };
    values.par_chunks(1 << 16).all(chunk_finite)
}
