//! numpy arrays in and out.
//!
//! The large inputs (features and labels) are read in place: the numpy array stays borrowed
//! read-only for the whole call and the kernels see its memory, also after the GIL is released,
//! as torch's own CPU ops do (a copy of a 1024 x 8192 float32 feature matrix cost 4 to 15 ms of
//! a 60 ms forward). Writing to an input from another thread during a call is therefore a data
//! race, as it is for any torch op. Arrays whose memory is not C-ordered are copied. The small
//! saved tensors of a backward (residual, coef, factor, indices) are copied. Problems with an
//! argument are reported as `CoreError`s, so the bindings have one error conversion.

use isa_core::{CoreError, Float, MatView, RowMajor};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// The floating types the kernels accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatKind {
    F32,
    F64,
}

impl FloatKind {
    pub(crate) fn of<T: Float>() -> Self {
        if T::NAME == f32::NAME {
            Self::F32
        } else {
            Self::F64
        }
    }
}

fn untyped<'a, 'py>(
    obj: &'a Bound<'py, PyAny>,
    arg: &'static str,
    expected: &str,
) -> Result<&'a Bound<'py, PyUntypedArray>, CoreError> {
    obj.cast::<PyUntypedArray>().map_err(|_| CoreError::DType {
        arg,
        expected: format!("a numpy array of dtype {expected}"),
        got: type_name(obj),
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "an unknown type".to_owned(), |n| n.to_string())
}

fn dtype_name(array: &Bound<'_, PyUntypedArray>) -> String {
    array.dtype().to_string()
}

/// float32 or float64, else a `DType` error (a `TypeError` in Python).
pub(crate) fn float_kind(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
) -> Result<FloatKind, CoreError> {
    let array = untyped(obj, arg, "float32 or float64")?;
    let py = obj.py();
    let dtype = array.dtype();
    if dtype.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Ok(FloatKind::F32)
    } else if dtype.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Ok(FloatKind::F64)
    } else {
        Err(CoreError::DType {
            arg,
            expected: "dtype float32 or float64".to_owned(),
            got: format!("dtype {}", dtype_name(array)),
        })
    }
}

/// An n-d array of element type `T` (already dtype-checked), borrowed read-only, and its shape.
fn readonly<'py, T: Element + Copy + 'static>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    ndim: usize,
) -> Result<(PyReadonlyArrayDyn<'py, T>, Vec<usize>), CoreError> {
    let array = obj.cast::<PyArrayDyn<T>>().map_err(|_| CoreError::DType {
        arg,
        expected: format!("an array of dtype {}", std::any::type_name::<T>()),
        got: type_name(obj),
    })?;
    let shape = array.shape().to_vec();
    if shape.len() != ndim {
        return Err(CoreError::Shape {
            arg,
            expected: format!("with {ndim} dimensions"),
            got: format!("{shape:?}").replace('[', "(").replace(']', ")"),
        });
    }
    let readonly = array.try_readonly().map_err(|_| CoreError::InvalidOption {
        arg,
        expected: "an array that is not being written to".to_owned(),
        got: "a mutably borrowed array".to_owned(),
    })?;
    Ok((readonly, shape))
}

/// The array's elements in row-major order: its own memory when it is C-ordered (`as_slice`
/// also accepts Fortran-ordered arrays, whose memory order is not row-major), else a copy.
fn row_major<'a, T: Element + Copy + 'static>(
    array: &'a PyReadonlyArrayDyn<'_, T>,
) -> Result<&'a [T], Vec<T>> {
    match array.as_slice() {
        Ok(slice) if array.is_c_contiguous() => Ok(slice),
        _ => Err(array.as_array().iter().copied().collect()),
    }
}

/// Copies an n-d array of element type `T` (already dtype-checked) and returns its shape.
fn copy_array<T: Element + Copy + 'static>(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
    ndim: usize,
) -> Result<(Vec<T>, Vec<usize>), CoreError> {
    let (readonly, shape) = readonly::<T>(obj, arg, ndim)?;
    let data = match row_major(&readonly) {
        Ok(slice) => isa_core::scratch::copied(slice),
        Err(copy) => copy,
    };
    Ok((data, shape))
}

