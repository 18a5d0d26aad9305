"""Adapter from torch CPU tensors to the native kernel ``isa_distill._core`` and back.

Same functions, arguments and outputs as ``_torch_backend`` (see docs/design.md). Tensors cross
as numpy arrays without copies (``Tensor.numpy()`` / ``torch.from_numpy``); the bindings copy
them into owned buffers before releasing the GIL. Every call computes with
``torch.get_num_threads()`` threads, so ``torch.set_num_threads`` limits the kernel too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import _core


def _to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def _to_torch(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _lam_tensor(lam: float) -> Tensor:
    return torch.tensor(float(lam), dtype=torch.float64)


def _ok_status() -> Tensor:
    """The native kernel raises and warns itself, so nothing is left for a status to report."""
    return torch.zeros((), dtype=torch.int32)


def forward(
    f_s: Tensor,
    y_s: Tensor,
    f_t: Tensor,
    y_t: Tensor,
    partner_index: Tensor,
    **options: object,
) -> tuple[Tensor, ...]:
    """(losses, plain, kept, partner, residual, coef, factor, lam, status)."""
    *arrays, lam = _core.isa_krr_forward(
        _to_numpy(f_s),
        _to_numpy(y_s),
        _to_numpy(f_t),
        _to_numpy(y_t),
        _to_numpy(partner_index),
        threads=torch.get_num_threads(),
        **options,
    )
    return (*map(_to_torch, arrays), _lam_tensor(lam), _ok_status())


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
    **options: object,
) -> tuple[Tensor, ...]:
    """(dF_S, dY_S, dF_T, dY_T)."""
    tensors = (f_s, y_s, f_t, y_t, grad_losses, kept, partner, residual, coef, factor)
    grads = _core.isa_krr_backward(*map(_to_numpy, tensors), lam=float(lam),
                                   threads=torch.get_num_threads(), **options)
    return tuple(map(_to_torch, grads))


def predict_forward(f_s: Tensor, y_s: Tensor, f_q: Tensor, **options: object) -> tuple[Tensor, ...]:
    """(pred, coef, factor, lam, status)."""
    *arrays, lam = _core.krr_predict_forward(
        _to_numpy(f_s), _to_numpy(y_s), _to_numpy(f_q), threads=torch.get_num_threads(),
        **options,
    )
    return (*map(_to_torch, arrays), _lam_tensor(lam), _ok_status())


def predict_backward(
    f_s: Tensor,
    y_s: Tensor,
    f_q: Tensor,
    grad_pred: Tensor,
    coef: Tensor,
    factor: Tensor,
    *,
    lam: Tensor,
    **options: object,
) -> tuple[Tensor, ...]:
    """(dF_S, dY_S, dF_Q)."""
    tensors = (f_s, y_s, f_q, grad_pred, coef, factor)
    grads = _core.krr_predict_backward(*map(_to_numpy, tensors), lam=float(lam),
                                       threads=torch.get_num_threads(), **options)
    return tuple(map(_to_torch, grads))
