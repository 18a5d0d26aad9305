"""k-nearest-neighbour manifold metrics between real and synthetic feature sets.

A set's manifold is the union of balls around its points, each with radius the distance to the
point's k-th nearest neighbour in the same set (Kynkaanniemi et al. 2019):

    precision = fraction of synthetic points inside the real manifold
    recall    = fraction of real points inside the synthetic manifold
    coverage  = fraction of real points whose own k-NN ball holds a synthetic point
                (Naeem et al. 2020; more robust to outliers than recall)
"""

from __future__ import annotations

import torch


def knn_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each point to its k-th nearest OTHER point of the same set."""
    distances = torch.cdist(points, points)
    # k + 1 smallest include the point itself at distance 0.
    return distances.topk(k + 1, dim=1, largest=False).values[:, k]


def _inside(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    return (torch.cdist(queries, centres) <= radii[None, :]).any(dim=1)


def manifold_metrics(real: torch.Tensor, synthetic: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall and coverage of ``synthetic`` against ``real`` (both (n, d) features)."""
    for name, points in (("real", real), ("synthetic", synthetic)):
        if points.ndim != 2 or not points.is_floating_point():
            raise ValueError(f"{name} must be a floating (n, d) tensor, got {tuple(points.shape)}")
        if len(points) <= k:
            raise ValueError(f"{name} needs more than k={k} points, got {len(points)}")
        if not torch.isfinite(points).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, synthetic "
                         f"{synthetic.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    real, synthetic = real.double(), synthetic.double()
    real_radii, synthetic_radii = knn_radii(real, k), knn_radii(synthetic, k)
    precision = _inside(synthetic, real, real_radii).double().mean()
    recall = _inside(real, synthetic, synthetic_radii).double().mean()
    coverage = (torch.cdist(real, synthetic).min(dim=1).values <= real_radii).double().mean()
    return {"precision": float(precision), "recall": float(recall), "coverage": float(coverage)}
