"""The core op as ``torch.library`` custom ops, with fake (meta) kernels and autograd.

Four ops, two per public function (docs/design.md, "One op, two halves"):

- ``isa_distill::isa_krr_forward`` / ``isa_distill::isa_krr_backward``
- ``isa_distill::krr_predict_forward`` / ``isa_distill::krr_predict_backward``

The backend ("rust" or "torch") is an op argument; "auto" is resolved by ``functional``. Only
the loss (or the prediction) is differentiable: the other outputs are saved for the backward or
returned as detached information, and gradients arriving for them are ignored.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from . import _torch_backend, _validate
from ._torch_backend import kept_count, uses_primal
from ._validate import VMAP_UNSUPPORTED

_FORWARD_OUTPUTS = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]
_PREDICT_OUTPUTS = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
LOSS_ARGUMENTS = ("support_features", "support_labels", "target_features", "target_labels")
PREDICT_ARGUMENTS = ("support_features", "support_labels", "query_features")


def backend_module(backend: str) -> ModuleType:
    if backend == "rust":
        from . import _rust_backend  # imported lazily: the native module may be absent

        return _rust_backend
    return _torch_backend


# --------------------------------------------------------------------------------------------
# isa_krr
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("isa_distill::isa_krr_forward", mutates_args=())
def isa_krr_forward(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    partner_index: Tensor,
    partner_mode: str,
    reg: float,
    reg_mode: str,
    solver: str,
    discard: float,
    epsilon: float,
    solve_f64: bool,
    backend: str,
    check_gradients: bool,
) -> _FORWARD_OUTPUTS:
    """(losses, plain, kept, partner, residual, coef, factor, lam, status); lam is a 0-d float64,
    status a 0-d int32 (``isa_distill.checks.Status``). ``check_gradients`` only tells the
    backward to raise on non-finite gradients (eager checks)."""
    return tuple(
        backend_module(backend).forward(
            support_features,
            support_labels,
            target_features,
            target_labels,
            partner_index,
            partner_mode=partner_mode,
            reg=reg,
            reg_mode=reg_mode,
            solver=solver,
            discard=discard,
            epsilon=epsilon,
            solve_f64=solve_f64,
        )
    )


@isa_krr_forward.register_fake
def _isa_krr_forward_fake(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    partner_index: Tensor,
    partner_mode: str,
    reg: float,
    reg_mode: str,
    solver: str,
    discard: float,
    epsilon: float,
    solve_f64: bool,
    backend: str,
    check_gradients: bool,
) -> _FORWARD_OUTPUTS:
    m, d = support_features.shape
    n, c = target_labels.shape
    n_keep = kept_count(n, discard)
    s = d if uses_primal(solver, m, d) else m
    values = support_features.new_empty
    factor_dtype = torch.float64 if solve_f64 else support_features.dtype
    return (
        values(n),
        values(n),
        values(n_keep, dtype=torch.int64),
        values(n_keep, dtype=torch.int64),
        values(n, c),
        values(s, c),
        values(s, s, dtype=factor_dtype),
        values((), dtype=torch.float64),
        values((), dtype=torch.int32),
    )


@torch.library.custom_op("isa_distill::isa_krr_backward", mutates_args=())
def isa_krr_backward(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    grad_losses: Tensor,
    kept: Tensor,
    partner: Tensor,
    residual: Tensor,
    coef: Tensor,
    factor: Tensor,
    lam: Tensor,
    reg_mode: str,
    solver: str,
    epsilon: float,
    backend: str,
    query_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dF_S, dY_S, dF_T, dY_T); without ``query_grad``, dF_T has 0 rows (not computed)."""
    return tuple(
        backend_module(backend).backward(
            support_features,
            support_labels,
            target_features,
            target_labels,
            grad_losses,
            kept,
            partner,
            residual,
            coef,
            factor,
            lam=lam,
            reg_mode=reg_mode,
            solver=solver,
            epsilon=epsilon,
            query_grad=query_grad,
        )
    )


def _query_grad_like(query: Tensor, wanted: bool) -> Tensor:
    return torch.empty_like(query) if wanted else query.new_empty(0, query.shape[1])


@isa_krr_backward.register_fake
def _isa_krr_backward_fake(
    support_features: Tensor,
    support_labels: Tensor,
    target_features: Tensor,
    target_labels: Tensor,
    *others: object,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    query_grad = others[-1]
    return (torch.empty_like(support_features), torch.empty_like(support_labels),
            _query_grad_like(target_features, query_grad), torch.empty_like(target_labels))


def _isa_krr_setup_context(ctx, inputs, output) -> None:
    support_features, support_labels, target_features, target_labels = inputs[:4]
    reg_mode, solver, epsilon, backend = inputs[7], inputs[8], inputs[10], inputs[12]
    _, _, kept, partner, residual, coef, factor, lam, _ = output
    ctx.save_for_backward(
        support_features,
        support_labels,
        target_features,
        target_labels,
        kept,
        partner,
        residual,
        coef,
        factor,
        lam,
    )
    ctx.options = {"reg_mode": reg_mode, "solver": solver, "epsilon": epsilon, "backend": backend,
                   "check_gradients": inputs[13]}


def _check_gradients(grads: tuple[Tensor | None, ...], names: tuple[str, ...], where: str) -> None:
    """Eager checks: raise if a finite loss produced a NaN or Inf gradient (one host sync)."""
    name = _validate.first_nonfinite({n: g for n, g in zip(names, grads) if g is not None})
    if name is not None:
        raise FloatingPointError(
            f"{where}: the gradient of {name} is NaN or Inf although every input is finite: "
            "the backward overflowed; rescale the features or labels (e.g. normalise them)"
        )


def _isa_krr_backward_rule(ctx, grad_losses, *ignored_grads):
    n_inputs = 14
    if not any(ctx.needs_input_grad[:4]):
        return (None,) * n_inputs
    f_s, y_s, f_t, y_t, kept, partner, residual, coef, factor, lam = ctx.saved_tensors
    if grad_losses is None:
        grad_losses = torch.zeros_like(residual[:, 0])
    grads = isa_krr_backward(
        f_s,
        y_s,
        f_t,
        y_t,
        grad_losses,
        kept,
        partner,
        residual,
        coef,
        factor,
        lam,
        ctx.options["reg_mode"],
        ctx.options["solver"],
        ctx.options["epsilon"],
        ctx.options["backend"],
        ctx.needs_input_grad[2],
    )
    wanted = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:4]))
    if ctx.options["check_gradients"]:
        _check_gradients(wanted, LOSS_ARGUMENTS, "isa_krr_loss")
    return wanted + (None,) * (n_inputs - 4)


