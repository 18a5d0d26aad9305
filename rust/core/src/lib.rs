//! CPU kernels of isa-distill: kernel ridge regression (KRR) on a support set and the ISA loss
//! (Infinite Semantic Augmentation) of a batch of targets, with analytic backward passes.
//!
//! The mathematics is the contract in `docs/loss.md`; the split into a forward
//! (returning what the backward needs) and a backward follows `docs/design.md`.
//!
//! # Conventions
//! * Matrices are row-major slices with explicit dimensions ([`MatView`] in, [`RowMajor`] out):
//!   element (i, j) of a `rows x cols` matrix is `data[i * cols + j]`.
//! * Names: F_S = `support_features` (M x d), Y_S = `support_labels` (M x C),
//!   F_T = `target_features` (N x d), Y_T = `target_labels` (N x C).
//! * Elements are `f32` or `f64` ([`Float`]); outputs have the input type. Large products run
//!   in the input type with faer's global parallelism; the Cholesky factorization and the
//!   triangular solves run in `f64` unless `solve_f64` is false.
//! * Indices (kept targets, partners, offsets) are `i64`, as numpy and torch store them.
//! * Every entry point validates all its arguments first and returns a [`CoreError`] naming
//!   the argument; nothing panics on user input.

mod error;
mod isa;
mod krr;
mod matrix;
mod options;
mod pages;
pub mod partners;
pub mod scratch;
mod validate;

pub use error::{format_lam, CoreError, Result};
pub use matrix::{Factor, FactorView, Float, MatView, RowMajor};
pub use options::{n_keep, Form, IsaOptions, KrrOptions, Partners, Reduction, RegMode, Solver};

/// Everything the ISA forward computes (see `docs/design.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct IsaForward<T> {
    /// (N,) L_i for kept targets, 0 for discarded ones.
    pub losses: Vec<T>,
    /// (N,) l_i = 1/2 ||A_i||^2, the hardness ranking.
    pub plain: Vec<T>,
    /// (n_keep,) indices of the kept targets, ascending.
    pub kept: Vec<i64>,
    /// (n_keep,) partner j(kept[r]), an index into the full batch.
    pub partner: Vec<i64>,
    /// (N, C) A = P - Y_T.
    pub residual: RowMajor<T>,
    /// W (M x C) in the dual form, beta (d x C) in the primal form.
    pub coef: RowMajor<T>,
    /// Lower Cholesky factor (s x s, s = M dual / d primal) of the system actually solved.
    pub factor: Factor<T>,
    /// The ridge actually used (after any escalation).
    pub lam: f64,
    /// Each escalated ridge tried, in order; the caller warns once per entry.
    pub escalations: Vec<f64>,
}

impl<T: Float> IsaForward<T> {
    /// What the backward needs of this forward, borrowed.
    pub fn saved(&self) -> IsaSaved<'_, T> {
        IsaSaved {
            kept: &self.kept,
            partner: &self.partner,
            residual: self.residual.view(),
            fit: FitView {
                coef: self.coef.view(),
                factor: self.factor.view(),
                lam: self.lam,
            },
        }
    }
}

/// What the forward saved for the backward.
#[derive(Clone, Copy, Debug)]
pub struct IsaSaved<'a, T> {
    pub kept: &'a [i64],
    pub partner: &'a [i64],
    pub residual: MatView<'a, T>,
    pub fit: FitView<'a, T>,
}

/// A borrowed fit of the regression: coefficients, factor and ridge.
#[derive(Clone, Copy, Debug)]
pub struct FitView<'a, T> {
    pub coef: MatView<'a, T>,
    pub factor: FactorView<'a, T>,
    pub lam: f64,
}

/// Options of the backward passes: they must match the forward's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackwardOptions {
    pub reg_mode: RegMode,
    pub solver: Solver,
    /// Used by [`isa_krr_backward`] only.
    pub epsilon: f64,
    /// Whether the gradient of the target (query) features is wanted; distillation never
    /// needs it (targets are data). Without it that gradient comes back with 0 rows and its
    /// N x d product is skipped.
    pub query_grad: bool,
}

