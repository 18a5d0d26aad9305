"""Type stub of the native module `isa_distill._core` (Rust, rust/py).

Float arrays are all float32 or all float64 (the dtype of `support_features`); outputs have that
dtype, except `factor` (float64 when `solve_f64`) and the int64 index arrays. See docs/design.md.
"""

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "parallelism",
    "use_openmp_runtime",
    "isa_krr_forward",
    "isa_krr_backward",
    "krr_predict_forward",
    "krr_predict_backward",
]

__version__: str

_Floats = npt.NDArray[np.floating]
_Indices = npt.NDArray[np.int64]

def parallelism(threads: int = 0) -> int:
    """The number of threads a call with ``threads`` computes with (0: all cores)."""

def use_openmp_runtime(path: str | None) -> bool:
    """Compute later calls on the threads of the OpenMP runtime loaded from ``path`` (torch's
    libgomp), or on rayon pools of the kernel's own (``None``). Returns whether a runtime is in
    use: false also when ``path`` is not loaded in this process or lacks the OpenMP entry
    points."""

def isa_krr_forward(
    support_features: _Floats,
    support_labels: _Floats,
    target_features: _Floats,
    target_labels: _Floats,
    partner_index: _Indices,
    *,
    partner_mode: str = "nearest",
    reg: float = 1e-6,
    reg_mode: str = "trace",
    solver: str = "auto",
    discard: float = 0.2,
    epsilon: float = 1.0,
    solve_f64: bool = True,
    threads: int = 0,
) -> tuple[_Floats, _Floats, _Indices, _Indices, _Floats, _Floats, _Floats, float]:
    """Returns (losses, plain, kept, partner, residual, coef, factor, lam)."""

def isa_krr_backward(
    support_features: _Floats,
    support_labels: _Floats,
    target_features: _Floats,
    target_labels: _Floats,
    grad_losses: _Floats,
    kept: _Indices,
    partner: _Indices,
    residual: _Floats,
    coef: _Floats,
    factor: _Floats,
    *,
    lam: float,
    reg_mode: str = "trace",
    solver: str = "auto",
    epsilon: float = 1.0,
    threads: int = 0,
    query_grad: bool = True,
) -> tuple[_Floats, _Floats, _Floats, _Floats]:
    """Returns (d_support_features, d_support_labels, d_target_features, d_target_labels)."""

def krr_predict_forward(
    support_features: _Floats,
    support_labels: _Floats,
    query_features: _Floats,
    *,
    reg: float = 1e-6,
    reg_mode: str = "trace",
    solver: str = "auto",
    solve_f64: bool = True,
    threads: int = 0,
) -> tuple[_Floats, _Floats, _Floats, float]:
    """Returns (pred, coef, factor, lam)."""

def krr_predict_backward(
    support_features: _Floats,
    support_labels: _Floats,
    query_features: _Floats,
    grad_pred: _Floats,
    coef: _Floats,
    factor: _Floats,
    *,
    lam: float,
    reg_mode: str = "trace",
    solver: str = "auto",
    threads: int = 0,
    query_grad: bool = True,
) -> tuple[_Floats, _Floats, _Floats]:
    """Returns (d_support_features, d_support_labels, d_query_features)."""
