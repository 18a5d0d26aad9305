//! Kernel ridge regression: ridge, Cholesky factor with escalation, solves, predictions and the
//! analytic backward that reuses the factor.
//!
//! Dual form:   W = (K + lam I_M)^-1 Y_S with K = F_S F_S^T, predictions P = F_Q F_S^T W.
//! Primal form: beta = (F_S^T F_S + lam I_d)^-1 F_S^T Y_S, predictions P = F_Q beta.
//! Both give the same P. Predictions are evaluated as F_Q (F_S^T W), which avoids forming the
//! (N x M) cross kernel. Products run in the input type with faer's global parallelism; the
//! factorization and the triangular solves in the type of the factor (f64 by default).

use faer::linalg::matmul::triangular::BlockStructure;
use faer::linalg::triangular_solve::{
    solve_lower_triangular_in_place, solve_upper_triangular_in_place,
};
use faer::{Accum, MatRef, Side};

use crate::error::{CoreError, Result};
use crate::matrix::{all_finite, Factor, FactorView, Float, MatView, RowMajor};
use crate::options::{Form, RegMode};

/// Escalations tried after the first factorization fails: lam * 10^k for these k.
const ESCALATION_POWERS: [i32; 3] = [1, 2, 3];

/// The parallelism of the products: the threads of the rayon pool this call runs in (the
/// bindings run each call in a pool of the caller's size; elsewhere rayon's global pool).
pub(crate) fn par() -> faer::Par {
    match rayon::current_num_threads() {
        0 | 1 => faer::Par::Seq,
        threads => faer::Par::rayon(threads),
    }
}

/// lhs * rhs as a new row-major matrix.
pub(crate) fn product<T: Float>(lhs: MatRef<'_, T>, rhs: MatRef<'_, T>) -> RowMajor<T> {
    let mut out = RowMajor::zeros(lhs.nrows(), rhs.ncols());
    faer::linalg::matmul::matmul(
        out.faer_mut(),
        Accum::Replace,
        lhs,
        rhs,
        T::from_f64(1.0),
        par(),
    );
    out
}

/// lhs lhs^T. Only the lower triangle is multiplied (half the flops of a general product);
/// the upper one is mirrored from it, so the result is exactly symmetric.
pub(crate) fn gram<T: Float>(lhs: MatRef<'_, T>) -> RowMajor<T> {
    let n = lhs.nrows();
    let mut out = RowMajor::zeros(n, n);
    faer::linalg::matmul::triangular::matmul(
        out.faer_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        lhs,
        BlockStructure::Rectangular,
        lhs.transpose(),
        BlockStructure::Rectangular,
        T::from_f64(1.0),
        par(),
    );
    for i in 1..n {
        for j in 0..i {
            out.data[j * n + i] = out.data[i * n + j];
        }
    }
    out
}

/// trace(K) = ||F_S||_F^2, accumulated in f64 (the same in both forms, forward and backward).
pub(crate) fn gram_trace<T: Float>(support: MatView<'_, T>) -> f64 {
    support
        .data()
        .iter()
        .map(|&x| x.to_f64() * x.to_f64())
        .sum()
}

/// The result of fitting the ridge regression on the support set.
pub(crate) struct Fit<T> {
    /// W (M x C) in the dual form, beta (d x C) in the primal form.
    pub coef: RowMajor<T>,
    pub factor: Factor<T>,
    /// The ridge actually used.
    pub lam: f64,
    /// Every escalated ridge tried, in order (empty when the first factorization succeeded).
    pub escalations: Vec<f64>,
}

/// Builds the ridge system of `form`, factors it (escalating lam if needed) and solves it.
pub(crate) fn fit<T: Float>(
    support: MatView<'_, T>,
    labels: MatView<'_, T>,
    form: Form,
    reg: f64,
    reg_mode: RegMode,
    solve_f64: bool,
) -> Result<Fit<T>> {
    let fs = support.faer();
    let (gram, rhs) = match form {
        Form::Dual => (gram(fs), RowMajor::from_faer(labels.faer())),
        Form::Primal => (gram(fs.transpose()), product(fs.transpose(), labels.faer())),
    };
    if !all_finite(&gram.data) {
        return Err(CoreError::Overflow {
            what: "the kernel F_S F_S^T",
        });
    }
    let lam = reg_mode.lam(reg, gram_trace(support), support.rows());
    if solve_f64 {
        let solved = factor_and_solve(gram.cast::<f64>(), rhs.cast::<f64>(), lam)?;
        Ok(Fit {
            coef: solved.solution.cast(),
            factor: Factor::F64(solved.factor),
            lam: solved.lam,
            escalations: solved.escalations,
        })
    } else {
        let solved = factor_and_solve(gram, rhs, lam)?;
        Ok(Fit {
            coef: solved.solution,
            factor: Factor::Input(solved.factor),
            lam: solved.lam,
            escalations: solved.escalations,
        })
    }
}