/// A 2-d float array of type `T` read in place (see the module documentation); `view` gives
/// the kernels a row-major view of it.
pub(crate) struct Borrowed<'py, T: Element> {
    /// Holds numpy's read-only borrow for as long as the view may be used.
    array: PyReadonlyArrayDyn<'py, T>,
    /// The row-major copy of an array whose memory is not C-ordered.
    copy: Option<Vec<T>>,
    arg: &'static str,
    rows: usize,
    cols: usize,
}

impl<T: Float + Element> Borrowed<'_, T> {
    pub(crate) fn view(&self) -> Result<MatView<'_, T>, CoreError> {
        // Without a copy the array is C-ordered, so its memory is the row-major slice.
        let data = match &self.copy {
            Some(copy) => copy.as_slice(),
            None => self.array.as_slice().unwrap_or_default(),
        };
        MatView::new(self.arg, data, self.rows, self.cols)
    }
}

/// A 2-d float array of type `T`, borrowed; another float type is a `DType` error naming `T`.
pub(crate) fn borrowed_matrix<'py, T: Float + Element>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
) -> Result<Borrowed<'py, T>, CoreError> {
    require_kind::<T>(obj, arg)?;
    let (array, shape) = readonly::<T>(obj, arg, 2)?;
    let copy = row_major(&array).err();
    Ok(Borrowed {
        array,
        copy,
        arg,
        rows: shape[0],
        cols: shape[1],
    })
}

/// A 2-d float array of type `T`; another float type is a `DType` error naming `T`.
pub(crate) fn matrix<T: Float + Element>(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
) -> Result<RowMajor<T>, CoreError> {
    require_kind::<T>(obj, arg)?;
    let (data, shape) = copy_array::<T>(obj, arg, 2)?;
    Ok(RowMajor {
        data,
        rows: shape[0],
        cols: shape[1],
    })
}

/// A 1-d float array of type `T`.
pub(crate) fn vector<T: Float + Element>(
    obj: &Bound<'_, PyAny>,
    arg: &'static str,
) -> Result<Vec<T>, CoreError> {
    require_kind::<T>(obj, arg)?;
    Ok(copy_array::<T>(obj, arg, 1)?.0)
}

fn require_kind<T: Float>(obj: &Bound<'_, PyAny>, arg: &'static str) -> Result<(), CoreError> {
    if float_kind(obj, arg)? == FloatKind::of::<T>() {
        Ok(())
    } else {
        let array = untyped(obj, arg, T::NAME)?;
        Err(CoreError::DType {
            arg,
            expected: format!("dtype {} (the dtype of support_features)", T::NAME),
            got: format!("dtype {}", dtype_name(array)),
        })
    }
}

/// A 1-d int64 array (indices or offsets); another dtype is a `ValueError`, as the contract
/// asks for a partner tensor of the wrong dtype.
pub(crate) fn indices(obj: &Bound<'_, PyAny>, arg: &'static str) -> Result<Vec<i64>, CoreError> {
    let array = untyped(obj, arg, "int64")?;
    if !array.dtype().is_equiv_to(&numpy::dtype::<i64>(obj.py())) {
        return Err(CoreError::InvalidOption {
            arg,
            expected: "an int64 array".to_owned(),
            got: format!("dtype {}", dtype_name(array)),
        });
    }
    Ok(copy_array::<i64>(obj, arg, 1)?.0)
}

/// An owned row-major matrix as a 2-d numpy array (no copy).
pub(crate) fn to_numpy_matrix<'py, T: Element>(
    py: Python<'py>,
    matrix: RowMajor<T>,
) -> PyResult<Bound<'py, PyAny>> {
    let (rows, cols) = (matrix.rows, matrix.cols);
    Ok(PyArray1::from_vec(py, matrix.data)
        .reshape([rows, cols])?
        .into_any())
}

/// A vector as a 1-d numpy array (no copy).
pub(crate) fn to_numpy_vector<T: Element>(py: Python<'_>, data: Vec<T>) -> Bound<'_, PyAny> {
    PyArray1::from_vec(py, data).into_any()
}
