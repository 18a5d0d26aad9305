"""The public core functions: ``isa_krr_loss`` and ``krr_predict``.

This layer validates every argument, applies the dtype policy (float16/bfloat16 are computed in
float32 and cast back), resolves ``backend="auto"``, draws the random partners and reduces the
per-target losses. The work itself is the ``isa_distill::*`` custom ops of ``autograd``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _validate
from .autograd import isa_krr_forward, krr_predict_forward

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_EMPTY_INDEX = torch.empty(0, dtype=torch.int64)


@dataclass(frozen=True)
class ISAInfo:
    """What the loss decided, returned by ``isa_krr_loss(..., return_info=True)``.

    Attributes:
        kept: (n_keep,) int64, ascending indices of the kept (hardest) targets.
        partner: (n_keep,) int64, partner j(i) of ``kept[r]``, an index into the full batch.
        plain: (N,) plain losses l_i = 1/2 ||P_i - Y_T,i||^2 (detached), the hardness ranking.
    """

    kept: Tensor
    partner: Tensor
    plain: Tensor


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
    return "nearest", _EMPTY_INDEX.to(device)


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
    backend: str = "auto",
    solve_dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
    return_info: bool = False,
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
    6. ``reduction``: "mean" over kept targets, "sum", or "none" (an (N,) tensor with 0 for
       discarded targets).

    Gradients are exact for all four tensors (including the path through lam in trace mode);
    the kept set and the partners are piecewise constant.

    Args:
        solver: "dual" solves the M x M system, "primal" the d x d one
            (F_S^T F_S + lam I)^-1 F_S^T Y_S; "auto" picks the smaller.
        backend: "rust" (CPU), "torch" (any device) or "auto" (rust on CPU when built).
        solve_dtype: dtype of the factorization and triangular solves; torch.float32 solves in
            the compute dtype instead of float64 (inputs are never downcast).
        return_info: also return an :class:`ISAInfo` with the kept set, partners and plain
            losses.

    Raises:
        ValueError: inconsistent shapes, empty inputs, options out of range, non-finite inputs,
            tensors on different devices.
        TypeError: non-floating or mixed dtypes.
        NotPositiveDefiniteError: the ridge system stayed indefinite after raising lam 1000x.

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
        backend=backend,
        solve_dtype=solve_dtype,
        generator=generator,
    )
    device = support_features.device
    backend = resolve_backend(backend, device)
    partner_mode, partner_index = _partner_arguments(
        partner,
        target_features.shape[0],
        n_keep,
        needed=epsilon != 0 or return_info,
        generator=generator,
        device=device,
    )
    input_dtype = support_features.dtype
    work_dtype = compute_dtype(input_dtype)
    losses, plain, kept, partners, *_ = isa_krr_forward(
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
    )
    if reduction == "mean":
        loss = losses.sum() / n_keep
    elif reduction == "sum":
        loss = losses.sum()
    else:
        loss = losses
    loss = loss.to(input_dtype)
    if not return_info:
        return loss
    return loss, ISAInfo(kept=kept, partner=partners, plain=plain.detach().to(input_dtype))


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
) -> Tensor:
    """Kernel ridge regression predictions P = F_Q F_S^T (K + lam I)^-1 Y_S, shape (N, C).

    K = F_S F_S^T and lam follow the same rule as :func:`isa_krr_loss`; ``solver="primal"``
    computes the same P as F_Q (F_S^T F_S + lam I)^-1 F_S^T Y_S. Differentiable with respect to
    all three tensors. Validation, dtype policy and backends are those of :func:`isa_krr_loss`.
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
    )
    backend = resolve_backend(backend, support_features.device)
    input_dtype = support_features.dtype
    work_dtype = compute_dtype(input_dtype)
    pred, *_ = krr_predict_forward(
        support_features.to(work_dtype),
        support_labels.to(work_dtype),
        query_features.to(work_dtype),
        reg,
        reg_mode,
        solver,
        solve_dtype == torch.float64,
        backend,
    )
    return pred.to(input_dtype)
