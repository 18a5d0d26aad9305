"""Argument checks for the public functions, run before any work.

Every error of the contract's table (``docs/loss.md``, "Errors") is raised here, with a message
that names the argument and says what was expected. The checks that read tensor values
(finiteness, explicit partner range) are separate: in deferred mode ``isa_distill.checks``
records them on the device instead (see there).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor

from ._torch_backend import kept_count
from .checks import MODES as CHECK_MODES

REG_MODES = ("trace", "absolute")
SOLVERS = ("auto", "dual", "primal")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "rust", "torch")
PARTNER_MODES = ("nearest", "random")
CLASS_REDUCTIONS = ("half_sum", "mean")
SOLVE_DTYPES = (torch.float64, torch.float32)
# float16/bfloat16 are computed in float32; float8 and other exotic floats have no kernels.
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
VMAP_UNSUPPORTED = (
    "isa_krr_loss and krr_predict do not support torch.vmap: the kept set and the partners "
    "couple every target of a batch, so problems cannot be batched along a new dimension; call "
    "them once per problem (e.g. in a Python loop) instead"
)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_real(name: str, value: object) -> float:
    """A finite real Python number (bools are refused: they are almost always a slip)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    # A comparison rather than math.isfinite: under torch.compile a float option whose value
    # changed between calls becomes symbolic, and a comparison is what Dynamo can guard on.
    if not -math.inf < value < math.inf:
        raise ValueError(f"{name} must be finite; got {value!r}")
    return value


def check_float_tensors(tensors: Mapping[str, object]) -> torch.dtype:
    """Same floating dtype, same device, 2-D. Returns the common dtype."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(tensor).__name__}")
        if torch._C._functorch.is_batchedtensor(tensor):
            raise NotImplementedError(VMAP_UNSUPPORTED)
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype; got {tensor.dtype}")
        if tensor.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{name} has dtype {tensor.dtype}; supported are float64, float32, float16 and "
                "bfloat16 (the last two are computed in float32)"
            )
    named = list(tensors.items())
    first_name, first = named[0]
    for name, tensor in named[1:]:
        if tensor.dtype != first.dtype:
            raise TypeError(
                f"{name} has dtype {tensor.dtype} but {first_name} has {first.dtype}; "
                "all feature and label tensors must share one dtype"
            )
        if tensor.device != first.device:
            raise ValueError(
                f"{name} is on {tensor.device} but {first_name} is on {first.device}; "
                "all tensors must be on one device"
            )
    for name, tensor in named:
        if tensor.dim() != 2:
            raise ValueError(f"{name} must be 2-D; got shape {tuple(tensor.shape)}")
    return first.dtype


def first_nonfinite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first tensor holding a NaN or Inf, or None. Eager: one host read.

    A NaN or Inf anywhere makes a tensor's sum non-finite, so one allocation-free reduction per
    tensor clears the common case (an element-wise isfinite allocates a mask as large as the
    tensor and took half of a backward's time); the exact scan runs only for tensors whose sum
    is not finite, which also happens when large finite values overflow it.
    """
    if not tensors:
        return None
    sums = torch.stack([tensor.sum().to(torch.float64) for tensor in tensors.values()])
    if bool(torch.isfinite(sums).all()):
        return None
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite(tensors: Mapping[str, Tensor]) -> None:
    """Eager checks only: it reads every element (and synchronises a GPU)."""
    name = first_nonfinite(tensors)
    if name is not None:
        raise ValueError(f"{name} contains NaN or Inf; all inputs must be finite")


def check_support(support_features: Tensor, support_labels: Tensor) -> tuple[int, int, int]:
    """Returns (M, d, C)."""
    m, d = support_features.shape
    if m == 0:
        raise ValueError("support_features must have at least one row (M >= 1); got M = 0")
    if d == 0:
        raise ValueError("support_features must have at least one column (d >= 1); got d = 0")
    if support_labels.shape[0] != m:
        raise ValueError(
            f"support_labels must have M = {m} rows like support_features; "
            f"got shape {tuple(support_labels.shape)}"
        )
    c = support_labels.shape[1]
    if c == 0:
        raise ValueError("support_labels must have at least one column (C >= 1); got C = 0")
    return m, d, c


def check_query(name: str, features: Tensor, d: int) -> int:
    """Returns N for a (N, d) query/target feature matrix."""
    n, d_query = features.shape
    if n == 0:
        raise ValueError(f"{name} must have at least one row (N >= 1); got N = 0")
    if d_query != d:
        raise ValueError(
            f"{name} must have d = {d} columns like support_features; got shape "
            f"{tuple(features.shape)}"
        )
    return n


def check_ridge_options(reg: object, reg_mode: object, solver: object) -> float:
    reg = check_real("reg", reg)
    if reg <= 0:
        raise ValueError(f"reg must be > 0; got {reg!r}")
    check_choice("reg_mode", reg_mode, REG_MODES)
    check_choice("solver", solver, SOLVERS)
    return reg


