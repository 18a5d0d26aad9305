//! `isa_distill._core`: numpy bindings of the `isa-core` kernels.
//!
//! Each function checks dtypes, borrows its inputs (read in place, see `convert`), releases the
//! GIL for the computation, then warns about ridge escalations and maps errors once (`errors.rs`). Float
//! inputs are all float32 or all float64 (the dtype of `support_features`); the outputs have
//! that dtype, except the factor (float64 when `solve_f64`) and the int64 indices.

mod convert;
mod errors;
mod openmp;
mod threads;

use convert::{
    borrowed_matrix, float_kind, indices, matrix, to_numpy_matrix, to_numpy_vector, vector,
    Borrowed, FloatKind,
};
use errors::{finish, to_py_err};
use isa_core::{
    BackwardOptions, CoreError, Factor, FitView, Float, IsaOptions, IsaSaved, KrrOptions, MatView,
    Partners, RegMode, Solver,
};
use numpy::Element;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use threads::with_threads;

/// An element type the bindings accept: both the kernels and numpy know it.
trait Scalar: Float + Element {}
impl<T: Float + Element> Scalar for T {}

/// The four float inputs shared by every function (for krr_predict the last two are the query
/// features and the gradient of the predictions, or absent).
struct Arrays<'a, 'py> {
    support_features: &'a Bound<'py, PyAny>,
    support_labels: &'a Bound<'py, PyAny>,
    targets: &'a Bound<'py, PyAny>,
    /// Y_T for the ISA functions, grad_pred for the prediction backward, with its name.
    labels: Option<(&'a Bound<'py, PyAny>, &'static str)>,
    /// Threads of the computation (`threads::with_threads`; 0: rayon's global pool).
    threads: usize,
}

/// [`Arrays`] borrowed in the input type (read in place, see `convert`).
struct Inputs<'py, T: Element> {
    support_features: Borrowed<'py, T>,
    support_labels: Borrowed<'py, T>,
    targets: Borrowed<'py, T>,
    labels: Option<Borrowed<'py, T>>,
}

/// Row-major views of [`Inputs`]: plain slices, which may cross `py.detach`.
#[derive(Clone, Copy)]
struct Views<'a, T> {
    support_features: MatView<'a, T>,
    support_labels: MatView<'a, T>,
    targets: MatView<'a, T>,
    labels: Option<MatView<'a, T>>,
}

impl<'py> Arrays<'_, 'py> {
    fn borrow<T: Scalar>(&self, targets_arg: &'static str) -> Result<Inputs<'py, T>, CoreError> {
        Ok(Inputs {
            support_features: borrowed_matrix(self.support_features, "support_features")?,
            support_labels: borrowed_matrix(self.support_labels, "support_labels")?,
            targets: borrowed_matrix(self.targets, targets_arg)?,
            labels: self
                .labels
                .map(|(labels, arg)| borrowed_matrix(labels, arg))
                .transpose()?,
        })
    }
}

impl<T: Scalar> Inputs<'_, T> {
    fn views(&self) -> Result<Views<'_, T>, CoreError> {
        Ok(Views {
            support_features: self.support_features.view()?,
            support_labels: self.support_labels.view()?,
            targets: self.targets.view()?,
            labels: self.labels.as_ref().map(Borrowed::view).transpose()?,
        })
    }
}

impl<'a, T: Float> Views<'a, T> {
    /// The fourth array (present whenever the caller built [`Arrays`] with one).
    fn labels(&self, arg: &'static str) -> Result<MatView<'a, T>, CoreError> {
        self.labels.ok_or(CoreError::Empty { arg })
    }
}

/// The ridge factor saved by a forward: float64, or the input dtype when `solve_f64` was off.
fn factor<T: Scalar>(obj: &Bound<'_, PyAny>) -> Result<Factor<T>, CoreError> {
    match float_kind(obj, "factor")? {
        FloatKind::F64 => Ok(Factor::F64(matrix::<f64>(obj, "factor")?)),
        FloatKind::F32 => Ok(Factor::Input(matrix::<T>(obj, "factor")?)),
    }
}

fn tuple<'py>(py: Python<'py>, items: Vec<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, items)
}

fn factor_to_numpy<'py, T: Scalar>(
    py: Python<'py>,
    factor: Factor<T>,
) -> PyResult<Bound<'py, PyAny>> {
    match factor {
        Factor::F64(m) => to_numpy_matrix(py, m),
        Factor::Input(m) => to_numpy_matrix(py, m),
    }
}

