"""The core op in torch ops, for any device (cuSOLVER / cuBLAS on CUDA).

This module mirrors the Rust kernel function by function so the two can be read side by side:
the "krr part" follows ``rust/core/src/krr.rs`` (ridge, factor, solves, KRR backward) and the
"isa part" follows ``rust/core/src/isa.rs`` (plain losses, discard, partners, ISA loss, ISA
backward). The exact mathematics is in ``docs/loss.md``; the argument and output lists in
``docs/design.md``. Inputs arrive validated; nothing here checks arguments, and nothing here
reads a tensor's value on the host: every decision that depends on values (the ridge
escalation, the kept set, the partners) is made on the device, so a CUDA call never waits for
the GPU and can be captured in a CUDA graph. Problems are reported in the ``status`` output
(``isa_distill.checks``).

Dtype policy: the large matrix products run in the input dtype; the ridge system, its Cholesky
factor and the triangular solves run in float64 when ``solve_f64`` is set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import checks

RIDGE_RETRIES = 3
"""How many times the ridge is multiplied by 10 before giving up on the factorization."""

NEAREST_TIE_TOL = 1e-12
"""Cosine similarities (in [-1, 1], computed in float64) this close to the best are ties."""

PARTNER_PANEL_ELEMENTS = 1 << 22
"""Similarities held at once by the partner search (32 MiB of float64)."""


# --------------------------------------------------------------------------------------------
# krr part (mirrors krr.rs)
# --------------------------------------------------------------------------------------------


def uses_primal(solver: str, m: int, d: int) -> bool:
    """``"auto"`` solves the smaller system: the d x d primal one when M > d."""
    return solver == "primal" or (solver == "auto" and m > d)


def kept_count(n: int, discard: float) -> int:
    """n_keep = N - floor(discard * N)."""
    return n - math.floor(discard * n)


def gram_trace(f_s: Tensor) -> Tensor:
    """trace(K) = ||F_S||_F^2, accumulated in float64 from the features (as krr.rs does)."""
    return f_s.to(torch.float64).square().sum()


def ridge(trace: Tensor, m: int, reg: float, reg_mode: str) -> Tensor:
    """lam = reg * trace(K) / M in trace mode, lam = reg in absolute mode (0-d float64).

    All-zero support features (trace 0) would give lam = 0 however often it is escalated; the
    trace rule then falls back to lam = reg (K = 0, so any positive ridge gives the exact
    answer: predictions of zero)."""
    if reg_mode == "trace":
        return torch.where(trace > 0, trace * (reg / m), reg)
    return torch.full((), reg, dtype=torch.float64, device=trace.device)


def factor_with_escalation(system: Tensor, lam: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lower Cholesky factor of ``system + lam' I`` for the first lam' of lam * 10^k, k = 0..3,
    that is positive definite. Returns (factor, lam', status).

    The four candidates are factored in one batched call and the first success is picked on
    the device, so choosing needs no host synchronisation (docs/loss.md, "Checks"); the price
    is four factorizations of an s x s system instead of one. The status holds the escalation
    count and NOT_POSITIVE_DEFINITE when even lam * 1000 fails (the factor is then garbage).
    """
    size = system.shape[0]
    scales = torch.logspace(0, RIDGE_RETRIES, RIDGE_RETRIES + 1, dtype=system.dtype,
                            device=system.device)
    candidates = lam * scales
    eye = torch.eye(size, dtype=system.dtype, device=system.device)
    factors, info = torch.linalg.cholesky_ex(system + candidates[:, None, None] * eye)
    ok = info == 0
    # argmax of a bool vector is its first True; with none, the last candidate is reported.
    escalations = torch.where(ok.any(), ok.to(torch.uint8).argmax(), RIDGE_RETRIES)
    index = escalations.reshape(1)
    status = checks.escalation_status(escalations) | checks.flag(
        ~ok.any(), checks.Status.NOT_POSITIVE_DEFINITE
    )
    # LAPACK hands back column-major factors; the backward wants a row-major one.
    factor = factors.index_select(0, index)[0].contiguous()
    return factor, candidates.index_select(0, index)[0], status