isa_krr_forward.register_autograd(_isa_krr_backward_rule, setup_context=_isa_krr_setup_context)


# --------------------------------------------------------------------------------------------
# krr_predict
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("isa_distill::krr_predict_forward", mutates_args=())
def krr_predict_forward(
    support_features: Tensor,
    support_labels: Tensor,
    query_features: Tensor,
    reg: float,
    reg_mode: str,
    solver: str,
    solve_f64: bool,
    backend: str,
    check_gradients: bool,
) -> _PREDICT_OUTPUTS:
    """(pred, coef, factor, lam, status); lam is a 0-d float64, status a 0-d int32."""
    return tuple(
        backend_module(backend).predict_forward(
            support_features,
            support_labels,
            query_features,
            reg=reg,
            reg_mode=reg_mode,
            solver=solver,
            solve_f64=solve_f64,
        )
    )


@krr_predict_forward.register_fake
def _krr_predict_forward_fake(
    support_features: Tensor,
    support_labels: Tensor,
    query_features: Tensor,
    reg: float,
    reg_mode: str,
    solver: str,
    solve_f64: bool,
    backend: str,
    check_gradients: bool,
) -> _PREDICT_OUTPUTS:
    m, d = support_features.shape
    n = query_features.shape[0]
    c = support_labels.shape[1]
    s = d if uses_primal(solver, m, d) else m
    values = support_features.new_empty
    factor_dtype = torch.float64 if solve_f64 else support_features.dtype
    return (
        values(n, c),
        values(s, c),
        values(s, s, dtype=factor_dtype),
        values((), dtype=torch.float64),
        values((), dtype=torch.int32),
    )


@torch.library.custom_op("isa_distill::krr_predict_backward", mutates_args=())
def krr_predict_backward(
    support_features: Tensor,
    support_labels: Tensor,
    query_features: Tensor,
    grad_pred: Tensor,
    coef: Tensor,
    factor: Tensor,
    lam: Tensor,
    reg_mode: str,
    solver: str,
    backend: str,
    query_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dF_S, dY_S, dF_Q); without ``query_grad``, dF_Q has 0 rows (not computed)."""
    return tuple(
        backend_module(backend).predict_backward(
            support_features,
            support_labels,
            query_features,
            grad_pred,
            coef,
            factor,
            lam=lam,
            reg_mode=reg_mode,
            solver=solver,
            query_grad=query_grad,
        )
    )


@krr_predict_backward.register_fake
def _krr_predict_backward_fake(
    support_features: Tensor, support_labels: Tensor, query_features: Tensor, *others: object
) -> tuple[Tensor, Tensor, Tensor]:
    query_grad = others[-1]
    return (torch.empty_like(support_features), torch.empty_like(support_labels),
            _query_grad_like(query_features, query_grad))


def _krr_predict_setup_context(ctx, inputs, output) -> None:
    support_features, support_labels, query_features = inputs[:3]
    reg_mode, solver, backend = inputs[4], inputs[5], inputs[7]
    _, coef, factor, lam, _ = output
    ctx.save_for_backward(support_features, support_labels, query_features, coef, factor, lam)
    ctx.options = {"reg_mode": reg_mode, "solver": solver, "backend": backend,
                   "check_gradients": inputs[8]}


def _krr_predict_backward_rule(ctx, grad_pred, *ignored_grads):
    n_inputs = 9
    if not any(ctx.needs_input_grad[:3]) or grad_pred is None:
        return (None,) * n_inputs
    f_s, y_s, f_q, coef, factor, lam = ctx.saved_tensors
    grads = krr_predict_backward(
        f_s,
        y_s,
        f_q,
        grad_pred,
        coef,
        factor,
        lam,
        ctx.options["reg_mode"],
        ctx.options["solver"],
        ctx.options["backend"],
        ctx.needs_input_grad[2],
    )
    wanted = tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:3]))
    if ctx.options["check_gradients"]:
        _check_gradients(wanted, PREDICT_ARGUMENTS, "krr_predict")
    return wanted + (None,) * (n_inputs - 3)


krr_predict_forward.register_autograd(
    _krr_predict_backward_rule, setup_context=_krr_predict_setup_context
)


# --------------------------------------------------------------------------------------------
# vmap: refused with a reason (the public functions refuse batched tensors before this)
# --------------------------------------------------------------------------------------------


def _refuse_vmap(info, in_dims, *args):
    raise NotImplementedError(VMAP_UNSUPPORTED)


isa_krr_forward.register_vmap(_refuse_vmap)
krr_predict_forward.register_vmap(_refuse_vmap)