struct Solved<S> {
    factor: RowMajor<S>,
    solution: RowMajor<S>,
    lam: f64,
    escalations: Vec<f64>,
}

/// Factors gram + lam I, retrying with lam * 10^k (k = 1, 2, 3), then solves for `rhs`.
fn factor_and_solve<S: Float>(gram: RowMajor<S>, rhs: RowMajor<S>, lam: f64) -> Result<Solved<S>> {
    let mut escalations = Vec::new();
    let mut tried = lam;
    let mut factor = cholesky(&gram, tried);
    for power in ESCALATION_POWERS {
        if factor.is_some() {
            break;
        }
        tried = lam * 10f64.powi(power);
        escalations.push(tried);
        factor = cholesky(&gram, tried);
    }
    let Some(factor) = factor else {
        return Err(CoreError::NotPositiveDefinite {
            lam: tried,
            escalations,
        });
    };
    let mut solution = rhs;
    solve_pair(factor.faer(), &mut solution);
    Ok(Solved {
        factor,
        solution,
        lam: tried,
        escalations,
    })
}

/// Lower Cholesky factor of gram + lam I (upper triangle zero), or None if it is not
/// numerically positive definite.
fn cholesky<S: Float>(gram: &RowMajor<S>, lam: f64) -> Option<RowMajor<S>> {
    let mut system = gram.clone();
    let ridge = S::from_f64(lam);
    for i in 0..system.rows {
        system.data[i * system.cols + i] += ridge;
    }
    let llt = system.faer().llt(Side::Lower).ok()?;
    let factor = RowMajor::from_faer(llt.L());
    let healthy = all_finite(&factor.data)
        && (0..factor.rows).all(|i| factor.data[i * factor.cols + i] > S::from_f64(0.0));
    healthy.then_some(factor)
}

/// rhs <- (L L^T)^-1 rhs: one forward and one backward triangular solve.
fn solve_pair<S: Float>(lower: MatRef<'_, S>, rhs: &mut RowMajor<S>) {
    solve_lower_triangular_in_place(lower, rhs.faer_mut(), par());
    solve_upper_triangular_in_place(lower.transpose(), rhs.faer_mut(), par());
}

/// (L L^T)^-1 rhs in the precision of the factor, returned in the input type.
fn solve_with<T: Float>(factor: FactorView<'_, T>, rhs: RowMajor<T>) -> RowMajor<T> {
    match factor {
        FactorView::F64(lower) => {
            let mut wide = rhs.cast::<f64>();
            solve_pair(lower.faer(), &mut wide);
            wide.cast()
        }
        FactorView::Input(lower) => {
            let mut out = rhs;
            solve_pair(lower.faer(), &mut out);
            out
        }
    }
}

/// Predictions P = F_Q F_S^T W (dual) or F_Q beta (primal).
pub(crate) fn predict<T: Float>(
    support: MatView<'_, T>,
    query: MatView<'_, T>,
    coef: MatView<'_, T>,
    form: Form,
) -> RowMajor<T> {
    match form {
        Form::Dual => {
            let primal_coef = product(support.faer().transpose(), coef.faer());
            product(query.faer(), primal_coef.faer())
        }
        Form::Primal => product(query.faer(), coef.faer()),
    }
}

/// Gradients of a loss through P with respect to the regression inputs.
pub(crate) struct KrrGrads<T> {
    pub support_features: RowMajor<T>,
    pub support_labels: RowMajor<T>,
    pub query_features: RowMajor<T>,
}

/// The saved state of a fit that the backward reuses.
#[derive(Clone, Copy)]
pub(crate) struct Saved<'a, T> {
    pub coef: MatView<'a, T>,
    pub factor: FactorView<'a, T>,
    pub lam: f64,
    pub reg_mode: RegMode,
    pub form: Form,
}

