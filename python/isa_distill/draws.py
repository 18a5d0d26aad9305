"""Every random draw of a distillation run comes from one of three explicit CPU generators.

Keeping the streams apart and explicit is what makes a run reproducible and a resumed run
exact: the loop checkpoints the generators' states with everything else, and a draw made on
the host never depends on the device the run happens to use.
"""

from __future__ import annotations

import torch

GENERATORS = ("data", "pool", "loss")  # target batches, feature networks, loss partners

# A run's seed also seeds the validation hold-out, drawn by scikit-learn, which takes numpy's
# 32-bit seeds; one range for every seed keeps a seed meaning the same run everywhere.
MAX_SEED = 2**32 - 1


def check_seed(seed: object, name: str = "seed") -> None:
    """Raise ValueError naming ``name`` unless ``seed`` is an int in [0, MAX_SEED]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, {MAX_SEED}], got {seed!r}")


def make_generators(seed: int) -> dict[str, torch.Generator]:
    """Independent CPU streams: target batches, feature networks (the pool), loss partners."""
    return {
        name: torch.Generator().manual_seed(seed * 1000 + offset)
        for offset, name in enumerate(GENERATORS)
    }


def draw_rows(n: int, count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` distinct rows of ``n``, drawn on the CPU and sent to ``device``.

    A copy from ordinary (pageable) host memory makes CUDA wait for the stream; from pinned
    memory it is queued like a kernel, so the host does not wait for the GPU.
    """
    rows = torch.randperm(n, generator=generator)[:count]
    if device.type == "cuda":
        rows = rows.pin_memory()
    return rows.to(device, non_blocking=True)


def draw_seed(generator: torch.Generator) -> int:
    """A seed for a freshly initialised network, drawn from ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))
