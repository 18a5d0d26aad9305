"""What a user would write without this library: the comparators of the benchmarks and ablations.

Both functions compute the same quantity as `isa_krr_loss` (mean over kept targets) in plain
torch, with autograd differentiating through `torch.linalg.solve`:

- `naive_isa_krr_loss`: the closed-form ISA term, written directly.
- `monte_carlo_isa_loss`: the integral over interpolations estimated by sampling S mixing weights
  per kept target and evaluating the KRR loss on each interpolated feature batch (input mixup done
  in feature space). It converges to the closed form at rate 1/sqrt(S).

The discard rule and the nearest-partner search are written the obvious way (`topk`, a masked
cosine-similarity `argmax`); on inputs without ties they select what the library selects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ridge_weights(fs: torch.Tensor, ys: torch.Tensor, reg: float, reg_mode: str) -> torch.Tensor:
    """W = (K + lam I)^-1 Y_S with torch.linalg.solve (autograd differentiates the solve)."""
    gram = fs @ fs.T
    lam = reg * torch.trace(gram) / fs.shape[0] if reg_mode == "trace" else reg
    eye = torch.eye(fs.shape[0], dtype=fs.dtype, device=fs.device)
    return torch.linalg.solve(gram + lam * eye, ys)


def _kept_and_partners(
    residual: torch.Tensor, ft: torch.Tensor, discard: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hardest (1 - discard) fraction of the batch, each paired with its cosine-nearest kept peer."""
    n = residual.shape[0]
    n_keep = n - int(discard * n)
    with torch.no_grad():
        plain = 0.5 * residual.pow(2).sum(dim=1)
        kept = torch.topk(plain, n_keep).indices.sort().values
        unit = F.normalize(ft[kept], dim=1)
        similarity = unit @ unit.T
        similarity.fill_diagonal_(-float("inf"))
        partner = kept[similarity.argmax(dim=1)]
    return kept, partner


def naive_isa_krr_loss(
    fs: torch.Tensor,
    ys: torch.Tensor,
    ft: torch.Tensor,
    yt: torch.Tensor,
    *,
    epsilon: float = 1.0,
    discard: float = 0.2,
    reg: float = 1e-6,
    reg_mode: str = "trace",
) -> torch.Tensor:
    """Closed-form ISA KRR loss (mean over kept targets), differentiated by autograd."""
    w = _ridge_weights(fs, ys, reg, reg_mode)
    residual = ft @ fs.T @ w - yt
    kept, partner = _kept_and_partners(residual, ft, discard)
    a = residual[kept]
    b = residual[partner] - a
    per_target = 0.5 * (
        a.pow(2).sum(1) + epsilon * (a * b).sum(1) + epsilon**2 / 3 * b.pow(2).sum(1)
    )
    return per_target.mean()


def monte_carlo_isa_loss(
    fs: torch.Tensor,
    ys: torch.Tensor,
    ft: torch.Tensor,
    yt: torch.Tensor,
    *,
    samples: int,
    epsilon: float = 1.0,
    discard: float = 0.2,
    reg: float = 1e-6,
    reg_mode: str = "trace",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte-Carlo estimate of the ISA loss with `samples` mixing weights per kept target.

    For each sample s and kept target i, alpha ~ U(0, epsilon) mixes features and labels toward the
    partner j: z = z_i + alpha (z_j - z_i), y = y_i + alpha (y_j - y_i); the estimate is the mean
    over samples and kept targets of 1/2 ||z F_S^T W - y||^2.
    """
    if samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples}")
    w = _ridge_weights(fs, ys, reg, reg_mode)
    support_map = fs.T @ w  # (d, C): prediction of a feature row is z @ support_map
    kept, partner = _kept_and_partners(ft @ support_map - yt, ft, discard)
    z_i, z_j, y_i, y_j = ft[kept], ft[partner], yt[kept], yt[partner]
    total = ft.new_zeros(())
    for _ in range(samples):
        alpha = epsilon * torch.rand(
            (kept.numel(), 1), generator=generator, dtype=ft.dtype, device=ft.device
        )
        mixed_residual = (z_i + alpha * (z_j - z_i)) @ support_map - (y_i + alpha * (y_j - y_i))
        total = total + 0.5 * mixed_residual.pow(2).sum(1).mean()
    return total / samples