/// Gradients of the ISA loss, in the input type.
#[derive(Clone, Debug, PartialEq)]
pub struct IsaGrads<T> {
    pub support_features: RowMajor<T>,
    pub support_labels: RowMajor<T>,
    pub target_features: RowMajor<T>,
    pub target_labels: RowMajor<T>,
}

/// Everything the KRR prediction forward computes.
#[derive(Clone, Debug, PartialEq)]
pub struct KrrPredict<T> {
    /// (Q, C) predictions for the query features.
    pub pred: RowMajor<T>,
    pub coef: RowMajor<T>,
    pub factor: Factor<T>,
    pub lam: f64,
    pub escalations: Vec<f64>,
}

/// Gradients of a loss through [`krr_predict_forward`], in the input type.
#[derive(Clone, Debug, PartialEq)]
pub struct KrrPredictGrads<T> {
    pub support_features: RowMajor<T>,
    pub support_labels: RowMajor<T>,
    pub query_features: RowMajor<T>,
}

/// A reduced loss.
#[derive(Clone, Debug, PartialEq)]
pub enum Reduced<T> {
    Scalar(T),
    PerTarget(Vec<T>),
}

/// Shapes (M, d, C) of a validated support set.
struct Dims {
    m: usize,
    d: usize,
    c: usize,
}

/// Checks F_S (M, d) and Y_S (M, C): non-empty, consistent and finite.
fn check_support<T: Float>(features: MatView<'_, T>, labels: MatView<'_, T>) -> Result<Dims> {
    validate::nonempty_finite("support_features", features)?;
    let (m, d) = (features.rows(), features.cols());
    validate::shape("support_labels", labels, "(M, C)", m, labels.cols())?;
    validate::nonempty_finite("support_labels", labels)?;
    Ok(Dims {
        m,
        d,
        c: labels.cols(),
    })
}

/// Checks query-side features (rows, d): non-empty, consistent with F_S and finite.
fn check_features<T: Float>(arg: &'static str, features: MatView<'_, T>, d: usize) -> Result<()> {
    validate::shape(arg, features, "(N, d)", features.rows(), d)?;
    validate::nonempty_finite(arg, features)
}

/// Checks a fit saved by a forward: coef (s, C), factor (s, s), lam > 0, all finite.
fn check_fit<T: Float>(fit: FitView<'_, T>, dims: &Dims, form: Form) -> Result<()> {
    let (s, label) = match form {
        Form::Dual => (dims.m, "(M, C)"),
        Form::Primal => (dims.d, "(d, C)"),
    };
    validate::shape("coef", fit.coef, label, s, dims.c)?;
    validate::finite("coef", fit.coef.data())?;
    let (rows, cols) = fit.factor.shape();
    if (rows, cols) != (s, s) {
        return Err(CoreError::Shape {
            arg: "factor",
            expected: format!("(s, s) = ({s}, {s})"),
            got: format!("({rows}, {cols})"),
        });
    }
    if !fit.factor.all_finite() {
        return Err(CoreError::NonFinite { arg: "factor" });
    }
    validate::positive("lam", fit.lam)
}

/// Validates partner options against N and n_keep.
fn check_partners(partners: Partners<'_>, n: usize, n_keep: usize, epsilon: f64) -> Result<()> {
    let needs_two = epsilon != 0.0 && !matches!(partners, Partners::Explicit(_));
    if needs_two && n_keep < 2 {
        return Err(CoreError::InvalidOption {
            arg: "discard",
            expected: "n_keep = N - floor(discard * N) >= 2 when epsilon != 0 and partners are \
                       'nearest' or 'offsets'"
                .to_owned(),
            got: format!("n_keep = {n_keep} (N = {n})"),
        });
    }
    match partners {
        Partners::Nearest => Ok(()),
        Partners::Offsets(offsets) => {
            validate::length("partner_index", offsets.len(), "(n_keep,)", n_keep)?;
            // A lone kept target can only be its own partner (offset 0).
            let low = i64::from(n_keep > 1);
            validate::indices_in("partner_index", offsets, low, n_keep as i64 - 1)
        }
        Partners::Explicit(index) => {
            validate::length("partner_index", index.len(), "(N,)", n)?;
            validate::indices_in("partner_index", index, 0, n as i64 - 1)
        }
    }
}

