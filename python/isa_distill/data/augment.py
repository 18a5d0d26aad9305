"""The evaluation augmentation: ONE random op per batch, random parameters per image.

The recipe of the paper's official code (its augmentation library, applied to every training
batch of the evaluation networks):

- ``flip``: each image is mirrored horizontally with probability 1/2;
- ``color_jitter``: brightness, then contrast, then saturation, per image: an ADDITIVE brightness
  delta ~ U(-0.25, 0.25); contrast and saturation factors log-uniform in [e^-0.25, e^0.25]
  (contrast scales the deviation from the image's mean, saturation the deviation from each
  pixel's channel mean);
- ``resized_crop``: zoom log-uniform in [0.8, 1.25]; the window moves by up to the zoom's slack;
- ``rotate``: an angle ~ U(-15, 15) degrees;
- ``translate``: a continuous (sub-pixel) shift ~ U(-1/8, 1/8) of the side, along each axis;
- ``cutout``: one square hole of side res // 4 placed uniformly so that it lies entirely inside
  the image.

Geometric ops resample bilinearly and replicate the edge pixels where they look outside the
image (the official code's ``mode='nearest'``), so no artificial black frame appears. They act
on preprocessed (standardised / ZCA'd) batches, where 0 is the mean pixel, which is why cutout
fills with 0. All randomness comes from the given ``torch.Generator``, drawn on the CPU, so the
result does not depend on the device; the draws are moved to the batch's device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BRIGHTNESS = 0.25  # additive delta ~ U(-0.25, 0.25)
LOG_JITTER = 0.25  # contrast and saturation factors = exp(U(-0.25, 0.25))
ZOOM_RANGE = (0.8, 1.25)
MAX_ROTATION_DEGREES = 15.0
MAX_TRANSLATION = 1 / 8
CUTOUT_FRACTION = 1 / 4
FLIP_PROBABILITY = 0.5
OPS = ("flip", "color_jitter", "resized_crop", "rotate", "translate", "cutout")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def _per_image(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """CPU draws (n,) -> (n, 1, 1, 1) on x's device and dtype, to broadcast over images."""
    return values.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample x through per-image affine maps theta (B, 2, 3) in [-1, 1] coordinates:
    bilinear, with the border pixels replicated outside the image."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _affine(scale: torch.Tensor, angle: torch.Tensor, shift_x, shift_y) -> torch.Tensor:
    """Output->input sampling maps: rotate by angle, scale by 1/scale, then shift."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos, -sin, shift_x], -1), torch.stack([sin, cos, shift_y], -1)], 1
    )


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flipped = torch.rand(x.shape[0], generator=generator) < FLIP_PROBABILITY
    return torch.where(flipped.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def color_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    delta = _per_image(_uniform(n, -BRIGHTNESS, BRIGHTNESS, generator), x)
    contrast, saturation = (
        _per_image(torch.exp(_uniform(n, -LOG_JITTER, LOG_JITTER, generator)), x) for _ in range(2)
    )
    out = x + delta
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + (out - mean) * contrast
    grey = out.mean(dim=1, keepdim=True)  # a no-op for one channel, as it should be
    return grey + (out - grey) * saturation


def resized_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    zoom = torch.exp(_uniform(n, math.log(ZOOM_RANGE[0]), math.log(ZOOM_RANGE[1]), generator))
    # Zooming in, the window (side 2/zoom) may move as far as it stays on the image; zooming
    # out, the image may move as far as it stays inside the window.
    room = (1 - 1 / zoom).abs()
    shift_x = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * room
    shift_y = (2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1) * room
    return _warp(x, _affine(zoom, torch.zeros(n, dtype=torch.float64), shift_x, shift_y))


def rotate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    angle = torch.deg2rad(_uniform(n, -MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, generator))
    zero = torch.zeros(n, dtype=torch.float64)
    return _warp(x, _affine(torch.ones(n, dtype=torch.float64), angle, zero, zero))


def translate(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    # Continuous shifts in pixels; a shift of p pixels is 2p / side in [-1, 1] coordinates.
    pixels_x = _uniform(n, -MAX_TRANSLATION * width, MAX_TRANSLATION * width, generator)
    pixels_y = _uniform(n, -MAX_TRANSLATION * height, MAX_TRANSLATION * height, generator)
    ones, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    # The map goes output -> input, so content moving by +p samples the input at -p.
    return _warp(x, _affine(ones, zero, -2 * pixels_x / width, -2 * pixels_y / height))


def cutout_side(height: int, width: int) -> int:
    """Side of the cutout hole: a quarter of the shorter side (at least one pixel)."""
    return max(1, int(CUTOUT_FRACTION * min(height, width)))


def cutout(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    side = cutout_side(height, width)
    # Top-left corners drawn so that the whole hole lies inside the image.
    top = torch.randint(0, height - side + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, width - side + 1, (n,), generator=generator).to(x.device)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    top, left = top.view(n, 1, 1), left.view(n, 1, 1)
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
