"""The evaluation augmentation: ONE random op per batch, random parameters per image.

Ops (the protocol's list): horizontal flip; colour jitter (brightness, contrast and saturation
factors in [0.75, 1.25]); random resized crop (zoom in [0.8, 1.25]); rotation in [-15, 15]
degrees; translation by up to 1/8 of the side; cutout (one square hole of side res/4).
They act on preprocessed (standardised / ZCA'd) batches, where 0 is the mean pixel, so geometric
ops and cutout fill with 0. All randomness comes from the given ``torch.Generator`` (drawn on
the CPU, so the result does not depend on the device).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

JITTER = 0.25
ZOOM_RANGE = (0.8, 1.25)
MAX_ROTATION_DEGREES = 15.0
MAX_TRANSLATION = 1 / 8
CUTOUT_FRACTION = 1 / 4
OPS = ("flip", "color_jitter", "resized_crop", "rotate", "translate", "cutout")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample x through per-image affine maps theta (B, 2, 3) in [-1, 1] coordinates."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _affine(scale: torch.Tensor, angle: torch.Tensor, shift_x, shift_y) -> torch.Tensor:
    """Output->input sampling maps: rotate by angle, scale by 1/scale, then shift."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], -1), torch.stack([sin, cos, shift_y], -1)], 1
    )
    return theta


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x.flip(-1)


def color_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    factors = [
        _uniform(n, 1 - JITTER, 1 + JITTER, generator).to(x.device, x.dtype).view(n, 1, 1, 1)
        for _ in range(3)
    ]
    brightness, contrast, saturation = factors
    out = x * brightness
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * contrast
    grey = out.mean(dim=1, keepdim=True)  # a no-op for one channel, as it should be
    return grey + (out - grey) * saturation


def resized_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    zoom = torch.exp(_uniform(n, math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1]), generator))
    # The crop window (side 2/zoom) may move anywhere that keeps it on the image when zooming in.
    room = (1 - 1 / zoom).clamp_min(0)
    shift_x = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * room
    shift_y = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * room
    return _warp(x, _affine(zoom, torch.zeros(n, dtype=torch.float64), shift_x, shift_y))


def rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = torch.deg2rad(_uniform(n, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, generator))
    zero = torch.zeros(n, dtype=torch.float64)
    return _warp(x, _affine(torch.ones(n, dtype=torch.float64), angle, zero, zero))


def translate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, size = x.shape[0], x.shape[-1]
    limit = int(MAX_TRANSLATION * size)
    # Whole-pixel shifts sampled with "nearest": pixels are copied, never blurred.
    pixels = torch.randint(-limit, limit + 1, (2, n), generator=generator).to(torch.float64)
    shift_x, shift_y = 2 * pixels[0] / x.shape[-1], 2 * pixels[1] / x.shape[-2]
    ones = torch.ones(n, dtype=torch.float64)
    theta = _affine(ones, torch.zeros(n, dtype=torch.float64), shift_x, shift_y)
    return _warp(x, theta, mode="nearest")


def cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    side = max(1, round(CUTOUT_FRACTION * min(height, width)))
    # Hole centres anywhere on the image; holes near the border are clipped, as in cutout.
    centre_y = torch.randint(0, height, (n,), generator=generator).to(x.device)
    centre_x = torch.randint(0, width, (n,), generator=generator).to(x.device)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    top, left = (centre_y - side // 2).view(n, 1, 1), (centre_x - side // 2).view(n, 1, 1)
    hole = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return x.masked_fill(hole.unsqueeze(1), 0.0)


_OP_FUNCTIONS = {
    "flip": flip,
    "color_jitter": color_jitter,
    "resized_crop": resized_crop,
    "rotate": rotate,
    "translate": translate,
    "cutout": cutout,
}


def apply_op(name: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply the named op to a batch (B, C, H, W)."""
    if name not in _OP_FUNCTIONS:
        raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(OPS)}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    return _OP_FUNCTIONS[name](x, generator)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, flip: bool = True
) -> torch.Tensor:
    """One op drawn uniformly (flip excluded when ``flip=False``, e.g. for MNIST-like data)."""
    ops = OPS if flip else tuple(op for op in OPS if op != "flip")
    choice = int(torch.randint(len(ops), (1,), generator=generator))
    return apply_op(ops[choice], x, generator)