/// Forward of the ISA loss (contract steps 1-9): regression on the support set, residuals of
/// the targets, discard of the easiest, partners and the per-target ISA losses.
pub fn isa_krr_forward<T: Float>(
    support_features: MatView<'_, T>,
    support_labels: MatView<'_, T>,
    target_features: MatView<'_, T>,
    target_labels: MatView<'_, T>,
    partners: Partners<'_>,
    options: &IsaOptions,
) -> Result<IsaForward<T>> {
    let dims = check_support(support_features, support_labels)?;
    check_features("target_features", target_features, dims.d)?;
    let n = target_features.rows();
    validate::shape("target_labels", target_labels, "(N, C)", n, dims.c)?;
    validate::finite("target_labels", target_labels.data())?;
    validate::positive("reg", options.krr.reg)?;
    validate::discard(options.discard)?;
    validate::finite_option("epsilon", options.epsilon)?;
    let keep = n_keep(n, options.discard);
    check_partners(partners, n, keep, options.epsilon)?;

    let form = options.krr.solver.form(dims.m, dims.d);
    let fit = krr::fit(
        support_features,
        support_labels,
        form,
        options.krr.reg,
        options.krr.reg_mode,
        options.krr.solve_f64,
    )?;
    let mut residual = krr::predict(support_features, target_features, fit.coef.view(), form);
    for (a, &y) in residual.data.iter_mut().zip(target_labels.data()) {
        *a -= y;
    }
    let plain = isa::plain_losses(residual.view());
    let kept = isa::keep_hardest(&plain, keep);
    let partner = match partners {
        Partners::Nearest => partners::nearest_partners(target_features, &kept),
        Partners::Offsets(offsets) => isa::offset_partners(&kept, offsets),
        Partners::Explicit(index) => isa::explicit_partners(&kept, index),
    };
    let losses = isa::isa_losses(residual.view(), &kept, &partner, options.epsilon);
    Ok(IsaForward {
        losses,
        plain,
        kept: to_i64(&kept),
        partner: to_i64(&partner),
        residual,
        coef: fit.coef,
        factor: fit.factor,
        lam: fit.lam,
        escalations: fit.escalations,
    })
}

/// Backward of the ISA loss: (dF_S, dY_S, dF_T, dY_T) given dLoss/dlosses (`grad_losses`,
/// length N; entries of discarded targets are ignored). Reuses the forward's factor: one
/// triangular solve pair.
pub fn isa_krr_backward<T: Float>(
    support_features: MatView<'_, T>,
    support_labels: MatView<'_, T>,
    target_features: MatView<'_, T>,
    target_labels: MatView<'_, T>,
    grad_losses: &[T],
    saved: IsaSaved<'_, T>,
    options: &BackwardOptions,
) -> Result<IsaGrads<T>> {
    let dims = check_support(support_features, support_labels)?;
    check_features("target_features", target_features, dims.d)?;
    let n = target_features.rows();
    validate::shape("target_labels", target_labels, "(N, C)", n, dims.c)?;
    validate::finite("target_labels", target_labels.data())?;
    validate::length("grad_losses", grad_losses.len(), "(N,)", n)?;
    validate::finite("grad_losses", grad_losses)?;
    if saved.kept.is_empty() || saved.kept.len() > n {
        return Err(CoreError::Shape {
            arg: "kept",
            expected: format!("(n_keep,) with 1 <= n_keep <= N = {n}"),
            got: format!("({},)", saved.kept.len()),
        });
    }
    validate::indices_in("kept", saved.kept, 0, n as i64 - 1)?;
    validate::length(
        "partner",
        saved.partner.len(),
        "(n_keep,)",
        saved.kept.len(),
    )?;
    validate::indices_in("partner", saved.partner, 0, n as i64 - 1)?;
    validate::shape("residual", saved.residual, "(N, C)", n, dims.c)?;
    validate::finite("residual", saved.residual.data())?;
    let form = options.solver.form(dims.m, dims.d);
    check_fit(saved.fit, &dims, form)?;
    validate::finite_option("epsilon", options.epsilon)?;

    let kept = to_usize(saved.kept);
    let partner = to_usize(saved.partner);
    let grad_pred = isa::isa_grad(
        saved.residual,
        grad_losses,
        &kept,
        &partner,
        options.epsilon,
    );
    let grads = krr::backward(
        support_features,
        support_labels,
        target_features,
        grad_pred.view(),
        krr_saved(saved.fit, options.reg_mode, form),
        options.query_grad,
    );
    let mut target_labels_grad = grad_pred;
    for g in target_labels_grad.data.iter_mut() {
        *g = -*g;
    }
    Ok(IsaGrads {
        support_features: grads.support_features,
        support_labels: grads.support_labels,
        target_features: grads.query_features,
        target_labels: target_labels_grad,
    })
}

