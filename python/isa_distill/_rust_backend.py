"""Adapter from torch CPU tensors to the native kernel ``isa_distill._core`` and back.

Same functions, arguments and outputs as ``_torch_backend`` (see docs/design.md). Tensors cross
as numpy arrays without copies (``Tensor.numpy()`` / ``torch.from_numpy``); the bindings read
them in place while the GIL is released. Every call computes with ``torch.get_num_threads()``
threads, so ``torch.set_num_threads`` limits the kernel too, and, where torch runs on GNU
OpenMP, on the threads of torch's own OpenMP team (``_torch_openmp_runtime``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import _core

#: Set to ``0`` to compute on rayon threads of the kernel's own instead of torch's OpenMP team.
OPENMP_TEAM_ENV = "ISA_DISTILL_OPENMP_TEAM"


def _torch_openmp_runtime() -> str | None:
    """The loaded GNU OpenMP runtime (libgomp) that torch's CPU ops run on, or None.

    torch's OpenMP workers spin for milliseconds after each op; a kernel on threads of its own
    would share the cores with them, so the kernel borrows the team instead (see
    ``rust/py/src/openmp.rs``). Only a runtime torch itself uses qualifies: the one inside
    torch's install (pip wheels), else the only libgomp in the process; never on platforms
    without ``/proc/self/maps`` or when ATen's parallel backend is not OpenMP.
    """
    if os.environ.get(OPENMP_TEAM_ENV, "1").strip() == "0":
        return None
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    fields = (line.split(maxsplit=5) for line in maps.splitlines())
    loaded = {Path(f[5]) for f in fields if len(f) == 6 and Path(f[5]).name.startswith("libgomp")}
    package = Path(torch.__file__).resolve().parent
    torch_dirs = (package, package.parent / "torch.libs")  # where pip wheels keep their libgomp
    bundled = [path for path in loaded
               if any(path.resolve().is_relative_to(folder) for folder in torch_dirs)]
    candidates = bundled or list(loaded)
    return str(candidates[0]) if len(candidates) == 1 else None


def _borrow_torch_openmp_team() -> str | None:
    runtime = _torch_openmp_runtime()
    return runtime if runtime is not None and _core.use_openmp_runtime(runtime) else None


#: The OpenMP runtime whose team the kernel computes on, or None (rayon threads of its own).
OPENMP_TEAM_RUNTIME = _borrow_torch_openmp_team()


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