fn lam_to_python(py: Python<'_>, lam: f64) -> PyResult<Bound<'_, PyAny>> {
    Ok(lam.into_pyobject(py)?.into_any())
}

/// Forward of the ISA loss. Returns (losses, plain, kept, partner, residual, coef, factor, lam).
#[pyfunction]
#[pyo3(signature = (
    support_features, support_labels, target_features, target_labels, partner_index, *,
    partner_mode = "nearest", reg = 1e-6, reg_mode = "trace", solver = "auto", discard = 0.2,
    epsilon = 1.0, solve_f64 = true, threads = 0,
))]
#[allow(clippy::too_many_arguments)]
fn isa_krr_forward<'py>(
    py: Python<'py>,
    support_features: &Bound<'py, PyAny>,
    support_labels: &Bound<'py, PyAny>,
    target_features: &Bound<'py, PyAny>,
    target_labels: &Bound<'py, PyAny>,
    partner_index: &Bound<'py, PyAny>,
    partner_mode: &str,
    reg: f64,
    reg_mode: &str,
    solver: &str,
    discard: f64,
    epsilon: f64,
    solve_f64: bool,
    threads: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    let arrays = Arrays {
        support_features,
        support_labels,
        targets: target_features,
        labels: Some((target_labels, "target_labels")),
        threads,
    };
    let parsed = || -> Result<(IsaOptions, Vec<i64>), CoreError> {
        let krr = KrrOptions {
            reg,
            reg_mode: RegMode::parse(reg_mode)?,
            solver: Solver::parse(solver)?,
            solve_f64,
        };
        let index = indices(partner_index, "partner_index")?;
        Partners::parse(partner_mode, &index)?;
        Ok((
            IsaOptions {
                krr,
                discard,
                epsilon,
            },
            index,
        ))
    };
    let (options, index) = parsed().map_err(|e| to_py_err(py, e))?;
    let args = (arrays, partner_mode, index, options);
    match float_kind(support_features, "support_features").map_err(|e| to_py_err(py, e))? {
        FloatKind::F32 => forward_typed::<f32>(py, args),
        FloatKind::F64 => forward_typed::<f64>(py, args),
    }
}

fn forward_typed<'py, T: Scalar>(
    py: Python<'py>,
    (arrays, partner_mode, index, options): (Arrays<'_, 'py>, &str, Vec<i64>, IsaOptions),
) -> PyResult<Bound<'py, PyTuple>> {
    let inputs = arrays
        .borrow::<T>("target_features")
        .map_err(|e| to_py_err(py, e))?;
    let views = inputs.views().map_err(|e| to_py_err(py, e))?;
    let threads = arrays.threads;
    let result = py.detach(|| {
        with_threads(threads, || {
            let partners = Partners::parse(partner_mode, &index)?;
            isa_core::isa_krr_forward(
                views.support_features,
                views.support_labels,
                views.targets,
                views.labels("target_labels")?,
                partners,
                &options,
            )
        })
    });
    let out = finish(py, result, |out| &out.escalations)?;
    tuple(
        py,
        vec![
            to_numpy_vector(py, out.losses),
            to_numpy_vector(py, out.plain),
            to_numpy_vector(py, out.kept),
            to_numpy_vector(py, out.partner),
            to_numpy_matrix(py, out.residual)?,
            to_numpy_matrix(py, out.coef)?,
            factor_to_numpy(py, out.factor)?,
            lam_to_python(py, out.lam)?,
        ],
    )
}

/// What the ISA backward needs besides the four inputs.
struct IsaBackwardArgs<'a, 'py> {
    grad_losses: &'a Bound<'py, PyAny>,
    kept: Vec<i64>,
    partner: Vec<i64>,
    residual: &'a Bound<'py, PyAny>,
    coef: &'a Bound<'py, PyAny>,
    factor: &'a Bound<'py, PyAny>,
    lam: f64,
    options: BackwardOptions,
}

/// Backward of the ISA loss. Returns (d_support_features, d_support_labels,
/// d_target_features, d_target_labels).
#[pyfunction]
#[pyo3(signature = (
    support_features, support_labels, target_features, target_labels, grad_losses, kept,
    partner, residual, coef, factor, *, lam, reg_mode = "trace", solver = "auto", epsilon = 1.0,
    threads = 0, query_grad = true,
))]
#[allow(clippy::too_many_arguments)]
fn isa_krr_backward<'py>(
    py: Python<'py>,
    support_features: &Bound<'py, PyAny>,
    support_labels: &Bound<'py, PyAny>,
    target_features: &Bound<'py, PyAny>,
    target_labels: &Bound<'py, PyAny>,
    grad_losses: &Bound<'py, PyAny>,
    kept: &Bound<'py, PyAny>,
    partner: &Bound<'py, PyAny>,
    residual: &Bound<'py, PyAny>,
    coef: &Bound<'py, PyAny>,
    factor: &Bound<'py, PyAny>,
    lam: f64,
    reg_mode: &str,
    solver: &str,
    epsilon: f64,
    threads: usize,
    query_grad: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let arrays = Arrays {
        support_features,
        support_labels,
        targets: target_features,
        labels: Some((target_labels, "target_labels")),
        threads,
    };
    let parsed = || -> Result<IsaBackwardArgs<'_, 'py>, CoreError> {
        Ok(IsaBackwardArgs {
            grad_losses,
            kept: indices(kept, "kept")?,
            partner: indices(partner, "partner")?,
            residual,
            coef,
            factor,
            lam,
            options: BackwardOptions {
                reg_mode: RegMode::parse(reg_mode)?,
                solver: Solver::parse(solver)?,
                epsilon,
                query_grad,
            },
        })
    };
    let args = parsed().map_err(|e| to_py_err(py, e))?;
    match float_kind(support_features, "support_features").map_err(|e| to_py_err(py, e))? {
        FloatKind::F32 => backward_typed::<f32>(py, &arrays, &args),
        FloatKind::F64 => backward_typed::<f64>(py, &arrays, &args),
    }
}