def check_backend(backend: object, solve_dtype: object, device: torch.device) -> None:
    check_choice("backend", backend, BACKENDS)
    if backend == "rust" and device.type != "cpu":
        raise ValueError(f"backend='rust' needs CPU tensors; got tensors on {device}")
    if solve_dtype not in SOLVE_DTYPES:
        raise ValueError(f"solve_dtype must be torch.float64 or torch.float32; got {solve_dtype!r}")


def check_partner(
    partner: object, *, n: int, n_keep: int, epsilon: float, device: torch.device
) -> None:
    if isinstance(partner, Tensor):
        if partner.dtype != torch.int64:
            raise ValueError(f"partner tensor must have dtype torch.int64; got {partner.dtype}")
        if tuple(partner.shape) != (n,):
            raise ValueError(
                f"partner tensor must have shape (N,) = ({n},); got {tuple(partner.shape)}"
            )
        if partner.device != device:
            raise ValueError(f"partner is on {partner.device} but the features are on {device}")
        return
    check_choice("partner", partner, PARTNER_MODES)
    if epsilon != 0 and n_keep < 2:
        raise ValueError(
            f"partner={partner!r} with epsilon != 0 needs at least 2 kept targets; "
            f"got n_keep = {n_keep} (N = {n}); lower discard or pass a larger batch"
        )


def partner_out_of_range(partner: Tensor, n: int) -> Tensor:
    """0-d bool tensor: does an explicit partner index leave [0, N)?"""
    return ((partner < 0) | (partner >= n)).any()


def check_partner_range(partner: Tensor, n: int) -> None:
    """Eager checks only (reads the indices)."""
    if bool(partner_out_of_range(partner, n)):
        raise ValueError(f"partner indices must lie in [0, N) = [0, {n})")


def check_generator(generator: object) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__}"
        )


def check_loss_options(
    *,
    epsilon: object,
    discard: object,
    reg: object,
    reg_mode: object,
    solver: object,
    reduction: object,
    class_reduction: object,
    checks: object,
) -> tuple[float, float, float]:
    """The options of isa_krr_loss that do not depend on its tensors (``ISAKRRLoss`` checks
    them when it is built). Returns (epsilon, discard, reg) as Python floats."""
    epsilon = check_real("epsilon", epsilon)
    discard = check_real("discard", discard)
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard must lie in [0, 1); got {discard!r}")
    reg = check_ridge_options(reg, reg_mode, solver)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("class_reduction", class_reduction, CLASS_REDUCTIONS)
    check_choice("checks", checks, CHECK_MODES)
    return epsilon, discard, reg


def check_loss_args(
    support_features: object,
    support_labels: object,
    target_features: object,
    target_labels: object,
    *,
    epsilon: object,
    discard: object,
    partner: object,
    reg: object,
    reg_mode: object,
    solver: object,
    reduction: object,
    class_reduction: object,
    backend: object,
    solve_dtype: object,
    generator: object,
    checks: object,
) -> tuple[float, float, float, int]:
    """The argument checks of isa_krr_loss (not the value checks: ``check_finite`` and
    ``check_partner_range``). Returns (epsilon, discard, reg, n_keep) as Python floats/int."""
    tensors = {
        "support_features": support_features,
        "support_labels": support_labels,
        "target_features": target_features,
        "target_labels": target_labels,
    }
    check_float_tensors(tensors)
    _, d, c = check_support(support_features, support_labels)
    n = check_query("target_features", target_features, d)
    if tuple(target_labels.shape) != (n, c):
        raise ValueError(
            f"target_labels must have shape (N, C) = ({n}, {c}); got {tuple(target_labels.shape)}"
        )
    epsilon, discard, reg = check_loss_options(
        epsilon=epsilon, discard=discard, reg=reg, reg_mode=reg_mode, solver=solver,
        reduction=reduction, class_reduction=class_reduction, checks=checks,
    )  # fmt: skip
    check_backend(backend, solve_dtype, support_features.device)
    check_generator(generator)
    n_keep = kept_count(n, discard)
    check_partner(partner, n=n, n_keep=n_keep, epsilon=epsilon, device=target_features.device)
    return epsilon, discard, reg, n_keep


def check_predict_args(
    support_features: object,
    support_labels: object,
    query_features: object,
    *,
    reg: object,
    reg_mode: object,
    solver: object,
    backend: object,
    solve_dtype: object,
    checks: object,
) -> float:
    """The argument checks of krr_predict (not ``check_finite``). Returns reg as a float."""
    tensors = {
        "support_features": support_features,
        "support_labels": support_labels,
        "query_features": query_features,
    }
    check_float_tensors(tensors)
    _, d, _ = check_support(support_features, support_labels)
    check_query("query_features", query_features, d)
    reg = check_ridge_options(reg, reg_mode, solver)
    check_choice("checks", checks, CHECK_MODES)
    check_backend(backend, solve_dtype, support_features.device)
    return reg