def solve_with_factor(rhs: Tensor, chol: Tensor) -> Tensor:
    """(L L^T)^-1 rhs in the factor's dtype, returned row-major in the dtype of ``rhs``."""
    return torch.cholesky_solve(rhs.to(chol.dtype), chol).to(rhs.dtype).contiguous()


def krr_fit(
    f_s: Tensor, y_s: Tensor, *, reg: float, reg_mode: str, solver: str, solve_f64: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Solve the ridge system; returns (coef, factor, lam, status), lam a 0-d float64.

    dual:   W    = (K + lam I_M)^-1 Y_S,              K = F_S F_S^T
    primal: beta = (H + lam I_d)^-1 F_S^T Y_S,        H = F_S^T F_S
    trace(K) = trace(H), so the ridge rule is the same for both forms.
    """
    m, d = f_s.shape
    primal = uses_primal(solver, m, d)
    solve_dtype = torch.float64 if solve_f64 else f_s.dtype
    gram = f_s.T @ f_s if primal else f_s @ f_s.T
    overflow = checks.flag(~torch.isfinite(gram).all(), checks.Status.KERNEL_OVERFLOW)
    lam = ridge(gram_trace(f_s), m, reg, reg_mode)
    chol, lam, status = factor_with_escalation(gram.to(solve_dtype), lam.to(solve_dtype))
    rhs = f_s.T @ y_s if primal else y_s
    return solve_with_factor(rhs, chol), chol, lam.to(torch.float64), status | overflow


def krr_apply(f_s: Tensor, coef: Tensor, f_q: Tensor, *, primal: bool) -> Tensor:
    """Predictions P = F_Q beta (primal) or F_Q (F_S^T W) (dual)."""
    return f_q @ coef if primal else f_q @ (f_s.T @ coef)


def krr_backward(
    f_s: Tensor,
    y_s: Tensor,
    f_q: Tensor,
    grad_pred: Tensor,
    coef: Tensor,
    chol: Tensor,
    lam: Tensor,
    *,
    reg_mode: str,
    solver: str,
    query_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """G = dLoss/dP -> (dF_S, dY_S, dF_Q), reusing the forward's factor (one solve pair).
    Without ``query_grad``, dF_Q comes back with 0 rows (distillation's targets are data).

    dual:   dW = F_S F_Q^T G, V = (K + lam I)^-1 dW, dY_S = V,
            dF_S = W G^T F_Q - (V W^T + W V^T) F_S,  dF_Q = G W^T F_S,  dLoss/dlam = -<V, W>
    primal: U = (H + lam I)^-1 F_Q^T G, dY_S = F_S U, dF_Q = G beta^T,
            dF_S = Y_S U^T - F_S (U beta^T + beta U^T),            dLoss/dlam = -<U, beta>
    trace mode adds (2 lam / trace K) * dLoss/dlam * F_S, which also covers an escalated lam.
    """
    m, d = f_s.shape
    if uses_primal(solver, m, d):
        beta = coef
        u = solve_with_factor(f_q.T @ grad_pred, chol)
        d_ys = f_s @ u
        d_fq = grad_pred @ beta.T if query_grad else f_q.new_empty(0, d)
        d_fs = y_s @ u.T - f_s @ (u @ beta.T + beta @ u.T)
        lam_sensitivity = -(u * beta).sum()
    else:
        w = coef
        v = solve_with_factor(f_s @ (f_q.T @ grad_pred), chol)
        d_ys = v
        w_fs = w.T @ f_s
        d_fq = grad_pred @ w_fs if query_grad else f_q.new_empty(0, d)
        d_fs = w @ (grad_pred.T @ f_q) - v @ w_fs - w @ (v.T @ f_s)
        lam_sensitivity = -(v * w).sum()
    if reg_mode == "trace":
        # d lam / d F_S = (2 lam / trace K) F_S; zero where the rule fell back to lam = reg.
        trace = gram_trace(f_s)
        scale = torch.where(trace > 0, 2.0 * lam / trace, 0.0) * lam_sensitivity
        d_fs = d_fs + scale.to(f_s.dtype) * f_s
    return d_fs, d_ys, d_fq


# --------------------------------------------------------------------------------------------
# isa part (mirrors isa.rs)
# --------------------------------------------------------------------------------------------


def plain_losses(residual: Tensor) -> Tensor:
    """l_i = 1/2 ||A_i||^2, the hardness ranking."""
    return 0.5 * residual.square().sum(dim=1)


def keep_hardest(plain: Tensor, discard: float) -> Tensor:
    """Ascending indices of the n_keep largest l_i; among equal l_i the lower index is kept."""
    n_keep = kept_count(plain.shape[0], discard)
    # A stable descending sort keeps equal values in index order, so lower indices come first.
    order = torch.sort(plain, descending=True, stable=True).indices
    return torch.sort(order[:n_keep]).values


def unit_rows(features: Tensor) -> Tensor:
    """The rows scaled to unit length in float64, without under- or overflow (zero rows stay
    zero): divide by the largest magnitude first, then by the norm."""
    unit = features.to(torch.float64, copy=True)  # the one n x d float64 buffer, scaled in place
    largest = unit.abs().amax(dim=1, keepdim=True)
    unit.div_(torch.where(largest > 0, largest, 1))
    norms = torch.linalg.vector_norm(unit, dim=1, keepdim=True)
    return unit.div_(torch.where(norms > 0, norms, 1))


def nearest_partners(f_t: Tensor, kept: Tensor) -> Tensor:
    """For each kept i, the other kept target of largest cosine similarity (the rule of
    ``partners.rs``): float64 similarities of rows scaled to unit length, values within
    ``NEAREST_TIE_TOL`` of a row's best are ties and the lowest index wins, and a zero vector
    has similarity 0 with everything.

    The similarities are computed in panels of rows, so memory grows with
    ``PARTNER_PANEL_ELEMENTS``, not with n_keep^2.
    """
    unit = unit_rows(f_t[kept])
    n = unit.shape[0]
    panel = max(1, min(n, PARTNER_PANEL_ELEMENTS // max(n, 1)))
    best_columns = []
    for start in range(0, n, panel):
        rows = unit[start:start + panel]
        similarity = rows @ unit.T
        own = torch.arange(rows.shape[0], device=unit.device)
        similarity[own, own + start] = -math.inf  # never one's own partner
        best = similarity.max(dim=1, keepdim=True).values
        is_tie = (similarity >= best - NEAREST_TIE_TOL).to(torch.uint8)
        # argmax returns the first maximum; kept is ascending, so that is the lowest index.
        best_columns.append(is_tie.argmax(dim=1))
    return kept[torch.cat(best_columns)]


def offset_partners(kept: Tensor, offsets: Tensor) -> Tensor:
    """partner of kept[r] = kept[(r + offsets[r]) % n_keep], offsets in [1, n_keep - 1]."""
    n_keep = kept.shape[0]
    rank = torch.arange(n_keep, device=kept.device)
    return kept[(rank + offsets) % n_keep]


def select_partners(f_t: Tensor, kept: Tensor, partner_index: Tensor, partner_mode: str) -> Tensor:
    if partner_mode == "nearest":
        return nearest_partners(f_t, kept)
    if partner_mode == "offsets":
        return offset_partners(kept, partner_index)
    return partner_index[kept]  # "explicit"


def isa_losses(residual: Tensor, kept: Tensor, partner: Tensor, epsilon: float) -> Tensor:
    """L_i = 1/2 (||A_i||^2 + eps <A_i, B_i> + eps^2/3 ||B_i||^2), B_i = A_j - A_i, kept i."""
    a = residual[kept]
    b = residual[partner] - a
    return 0.5 * (
        a.square().sum(1) + epsilon * (a * b).sum(1) + (epsilon * epsilon / 3.0) * b.square().sum(1)
    )


def isa_backward(
    residual: Tensor, kept: Tensor, partner: Tensor, grad_losses: Tensor, epsilon: float
) -> Tensor:
    """G = dLoss/dP = dLoss/dA from dLoss/dL (entries of discarded targets ignored).

    dL_i/dA_i = A_i + eps/2 (B_i - A_i) - eps^2/3 B_i,   dL_i/dA_j = eps/2 A_i + eps^2/3 B_i.
    """
    a = residual[kept]
    b = residual[partner] - a
    weight = grad_losses[kept].unsqueeze(1)
    to_self = a + (epsilon / 2.0) * (b - a) - (epsilon * epsilon / 3.0) * b
    to_partner = (epsilon / 2.0) * a + (epsilon * epsilon / 3.0) * b
    grad = torch.zeros_like(residual)
    grad.index_add_(0, kept, weight * to_self)
    grad.index_add_(0, partner, weight * to_partner)
    return grad


# --------------------------------------------------------------------------------------------
# the op's two halves (docs/design.md)
# --------------------------------------------------------------------------------------------


def forward(
    f_s: Tensor,
    y_s: Tensor,
    f_t: Tensor,
    y_t: Tensor,
    partner_index: Tensor,
    *,
    partner_mode: str,
    reg: float,
    reg_mode: str,
    solver: str,
    discard: float,
    epsilon: float,
    solve_f64: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(losses, plain, kept, partner, residual, coef, factor, lam, status) as in docs/design.md."""
    m, d = f_s.shape
    coef, chol, lam, status = krr_fit(
        f_s, y_s, reg=reg, reg_mode=reg_mode, solver=solver, solve_f64=solve_f64
    )
    residual = krr_apply(f_s, coef, f_t, primal=uses_primal(solver, m, d)) - y_t
    plain = plain_losses(residual)
    kept = keep_hardest(plain, discard)
    partner = select_partners(f_t, kept, partner_index, partner_mode)
    losses = torch.zeros_like(plain)
    losses[kept] = isa_losses(residual, kept, partner, epsilon)
    return losses, plain, kept, partner, residual, coef, chol, lam, status


def backward(
    f_s: Tensor,
    y_s: Tensor,
    f_t: Tensor,
    y_t: Tensor,
    grad_losses: Tensor,
    kept: Tensor,
    partner: Tensor,
    residual: Tensor,
    coef: Tensor,
    factor: Tensor,
    *,
    lam: Tensor,
    reg_mode: str,
    solver: str,
    epsilon: float,
    query_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dF_S, dY_S, dF_T, dY_T): the isa part gives G = dLoss/dP, the krr part the rest."""
    grad_pred = isa_backward(residual, kept, partner, grad_losses, epsilon)
    d_fs, d_ys, d_ft = krr_backward(
        f_s, y_s, f_t, grad_pred, coef, factor, lam, reg_mode=reg_mode, solver=solver,
        query_grad=query_grad,
    )
    return d_fs, d_ys, d_ft, -grad_pred


def predict_forward(
    f_s: Tensor,
    y_s: Tensor,
    f_q: Tensor,
    *,
    reg: float,
    reg_mode: str,
    solver: str,
    solve_f64: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(pred, coef, factor, lam, status) for arbitrary query features."""
    m, d = f_s.shape
    coef, chol, lam, status = krr_fit(
        f_s, y_s, reg=reg, reg_mode=reg_mode, solver=solver, solve_f64=solve_f64
    )
    pred = krr_apply(f_s, coef, f_q, primal=uses_primal(solver, m, d))
    return pred, coef, chol, lam, status


def predict_backward(
    f_s: Tensor,
    y_s: Tensor,
    f_q: Tensor,
    grad_pred: Tensor,
    coef: Tensor,
    factor: Tensor,
    *,
    lam: Tensor,
    reg_mode: str,
    solver: str,
    query_grad: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dF_S, dY_S, dF_Q)."""
    return krr_backward(
        f_s, y_s, f_q, grad_pred, coef, factor, lam, reg_mode=reg_mode, solver=solver,
        query_grad=query_grad,
    )
