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


def parse_device(device: str) -> torch.device:
    """``device`` (not "auto") as a torch.device; ValueError unless it is cpu, cuda or
    cuda:N, the devices a run can use."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return parsed


def check_available(device: str) -> None:
    """ValueError when ``device`` (resolved, e.g. "cuda:1") is not a device this machine has."""
    parsed = parse_device(device)
    if parsed.type != "cuda":
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' or "
                         "'auto'")
    if parsed.index is not None and parsed.index >= count:
        raise ValueError(f"device {device!r} requested but this machine has {count} GPU(s), "
                         f"cuda:0 to cuda:{count - 1}")


def describe_choice(requested: str, device: str) -> str | None:
    """A note for the user when ``"auto"`` picked a GPU (None otherwise)."""
    if requested != AUTO or not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return f"device: CUDA available, running on {device} ({name}); --device cpu runs on the CPU"
