"""The public core functions: ``isa_krr_loss`` and ``krr_predict``.

This layer validates every argument, applies the dtype policy (float16/bfloat16 are computed in
float32 and cast back), resolves ``backend="auto"``, draws the random partners, runs the value
checks eagerly or deferred (``isa_distill.checks``) and reduces the per-target losses. The work
itself is the ``isa_distill::*`` custom ops of ``autograd``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _validate
from . import checks as _checks
from .autograd import LOSS_ARGUMENTS, PREDICT_ARGUMENTS, isa_krr_forward, krr_predict_forward

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ISAInfo:
    """What the loss decided, returned by ``isa_krr_loss(..., return_info=True)``.

    Attributes:
        kept: (n_keep,) int64, ascending indices of the kept (hardest) targets.
        partner: (n_keep,) int64, partner j(i) of ``kept[r]``, an index into the full batch.
        plain: (N,) plain losses l_i = 1/2 ||P_i - Y_T,i||^2 (detached), the hardness ranking.
        status: 0-d int32 on the tensors' device, bits of :class:`isa_distill.checks.Status`.
            With ``checks="deferred"`` it holds what the checks found (pass it to
            :func:`isa_distill.checks.raise_for_status`); after eager checks it is 0.
    """

    kept: Tensor
    partner: Tensor
    plain: Tensor
    status: Tensor


def native_available() -> bool:
    """Whether the Rust extension ``isa_distill._core`` is built."""
    return importlib.util.find_spec("isa_distill._core") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """ "auto" -> "rust" for CPU tensors (when the native module is built), else "torch"."""
    if backend == "auto":
        return "rust" if device.type == "cpu" and native_available() else "torch"
    if backend == "rust" and not native_available():
        raise RuntimeError(
            "backend='rust' needs the native module isa_distill._core, which is not built; "
            "run `maturin develop` or pass backend='torch'"
        )
    return backend


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _partner_arguments(
    partner: str | Tensor,
    n: int,
    n_keep: int,
    *,
    needed: bool,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[str, Tensor]:
    """(partner_mode, partner_index) as the op takes them (docs/design.md).

    When the partners are not ``needed`` (epsilon = 0 and no info requested) every target is
    its own partner, which skips the O(N^2 d) nearest search.
    """
    if isinstance(partner, Tensor):
        return "explicit", partner
    if not needed:
        return "explicit", torch.arange(n, device=device)
    if partner == "random" and n_keep >= 2:
        # partner of kept[r] is kept[(r + offset) % n_keep]: uniform over the other kept targets.
        draw_device = generator.device if generator is not None else torch.device("cpu")
        offsets = torch.randint(
            1, n_keep, (n_keep,), generator=generator, device=draw_device, dtype=torch.int64
        )
        return "offsets", offsets.to(device)
    # "nearest", or "random" with a single kept target (only valid with epsilon = 0, where the
    # partner does not matter): the nearest search then pairs the target with itself.
    return "nearest", torch.empty(0, dtype=torch.int64, device=device)


def isa_krr_loss(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    *,
    epsilon: float = 1.0,
    discard: float = 0.2,
    partner: str | Tensor = "nearest",
    reg: float = 1e-6,
    reg_mode: str = "trace",
    solver: str = "auto",
    reduction: str = "mean",
    class_reduction: str = "half_sum",
    backend: str = "auto",
    solve_dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    return_info: bool = False,
    checks: str = "auto",
) -> Tensor | tuple[Tensor, ISAInfo]:
    r"""Kernel ridge regression meta-loss with Infinite Semantic Augmentation (ISA).

    With support features F_S (M, d) and labels Y_S (M, C), target features F_T (N, d) and labels
    Y_T (N, C):

    1. K = F_S F_S^T, ridge lam = reg * trace(K) / M (``reg_mode="trace"``) or reg
       (``"absolute"``); W = (K + lam I)^-1 Y_S.
    2. Predictions P = F_T F_S^T W, residuals A = P - Y_T, plain losses l_i = 1/2 ||A_i||^2.
    3. Keep the n_keep = N - floor(discard * N) targets with the largest l_i (ties: lower index).
    4. Pair each kept i with a partner j (``partner``): the kept target of largest cosine
       similarity of features (``"nearest"``), a uniform random other kept target (``"random"``,
       drawn from ``generator``), or ``partner[i]`` for an int64 tensor of shape (N,).
    5. With B_i = A_j - A_i and eps = ``epsilon``,

       L_i = 1/2 (||A_i||^2 + eps <A_i, B_i> + eps^2 / 3 ||B_i||^2)
           = (1 / eps) \int_0^eps 1/2 ||A_i + a B_i||^2 da,

       the mean loss over the segment of virtual samples from (z_i, y_i) toward (z_j, y_j).
       eps < 0 extrapolates away from the partner; eps = 0 (with discard = 0) is FRePo's loss.
    6. ``class_reduction="mean"`` scales every L_i by 2 / C: the mean over classes of
       ||A_i||^2 + eps <A_i, B_i> + eps^2/3 ||B_i||^2, which is what the paper's public code
       computes (with eps < 0: it integrates away from the partner). The default "half_sum"
       is the paper's Eq. 5.
    7. ``reduction``: "mean" over kept targets, "sum", or "none" (an (N,) tensor with 0 for
       discarded targets).

    Gradients are exact for all four tensors (including the path through lam in trace mode);
    the kept set and the partners are piecewise constant.

    Args:
        solver: "dual" solves the M x M system, "primal" the d x d one
            (F_S^T F_S + lam I)^-1 F_S^T Y_S; "auto" picks the smaller.
        backend: "rust" (CPU), "torch" (any device) or "auto" (rust on CPU when built).
        solve_dtype: dtype of the factorization and triangular solves; torch.float32 solves in
            the compute dtype instead of float64 (inputs are never downcast).
        return_info: also return an :class:`ISAInfo` with the kept set, partners, plain
            losses and the status of the value checks.
        checks: "eager" raises before returning (the default outside ``torch.compile``);
            "deferred" never synchronises with the GPU and records problems in
            ``ISAInfo.status`` (see :mod:`isa_distill.checks`); "auto" picks "deferred" while
            ``torch.compile`` traces the call and for meta tensors (no values to check).

    Raises:
        ValueError: inconsistent shapes, empty inputs, options out of range, non-finite inputs,
            tensors on different devices.
        TypeError: non-floating, unsupported (float8) or mixed dtypes.
        NotPositiveDefiniteError: the ridge system stayed indefinite after raising lam 1000x.
        FloatingPointError: finite inputs gave a non-finite loss or gradient (overflow).

    Float16 and bfloat16 inputs are computed in float32 and the result cast back. If the
    factorization fails, lam is multiplied by 10 (up to three times) with a RuntimeWarning.
    """
    epsilon, discard, reg, n_keep = _validate.check_loss_args(
        support_features,
        support_labels,
        target_features,
        target_labels,
        epsilon=epsilon,
        discard=discard,
        partner=partner,
        reg=reg,
        reg_mode=reg_mode,
        solver=solver,
        reduction=reduction,
        class_reduction=class_reduction,
        backend=backend,
        solve_dtype=solve_dtype,
        generator=generator,
        checks=checks,
    )
    tensors = dict(zip(LOSS_ARGUMENTS, (support_features, support_labels, target_features,
                                        target_labels)))
    n = target_features.shape[0]
    device = support_features.device
    mode = _checks.resolve_mode(checks, device)
    backend = resolve_backend(backend, device)
    if mode == "eager":
        if backend != "rust":  # the native kernel checks its inputs itself, with this message
            _validate.check_finite(tensors)
        if isinstance(partner, Tensor):
            _validate.check_partner_range(partner, n)
        input_status = None
    else:
        input_status = _checks.nonfinite_status(tensors)
        if isinstance(partner, Tensor):
            out_of_range = _validate.partner_out_of_range(partner, n)
            input_status = input_status | _checks.flag(
                out_of_range, _checks.Status.PARTNER_OUT_OF_RANGE
            )
            partner = partner.clamp(0, n - 1)  # garbage in, but never an index outside the batch
    partner_mode, partner_index = _partner_arguments(
        partner,
        n,
        n_keep,
        needed=epsilon != 0 or return_info,
        generator=generator,
        device=device,
    )
    input_dtype = support_features.dtype
    work_dtype = compute_dtype(input_dtype)
    losses, plain, kept, partners, _, _, _, lam, status = isa_krr_forward(
        support_features.to(work_dtype),
        support_labels.to(work_dtype),
        target_features.to(work_dtype),
        target_labels.to(work_dtype),
        partner_index,
        partner_mode,
        reg,
        reg_mode,
        solver,
        discard,
        epsilon,
        solve_dtype == torch.float64,
        backend,
        mode == "eager",
    )
    if class_reduction == "mean":
        losses = losses * (2.0 / support_labels.shape[1])
    if reduction == "mean":
        loss = losses.sum() / n_keep
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses
    status = _finish_checks(status, input_status, loss, mode, lam, LOSS_ARGUMENTS,
                            "isa_krr_loss", report=not return_info)
    loss = loss.to(input_dtype)
    if not return_info:
        return loss
    info = ISAInfo(kept=kept, partner=partners, plain=plain.detach().to(input_dtype),
                   status=status)
    return loss, info


def _finish_checks(
    status: Tensor,
    input_status: Tensor | None,
    result: Tensor,
    mode: str,
    lam: Tensor,
    names: tuple[str, ...],
    where: str,
    *,
    report: bool,
) -> Tensor:
    """Add the result's finiteness to the op's status; eager: raise/warn now (one host sync)
    and return 0; deferred: return the status, or assert on the device when nobody reads it."""
    status = status.to(result.device) | _checks.result_status(result.detach())
    if input_status is not None:
        status = status | input_status
    if mode == "eager":
        _checks.raise_for_status(status, names=names, lam=lam.detach(), where=where)
        return torch.zeros_like(status)
    if report:
        _checks.assert_no_error(status, where)
    return status


def krr_predict(
    support_features: Tensor,
    support_labels: Tensor,
    query_features: Tensor,
    *,
    reg: float = 1e-6,
    reg_mode: str = "trace",
    solver: str = "auto",
    backend: str = "auto",
    solve_dtype: torch.dtype = torch.float64,
    checks: str = "auto",
) -> Tensor:
    """Kernel ridge regression predictions P = F_Q F_S^T (K + lam I)^-1 Y_S, shape (N, C).

    K = F_S F_S^T and lam follow the same rule as :func:`isa_krr_loss`; ``solver="primal"``
    computes the same P as F_Q (F_S^T F_S + lam I)^-1 F_S^T Y_S. Differentiable with respect to
    all three tensors. Validation, dtype policy, backends and ``checks`` are those of
    :func:`isa_krr_loss`; a deferred check that fails trips a device-side assertion.
    """
    reg = _validate.check_predict_args(
        support_features,
        support_labels,
        query_features,
        reg=reg,
        reg_mode=reg_mode,
        solver=solver,
        backend=backend,
        solve_dtype=solve_dtype,
        checks=checks,
    )
    tensors = dict(zip(PREDICT_ARGUMENTS, (support_features, support_labels, query_features)))
    mode = _checks.resolve_mode(checks, support_features.device)
    backend = resolve_backend(backend, support_features.device)
    if mode == "eager":
        if backend != "rust":  # the native kernel checks its inputs itself, with this message
            _validate.check_finite(tensors)
        input_status = None
    else:
        input_status = _checks.nonfinite_status(tensors)
    input_dtype = support_features.dtype
    work_dtype = compute_dtype(input_dtype)
    pred, _, _, lam, status = krr_predict_forward(
        support_features.to(work_dtype),
        support_labels.to(work_dtype),
        query_features.to(work_dtype),
        reg,
        reg_mode,
        solver,
        solve_dtype == torch.float64,
        backend,
        mode == "eager",
    )
    _finish_checks(status, input_status, pred, mode, lam, PREDICT_ARGUMENTS, "krr_predict",
                   report=True)
    return pred.to(input_dtype)
