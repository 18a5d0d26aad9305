//! The ISA part of the loss: plain losses, discard of the easiest targets, partners, the
//! closed-form ISA loss and its gradient with respect to the predictions.
//!
//! With residuals A = P - Y_T, partner j = j(i) and B_i = A_j - A_i, the loss of kept target i is
//!     L_i = 1/2 (||A_i||^2 + eps <A_i, B_i> + eps^2 / 3 ||B_i||^2),
//! the mean of 1/2 ||A_i + a B_i||^2 over a in [0, eps].

use crate::matrix::{Float, MatView, RowMajor};

/// l_i = 1/2 ||A_i||^2 for every target.
pub(crate) fn plain_losses<T: Float>(residual: MatView<'_, T>) -> Vec<T> {
    let half = T::from_f64(0.5);
    (0..residual.rows())
        .map(|i| half * dot(residual.row(i), residual.row(i)))
        .collect()
}

/// Indices (ascending) of the `n_keep` largest plain losses; on ties the lower index is kept.
pub(crate) fn keep_hardest<T: Float>(plain: &[T], n_keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..plain.len()).collect();
    order.sort_by(|&a, &b| {
        plain[b]
            .to_f64()
            .total_cmp(&plain[a].to_f64())
            .then(a.cmp(&b))
    });
    order.truncate(n_keep);
    order.sort_unstable();
    order
}

/// Partner of kept[r] is kept[(r + offsets[r]) % n_keep] (offsets already validated).
pub(crate) fn offset_partners(kept: &[usize], offsets: &[i64]) -> Vec<usize> {
    let n = kept.len();
    kept.iter()
        .enumerate()
        .zip(offsets)
        .map(|((r, _), &o)| kept[(r + o.unsigned_abs() as usize) % n])
        .collect()
}

/// Partner of kept[r] is index[kept[r]] (index already validated to lie in [0, N)).
pub(crate) fn explicit_partners(kept: &[usize], index: &[i64]) -> Vec<usize> {
    kept.iter()
        .map(|&i| index[i].unsigned_abs() as usize)
        .collect()
}

/// L_i for kept targets, 0 for discarded ones (length N).
pub(crate) fn isa_losses<T: Float>(
    residual: MatView<'_, T>,
    kept: &[usize],
    partner: &[usize],
    epsilon: f64,
) -> Vec<T> {
    let eps = T::from_f64(epsilon);
    let eps2_3 = T::from_f64(epsilon * epsilon / 3.0);
    let half = T::from_f64(0.5);
    let mut losses = vec![T::from_f64(0.0); residual.rows()];
    for (&i, &j) in kept.iter().zip(partner) {
        let (a, aj) = (residual.row(i), residual.row(j));
        let (mut aa, mut ab, mut bb) = (T::from_f64(0.0), T::from_f64(0.0), T::from_f64(0.0));
        for (&x, &y) in a.iter().zip(aj) {
            let b = y - x;
            aa += x * x;
            ab += x * b;
            bb += b * b;
        }
        losses[i] = half * (aa + eps * ab + eps2_3 * bb);
    }
    losses
}

/// G = dLoss/dP = dLoss/dA given dLoss/dL_i (`grad_losses`, length N; discarded entries
/// ignored). Per kept i with partner j and weight g_i:
///     dL_i/dA_i = A_i + eps/2 (B_i - A_i) - eps^2/3 B_i,   dL_i/dA_j = eps/2 A_i + eps^2/3 B_i.
pub(crate) fn isa_grad<T: Float>(
    residual: MatView<'_, T>,
    grad_losses: &[T],
    kept: &[usize],
    partner: &[usize],
    epsilon: f64,
) -> RowMajor<T> {
    let c = residual.cols();
    let half_eps = T::from_f64(epsilon / 2.0);
    let eps2_3 = T::from_f64(epsilon * epsilon / 3.0);
    let one = T::from_f64(1.0);
    let mut grad = RowMajor::zeros(residual.rows(), c);
    for (&i, &j) in kept.iter().zip(partner) {
        let g = grad_losses[i];
        let (a, aj) = (residual.row(i), residual.row(j));
        for k in 0..c {
            let b = aj[k] - a[k];
            let to_partner = half_eps * a[k] + eps2_3 * b;
            grad.data[i * c + k] += g * ((one - half_eps) * a[k] + half_eps * b - eps2_3 * b);
            grad.data[j * c + k] += g * to_partner;
        }
    }
    grad
}

fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    a.iter()
        .zip(b)
        .fold(T::from_f64(0.0), |acc, (&x, &y)| acc + x * y)
}
