"""Multi-formation (IDC, Kim et al. 2022): more training images from the same storage.

The stored synthetic tensor holds, per class, IPC images at full resolution. With formation
factor F each stored image is cut into an F x F grid of tiles, and every tile is upsampled back
to the full size, so the set trains networks on IPC x F^2 images per class while storing exactly
as many pixels as F = 1. The decoding is differentiable (a reshape and a bilinear upsampling,
``align_corners=False`` as IDC's ``nn.Upsample(mode="bilinear")``), and the loss sees only
decoded images, so the gradient reaches every stored pixel through its tile.

Layout. Decoded image ``k * F^2 + i * F + j`` is tile (row i, column j) of stored image k:
the decoded images of a stored image are consecutive, so the class blocks of the stored set
(rows [c * IPC, (c + 1) * IPC) are class c) stay class blocks of the decoded set. IDC orders
tile-major instead; the order changes nothing the loss or the evaluation computes.

Labels. As in IDC, the decoded images of a stored image share its label: the learned labels
stay one row per stored image (the storage of F = 1), and ``decode_labels`` repeats each row
F^2 times.

Initialisation. A stored image starts as the F x F mosaic of F^2 real images of its class, each
shrunk by averaging F x F pixel blocks (``encode_mosaic``), so every decoded image starts as a
blurred real image, as IDC's initialisation does (IDC shrinks by nearest-neighbour sampling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_formation(factor: int, image_size: int | None = None) -> None:
    """Raise ValueError naming ``formation`` unless it is a positive int dividing the image
    size (the tiles must cover the image exactly)."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"formation must be a positive int, got {factor!r}")
    if image_size is not None and image_size % factor:
        divisors = [f for f in range(1, image_size + 1) if image_size % f == 0]
        raise ValueError(
            f"formation {factor} does not divide the image size {image_size}: the {factor} x "
            f"{factor} tiles must cover the image exactly; use one of "
            f"{', '.join(map(str, divisors[:8]))}"
        )


def decode(images: Tensor, factor: int) -> Tensor:
    """(M, c, s, s) stored images -> (M * F^2, c, s, s) training images (see the module doc)."""
    if factor == 1:
        return images
    check_formation(factor, images.shape[-1])
    count, channels, size = images.shape[0], images.shape[1], images.shape[-1]
    tile = size // factor
    tiles = images.reshape(count, channels, factor, tile, factor, tile)
    tiles = tiles.permute(0, 2, 4, 1, 3, 5).reshape(count * factor * factor, channels, tile, tile)
    return F.interpolate(tiles, size=(size, size), mode="bilinear", align_corners=False)


def decode_labels(labels: Tensor, factor: int) -> Tensor:
    """One label row per stored image -> one per decoded image (shared by its F^2 tiles)."""
    return labels if factor == 1 else labels.repeat_interleave(factor * factor, dim=0)


def encode_mosaic(images: Tensor, factor: int) -> Tensor:
    """(M * F^2, c, s, s) real images -> (M, c, s, s) mosaics: image k * F^2 + i * F + j,
    shrunk by averaging F x F blocks, becomes tile (i, j) of mosaic k (the inverse layout of
    ``decode``)."""
    if factor == 1:
        return images
    check_formation(factor, images.shape[-1])
    if len(images) % (factor * factor):
        raise ValueError(f"need a multiple of {factor * factor} images to build {factor} x "
                         f"{factor} mosaics, got {len(images)}")
    small = F.avg_pool2d(images, factor)
    count, channels, tile = len(images) // factor**2, images.shape[1], small.shape[-1]
    small = small.reshape(count, factor, factor, channels, tile, tile)
    return small.permute(0, 3, 1, 4, 2, 5).reshape(count, channels, factor * tile, factor * tile)


def decoded_count(stored: int, factor: int) -> int:
    return stored * factor * factor


def as_training_set(images: Tensor, labels: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """The (images, labels) networks train on: ``decode`` and ``decode_labels`` together."""
    with torch.no_grad():
        return decode(images.detach(), factor), decode_labels(labels.detach(), factor)