/// Backpropagates `grad` = dLoss/dP through the predictions, with one triangular solve pair.
/// Without `query_grad` the query gradient is returned with 0 rows (its product skipped).
///
/// Dual (W = coef, Z = F_Q^T G, V = (K + lam I)^-1 F_S Z):
///   dY_S = V, dF_Q = G W^T F_S,
///   dF_S = -V (W^T F_S) + W (Z^T - V^T F_S) + [trace] (2 lam / trace K)(-sum V*W) F_S,
/// which is -(V W^T + W V^T) F_S + W G^T F_Q + ... regrouped to avoid M x M x d products.
/// Primal (beta = coef, U = H^-1 Z):
///   dY_S = F_S U, dF_Q = G beta^T,
///   dF_S = Y_S U^T - (F_S U) beta^T - (F_S beta) U^T + [trace] (2 lam / trace K)(-sum U*beta) F_S.
pub(crate) fn backward<T: Float>(
    support: MatView<'_, T>,
    labels: MatView<'_, T>,
    query: MatView<'_, T>,
    grad: MatView<'_, T>,
    saved: Saved<'_, T>,
    query_grad: bool,
) -> KrrGrads<T> {
    let fs = support.faer();
    let coef = saved.coef.faer();
    let z = product(query.faer().transpose(), grad.faer());
    let one = T::from_f64(1.0);
    let (support_labels, query_features, mut support_features, dloss_dlam) = match saved.form {
        Form::Dual => {
            let v = solve_with(saved.factor, product(fs, z.faer()));
            let w_t_fs = product(coef.transpose(), fs);
            // Z^T - V^T F_S (C x d).
            let mut zt_minus_r = product(v.faer().transpose(), fs);
            for (r, &zt) in zt_minus_r.data.iter_mut().zip(transposed(&z).iter()) {
                *r = zt - *r;
            }
            let query_features = if query_grad {
                product(grad.faer(), w_t_fs.faer())
            } else {
                RowMajor::zeros(0, fs.ncols())
            };
            let mut d_fs = product(coef, zt_minus_r.faer());
            matmul_into(&mut d_fs, Accum::Add, v.faer(), w_t_fs.faer(), -one);
            let dloss_dlam = -frobenius_dot(&v, saved.coef);
            (v, query_features, d_fs, dloss_dlam)
        }
        Form::Primal => {
            let u = solve_with(saved.factor, z);
            let d_ys = product(fs, u.faer());
            let fs_beta = product(fs, coef);
            let query_features = if query_grad {
                product(grad.faer(), coef.transpose())
            } else {
                RowMajor::zeros(0, fs.ncols())
            };
            let mut d_fs = product(labels.faer(), u.faer().transpose());
            matmul_into(&mut d_fs, Accum::Add, d_ys.faer(), coef.transpose(), -one);
            matmul_into(
                &mut d_fs,
                Accum::Add,
                fs_beta.faer(),
                u.faer().transpose(),
                -one,
            );
            let dloss_dlam = -frobenius_dot(&u, saved.coef);
            (d_ys, query_features, d_fs, dloss_dlam)
        }
    };
    if saved.reg_mode == RegMode::Trace {
        let trace = gram_trace(support);
        if trace > 0.0 {
            // lam = reg * trace(K) / M, so d lam / d F_S = (2 lam / trace K) F_S.
            let scale = T::from_f64(2.0 * saved.lam / trace * dloss_dlam);
            for (g, &x) in support_features.data.iter_mut().zip(support.data()) {
                *g += scale * x;
            }
        }
    }
    KrrGrads {
        support_features,
        support_labels,
        query_features,
    }
}

/// dst = alpha * lhs * rhs (Replace) or dst += alpha * lhs * rhs (Add).
fn matmul_into<T: Float>(
    dst: &mut RowMajor<T>,
    accum: Accum,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
) {
    faer::linalg::matmul::matmul(dst.faer_mut(), accum, lhs, rhs, alpha, par());
}

/// sum(a * b) in f64 (dLoss/dlam = -sum(solved * coef), since dLoss/dH = -solved coef^T).
fn frobenius_dot<T: Float>(a: &RowMajor<T>, b: MatView<'_, T>) -> f64 {
    a.data
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| x.to_f64() * y.to_f64())
        .sum()
}

/// The row-major data of m^T.
fn transposed<T: Float>(m: &RowMajor<T>) -> Vec<T> {
    RowMajor::from_faer(m.faer().transpose()).data
}

#[cfg(test)]
mod tests {
    use super::{gram, product};
    use crate::matrix::RowMajor;

    /// A deterministic non-symmetric pattern, so a wrong mirror or a missed block shows.
    fn pattern(rows: usize, cols: usize) -> RowMajor<f64> {
        let data = (0..rows * cols)
            .map(|k| ((k * 7919 % 113) as f64 - 56.0) / 17.0)
            .collect();
        RowMajor { data, rows, cols }
    }

    #[test]
    fn gram_matches_the_general_product_and_is_symmetric() {
        for (rows, cols) in [(1, 3), (7, 5), (130, 9), (67, 300)] {
            let a = pattern(rows, cols);
            let fast = gram(a.faer());
            let full = product(a.faer(), a.faer().transpose());
            for i in 0..rows {
                for j in 0..rows {
                    let got = fast.data[i * rows + j];
                    assert_eq!(got, fast.data[j * rows + i], "not symmetric at ({i}, {j})");
                    let want = full.data[i * rows + j];
                    assert!(
                        (got - want).abs() <= 1e-9 * (1.0 + want.abs()),
                        "({i}, {j})"
                    );
                }
            }
        }
    }
}
