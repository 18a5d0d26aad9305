"""A slow oracle written straight from the contract (``docs/loss.md``).

For tests only. It shares no code with the backends: a general linear solve instead of a
Cholesky factor, explicit loops for the ranking and the partner search, and plain autograd for
the gradients. It computes in ``dtype`` (float64 by default) and returns that dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference_ridge(f_s: Tensor, reg: float, reg_mode: str) -> Tensor:
    """lam = reg * trace(F_S F_S^T) / M, or reg (also when the trace is 0)."""
    trace = torch.trace(f_s @ f_s.T)
    if reg_mode == "trace" and trace > 0:
        return reg * trace / f_s.shape[0]
    return torch.tensor(reg, dtype=f_s.dtype)


def reference_predict(
    f_s: Tensor,
    y_s: Tensor,
    f_q: Tensor,
    *,
    reg: float = 1e-6,
    reg_mode: str = "trace",
    form: str = "dual",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """P = F_Q F_S^T (K + lam I_M)^-1 Y_S (dual) or F_Q (F_S^T F_S + lam I_d)^-1 F_S^T Y_S."""
    f_s, y_s, f_q = (t.to(dtype) for t in (f_s, y_s, f_q))
    m, d = f_s.shape
    lam = reference_ridge(f_s, reg, reg_mode)
    if form == "dual":
        w = torch.linalg.solve(f_s @ f_s.T + lam * torch.eye(m, dtype=dtype), y_s)
        return f_q @ f_s.T @ w
    beta = torch.linalg.solve(f_s.T @ f_s + lam * torch.eye(d, dtype=dtype), f_s.T @ y_s)
    return f_q @ beta


def cosine(u: Tensor, v: Tensor) -> float:
    """<u, v> / (||u|| ||v||) in float64, and 0 when either vector is zero. Each vector is
    divided by its largest magnitude first, so tiny or huge values neither under- nor overflow."""
    u, v = u.detach().to(torch.float64), v.detach().to(torch.float64)
    if not u.any() or not v.any():
        return 0.0
    u, v = u / u.abs().max(), v / v.abs().max()
    return float(u @ v) / (float(u.norm()) * float(v.norm()))


def reference_partners(
    f_t: Tensor,
    kept: list[int],
    partner: str | Tensor,
    generator: torch.Generator | None,
) -> list[int]:
    """Partner j(i) for each kept i, by the contract's rules."""
    n_keep = len(kept)
    if isinstance(partner, Tensor):
        return [int(partner[i]) for i in kept]
    if partner == "random":
        # docs/design.md: offsets in [1, n_keep - 1] drawn on the CPU from the generator.
        offsets = torch.randint(1, n_keep, (n_keep,), generator=generator, dtype=torch.int64)
        return [kept[(r + int(offsets[r])) % n_keep] for r in range(n_keep)]
    partners = []
    for i in kept:
        others = [j for j in kept if j != i]
        if not others:
            partners.append(i)
            continue
        cosines = {j: cosine(f_t[i], f_t[j]) for j in others}
        best = max(cosines.values())
        # Similarities within rounding (1e-12) of the best are ties: the lowest index wins.
        partners.append(min(j for j in others if cosines[j] >= best - 1e-12))
    return partners


def reference_isa_krr_loss(
    f_s: Tensor,
    y_s: Tensor,
    f_t: Tensor,
    y_t: Tensor,
    *,
    epsilon: float = 1.0,
    discard: float = 0.2,
    partner: str | Tensor = "nearest",
    reg: float = 1e-6,
    reg_mode: str = "trace",
    reduction: str = "mean",
    class_reduction: str = "half_sum",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, dict[str, list]]:
    """The loss and {"kept", "partner", "plain"} (plain as floats), by the contract."""
    f_s, y_s, f_t, y_t = (t.to(dtype) for t in (f_s, y_s, f_t, y_t))
    n = f_t.shape[0]
    residual = reference_predict(f_s, y_s, f_t, reg=reg, reg_mode=reg_mode, dtype=dtype) - y_t
    plain = [0.5 * residual[i].square().sum() for i in range(n)]

    n_keep = n - math.floor(discard * n)
    hardest_first = sorted(range(n), key=lambda i: (-float(plain[i].detach()), i))
    kept = sorted(hardest_first[:n_keep])
    partners = reference_partners(f_t, kept, partner, generator)

    losses = [torch.zeros((), dtype=dtype) for _ in range(n)]
    num_classes = y_t.shape[1]
    for i, j in zip(kept, partners):
        a = residual[i]
        b = residual[j] - residual[i]
        per_class_sum = a @ a + epsilon * (a @ b) + epsilon**2 / 3 * (b @ b)
        if class_reduction == "half_sum":
            losses[i] = 0.5 * per_class_sum
        else:  # "mean": over classes, no 1/2
            losses[i] = per_class_sum / num_classes
    stacked = torch.stack(losses)
    if reduction == "mean":
        loss = stacked.sum() / n_keep
    elif reduction == "sum":
        loss = stacked.sum()
    else:
        loss = stacked
    info = {"kept": kept, "partner": partners, "plain": [float(p.detach()) for p in plain]}
    return loss, info
