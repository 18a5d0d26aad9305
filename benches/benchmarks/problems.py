"""Cached, fixed-seed inputs and the implementations every benchmark compares.

Implementations by name: "rust" / "torch" (this library's op with that backend), "naive" (plain
torch autograd through `torch.linalg.solve`, nearest-partner search included) and "mc-S" (the
Monte-Carlo mixup integral with S samples), all from `isa_distill.baselines`.
"""

from functools import lru_cache

import torch

from isa_distill import isa_krr_loss
from isa_distill.baselines import monte_carlo_isa_loss, naive_isa_krr_loss
from isa_distill.bench_report import problem

EPSILON, DISCARD = 1.0, 0.2


@lru_cache(maxsize=8)
def krr_problem(n: int, m: int, d: int, c: int, dtype_name: str = "float32", device: str = "cpu"):
    """The report's fixed-seed FRePo-shaped problem (ReLU features, centred one-hot labels)."""
    return problem(n, m, d, c, getattr(torch, dtype_name), device)


def with_grad(tensors):
    """Fresh leaves that require grad, so each timed call builds its own graph."""
    return tuple(t.detach().clone().requires_grad_(True) for t in tensors)


def loss(impl: str, tensors, seed: int = 0) -> torch.Tensor:
    """One scalar loss by the named implementation ("rust", "torch", "naive" or "mc-S")."""
    if impl in ("rust", "torch"):
        return isa_krr_loss(*tensors, epsilon=EPSILON, discard=DISCARD, backend=impl)
    if impl == "naive":
        return naive_isa_krr_loss(*tensors, epsilon=EPSILON, discard=DISCARD)
    if impl.startswith("mc-"):
        gen = torch.Generator(device=tensors[0].device).manual_seed(seed)
        return monte_carlo_isa_loss(
            *tensors, samples=int(impl[3:]), epsilon=EPSILON, discard=DISCARD, generator=gen
        )
    raise ValueError(f"unknown implementation {impl!r}")


def forward_backward(impl: str, tensors) -> None:
    loss(impl, with_grad(tensors)).backward()


def synchronize(device: str) -> None:
    """Wait for queued CUDA kernels, so a timing covers the work and not just its launch."""
    if device == "cuda":
        torch.cuda.synchronize()


def require_device(device: str) -> None:
    """Skip (NotImplementedError is asv's skip) when the device is absent."""
    if device == "cuda" and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device")