/// KRR predictions P for arbitrary query features (contract steps 1-4).
pub fn krr_predict_forward<T: Float>(
    support_features: MatView<'_, T>,
    support_labels: MatView<'_, T>,
    query_features: MatView<'_, T>,
    options: &KrrOptions,
) -> Result<KrrPredict<T>> {
    let dims = check_support(support_features, support_labels)?;
    check_features("query_features", query_features, dims.d)?;
    validate::positive("reg", options.reg)?;

    let form = options.solver.form(dims.m, dims.d);
    let fit = krr::fit(
        support_features,
        support_labels,
        form,
        options.reg,
        options.reg_mode,
        options.solve_f64,
    )?;
    let pred = krr::predict(support_features, query_features, fit.coef.view(), form);
    Ok(KrrPredict {
        pred,
        coef: fit.coef,
        factor: fit.factor,
        lam: fit.lam,
        escalations: fit.escalations,
    })
}

/// Backward of [`krr_predict_forward`]: (dF_S, dY_S, dF_Q) given dLoss/dP.
pub fn krr_predict_backward<T: Float>(
    support_features: MatView<'_, T>,
    support_labels: MatView<'_, T>,
    query_features: MatView<'_, T>,
    grad_pred: MatView<'_, T>,
    fit: FitView<'_, T>,
    options: &BackwardOptions,
) -> Result<KrrPredictGrads<T>> {
    let dims = check_support(support_features, support_labels)?;
    check_features("query_features", query_features, dims.d)?;
    let q = query_features.rows();
    validate::shape("grad_pred", grad_pred, "(Q, C)", q, dims.c)?;
    validate::finite("grad_pred", grad_pred.data())?;
    let form = options.solver.form(dims.m, dims.d);
    check_fit(fit, &dims, form)?;

    let grads = krr::backward(
        support_features,
        support_labels,
        query_features,
        grad_pred,
        krr_saved(fit, options.reg_mode, form),
        options.query_grad,
    );
    Ok(KrrPredictGrads {
        support_features: grads.support_features,
        support_labels: grads.support_labels,
        query_features: grads.query_features,
    })
}

/// Reduces per-target losses (discarded entries 0) over the `n_keep` kept targets:
/// `Mean` = sum / n_keep, `Sum`, or `None` (the losses themselves).
pub fn reduce<T: Float>(losses: &[T], n_keep: usize, reduction: Reduction) -> Result<Reduced<T>> {
    if losses.is_empty() {
        return Err(CoreError::Empty { arg: "losses" });
    }
    if n_keep == 0 || n_keep > losses.len() {
        return Err(CoreError::InvalidOption {
            arg: "n_keep",
            expected: format!("a value in [1, {}]", losses.len()),
            got: n_keep.to_string(),
        });
    }
    validate::finite("losses", losses)?;
    let total: f64 = losses.iter().map(|x| x.to_f64()).sum();
    Ok(match reduction {
        Reduction::Mean => Reduced::Scalar(T::from_f64(total / n_keep as f64)),
        Reduction::Sum => Reduced::Scalar(T::from_f64(total)),
        Reduction::None => Reduced::PerTarget(losses.to_vec()),
    })
}

fn krr_saved<'a, T: Float>(
    fit: FitView<'a, T>,
    reg_mode: RegMode,
    form: Form,
) -> krr::Saved<'a, T> {
    krr::Saved {
        coef: fit.coef,
        factor: fit.factor,
        lam: fit.lam,
        reg_mode,
        form,
    }
}

fn to_i64(indices: &[usize]) -> Vec<i64> {
    indices.iter().map(|&i| i as i64).collect()
}

/// Indices already validated to lie in [0, N).
fn to_usize(indices: &[i64]) -> Vec<usize> {
    indices.iter().map(|&i| i.unsigned_abs() as usize).collect()
}
