"""The device a run computes on: ``"auto"`` means CUDA when torch sees a GPU, else the CPU.

Presets and ``DistillConfig`` default to ``"auto"``; ``distill`` resolves it before anything
runs, so a run's ``meta.json`` always records the concrete device it used (``"cuda"`` or
``"cpu"``). Any other torch device string (``"cpu"``, ``"cuda:1"``, ...) is used as given.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(device: str) -> str:
    """``"cuda"`` for ``"auto"`` when ``torch.cuda.is_available()``, ``"cpu"`` for ``"auto"``
    otherwise; any other device string unchanged."""
    if device != AUTO:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_choice(requested: str, device: str) -> str | None:
    """A note for the user when ``"auto"`` picked a GPU (None otherwise)."""
    if requested != AUTO or not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return f"device: CUDA available, running on {device} ({name}); --device cpu runs on the CPU"