fn backward_typed<'py, T: Scalar>(
    py: Python<'py>,
    arrays: &Arrays<'_, 'py>,
    args: &IsaBackwardArgs<'_, 'py>,
) -> PyResult<Bound<'py, PyTuple>> {
    let copied = || -> Result<_, CoreError> {
        Ok((
            arrays.borrow::<T>("target_features")?,
            vector::<T>(args.grad_losses, "grad_losses")?,
            matrix::<T>(args.residual, "residual")?,
            matrix::<T>(args.coef, "coef")?,
            factor::<T>(args.factor)?,
        ))
    };
    let (inputs, grad_losses, residual, coef, factor) = copied().map_err(|e| to_py_err(py, e))?;
    let views = inputs.views().map_err(|e| to_py_err(py, e))?;
    let (kept, partner, lam, options) = (&args.kept, &args.partner, args.lam, &args.options);
    let threads = arrays.threads;
    let result = py.detach(|| {
        with_threads(threads, || {
            let saved = IsaSaved {
                kept,
                partner,
                residual: residual.view(),
                fit: FitView {
                    coef: coef.view(),
                    factor: factor.view(),
                    lam,
                },
            };
            isa_core::isa_krr_backward(
                views.support_features,
                views.support_labels,
                views.targets,
                views.labels("target_labels")?,
                &grad_losses,
                saved,
                options,
            )
        })
    });
    let grads = result.map_err(|e| to_py_err(py, e))?;
    tuple(
        py,
        vec![
            to_numpy_matrix(py, grads.support_features)?,
            to_numpy_matrix(py, grads.support_labels)?,
            to_numpy_matrix(py, grads.target_features)?,
            to_numpy_matrix(py, grads.target_labels)?,
        ],
    )
}

/// KRR predictions for query features. Returns (pred, coef, factor, lam).
#[pyfunction]
#[pyo3(signature = (
    support_features, support_labels, query_features, *, reg = 1e-6, reg_mode = "trace",
    solver = "auto", solve_f64 = true, threads = 0,
))]
#[allow(clippy::too_many_arguments)]
fn krr_predict_forward<'py>(
    py: Python<'py>,
    support_features: &Bound<'py, PyAny>,
    support_labels: &Bound<'py, PyAny>,
    query_features: &Bound<'py, PyAny>,
    reg: f64,
    reg_mode: &str,
    solver: &str,
    solve_f64: bool,
    threads: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    let arrays = Arrays {
        support_features,
        support_labels,
        targets: query_features,
        labels: None,
        threads,
    };
    let parsed = || -> Result<KrrOptions, CoreError> {
        Ok(KrrOptions {
            reg,
            reg_mode: RegMode::parse(reg_mode)?,
            solver: Solver::parse(solver)?,
            solve_f64,
        })
    };
    let options = parsed().map_err(|e| to_py_err(py, e))?;
    match float_kind(support_features, "support_features").map_err(|e| to_py_err(py, e))? {
        FloatKind::F32 => predict_typed::<f32>(py, &arrays, &options),
        FloatKind::F64 => predict_typed::<f64>(py, &arrays, &options),
    }
}

fn predict_typed<'py, T: Scalar>(
    py: Python<'py>,
    arrays: &Arrays<'_, 'py>,
    options: &KrrOptions,
) -> PyResult<Bound<'py, PyTuple>> {
    let inputs = arrays
        .borrow::<T>("query_features")
        .map_err(|e| to_py_err(py, e))?;
    let views = inputs.views().map_err(|e| to_py_err(py, e))?;
    let threads = arrays.threads;
    let result = py.detach(|| {
        with_threads(threads, || {
            isa_core::krr_predict_forward(
                views.support_features,
                views.support_labels,
                views.targets,
                options,
            )
        })
    });
    let out = finish(py, result, |out| &out.escalations)?;
    tuple(
        py,
        vec![
            to_numpy_matrix(py, out.pred)?,
            to_numpy_matrix(py, out.coef)?,
            factor_to_numpy(py, out.factor)?,
            lam_to_python(py, out.lam)?,
        ],
    )
}

/// Backward of `krr_predict_forward`. Returns (d_support_features, d_support_labels,
/// d_query_features).
#[pyfunction]
#[pyo3(signature = (
    support_features, support_labels, query_features, grad_pred, coef, factor, *, lam,
    reg_mode = "trace", solver = "auto", threads = 0, query_grad = true,
))]
#[allow(clippy::too_many_arguments)]
fn krr_predict_backward<'py>(
    py: Python<'py>,
    support_features: &Bound<'py, PyAny>,
    support_labels: &Bound<'py, PyAny>,
    query_features: &Bound<'py, PyAny>,
    grad_pred: &Bound<'py, PyAny>,
    coef: &Bound<'py, PyAny>,
    factor: &Bound<'py, PyAny>,
    lam: f64,
    reg_mode: &str,
    solver: &str,
    threads: usize,
    query_grad: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let arrays = Arrays {
        support_features,
        support_labels,
        targets: query_features,
        labels: Some((grad_pred, "grad_pred")),
        threads,
    };
    let parsed = || -> Result<BackwardOptions, CoreError> {
        Ok(BackwardOptions {
            reg_mode: RegMode::parse(reg_mode)?,
            solver: Solver::parse(solver)?,
            epsilon: 0.0,
            query_grad,
        })
    };
    let options = parsed().map_err(|e| to_py_err(py, e))?;
    let saved = (coef, factor, lam);
    match float_kind(support_features, "support_features").map_err(|e| to_py_err(py, e))? {
        FloatKind::F32 => predict_backward_typed::<f32>(py, &arrays, saved, &options),
        FloatKind::F64 => predict_backward_typed::<f64>(py, &arrays, saved, &options),
    }
}

type SavedFit<'a, 'py> = (&'a Bound<'py, PyAny>, &'a Bound<'py, PyAny>, f64);

fn predict_backward_typed<'py, T: Scalar>(
    py: Python<'py>,
    arrays: &Arrays<'_, 'py>,
    (coef, factor_obj, lam): SavedFit<'_, 'py>,
    options: &BackwardOptions,
) -> PyResult<Bound<'py, PyTuple>> {
    let copied = || -> Result<_, CoreError> {
        Ok((
            arrays.borrow::<T>("query_features")?,
            matrix::<T>(coef, "coef")?,
            factor::<T>(factor_obj)?,
        ))
    };
    let (inputs, coef, factor) = copied().map_err(|e| to_py_err(py, e))?;
    let views = inputs.views().map_err(|e| to_py_err(py, e))?;
    let threads = arrays.threads;
    let result = py.detach(|| {
        with_threads(threads, || {
            isa_core::krr_predict_backward(
                views.support_features,
                views.support_labels,
                views.targets,
                views.labels("grad_pred")?,
                FitView {
                    coef: coef.view(),
                    factor: factor.view(),
                    lam,
                },
                options,
            )
        })
    });
    let grads = result.map_err(|e| to_py_err(py, e))?;
    tuple(
        py,
        vec![
            to_numpy_matrix(py, grads.support_features)?,
            to_numpy_matrix(py, grads.support_labels)?,
            to_numpy_matrix(py, grads.query_features)?,
        ],
    )
}

/// The number of threads a call with `threads` computes with (0: rayon's global pool).
#[pyfunction]
#[pyo3(signature = (threads = 0))]
fn parallelism(threads: usize) -> usize {
    with_threads(threads, rayon::current_num_threads)
}

/// Computes later calls on the threads of the OpenMP runtime loaded from `path` (torch's; see
/// `openmp.rs`), or on rayon pools of their own (`None`). Returns whether a runtime is in use:
/// false also when `path` is not loaded in this process or lacks the OpenMP entry points.
#[pyfunction]
#[pyo3(signature = (path))]
fn use_openmp_runtime(path: Option<&str>) -> bool {
    openmp::set_runtime(path)
}

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_function(wrap_pyfunction!(parallelism, module)?)?;
    module.add_function(wrap_pyfunction!(use_openmp_runtime, module)?)?;
    module.add_function(wrap_pyfunction!(isa_krr_forward, module)?)?;
    module.add_function(wrap_pyfunction!(isa_krr_backward, module)?)?;
    module.add_function(wrap_pyfunction!(krr_predict_forward, module)?)?;
    module.add_function(wrap_pyfunction!(krr_predict_backward, module)?)?;
    Ok(())
}
