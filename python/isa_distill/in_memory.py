"""``distill_tensors``: distil images and labels you already have in memory.

The data become a ``DatasetSplits`` named ``"tensors"``: a stratified validation hold-out
(``val_size``, seeded by the config's seed) is split off the images, the rest is what
distillation trains on, and there is no test split (keep your own). The protocol's rules treat
such data like an image folder: ZCA whitening and the flip trick are on unless the config says
otherwise (``zca=False`` / ``flip=False``, e.g. for digits or other images whose meaning a
mirror image changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.registry import IN_MEMORY
from .data.splits import DatasetSplits, Split, stratified_holdout
from .distill import DistillConfig, DistillResult, distill
from .presets import DEFAULT_PRESET, preset_config


def tensor_splits(
    images, labels, *, class_names: Sequence[str] | None = None, val_size: int | float = 0.1,
    seed: int = 0,
) -> DatasetSplits:
    """The ``DatasetSplits`` that ``distill_tensors`` distils (arguments as there)."""
    images = _images(images)
    labels = _labels(labels, len(images))
    num_classes = int(labels.max()) + 1
    if num_classes > len(labels) // 2:  # before anything is sized by it
        raise ValueError(f"labels go up to {num_classes - 1}, but {len(labels)} images cannot "
                         f"hold 2 of each of {num_classes} classes: labels must be class "
                         "indices 0, 1, ..., C - 1")
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if isinstance(class_names, (str, bytes)):
        raise TypeError("class_names must be a sequence of names, not one "
                        f"{type(class_names).__name__}")
    class_names = [str(name) for name in class_names]
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be distinct, got {class_names}")
    if len(class_names) < num_classes:
        raise ValueError(f"labels go up to {num_classes - 1} but class_names has "
                         f"{len(class_names)} names")
    counts = torch.bincount(labels, minlength=len(class_names))
    if int(counts.min()) < 2:
        empty = int(counts.argmin())
        raise ValueError(f"every class needs at least 2 images (one may go to the validation "
                         f"hold-out); class {empty} ({class_names[empty]!r}) has "
                         f"{int(counts[empty])}")
    train, val = stratified_holdout(Split(images, labels), val_size, seed=seed, what="val_size")
    empty_test = Split(images[:0], labels[:0])
    return DatasetSplits(IN_MEMORY, train, val, empty_test, class_names)


def distill_tensors(
    images,
    labels,
    *,
    class_names: Sequence[str] | None = None,
    config: DistillConfig | None = None,
    preset: str = DEFAULT_PRESET,
    val_size: int | float = 0.1,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    **settings: Any,
) -> DistillResult:
    """Distil (images, labels) held in memory; returns the ``DistillResult``.

    Args:
        images: (n, c, s, s) square images: floats in [0, 1] or uint8 pixels (divided by 255);
            a torch tensor or a numpy array.
        labels: (n,) integer class indices in [0, C); every class needs at least 2 images.
        class_names: C names (default "0", "1", ...); stored with the run and used by
            ``isa-distill export``.
        config: a full ``DistillConfig``. Without it, ``preset`` ("cpu", the default, or
            "paper") with ``settings`` as overrides, e.g. ``ipc=1, steps=500, zca=False``.
        val_size: validation hold-out, a fraction or a count (0: none; then no validation
            accuracy is logged).
        run_dir, resume, progress: as ``isa_distill.distill.distill``; a run directory gets the
            usual files (``load_distilled`` reads it), but ``isa-distill evaluate`` cannot
            reload tensors: evaluate with ``isa_distill.evaluate.evaluate_set``.

    The result's ``images`` are in network input space; ``result.preprocessor.transform``
    maps your real (test) images, in [0, 1], into the same space.
    """
    if config is not None and not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__} (for a dict "
                        "of settings pass them as keyword arguments)")
    if config is not None and settings:
        raise ValueError(f"pass either config or settings ({', '.join(sorted(settings))}), not "
                         "both: config is the whole configuration")
    if config is None:
        config = preset_config(IN_MEMORY, preset, **settings)
    data = tensor_splits(images, labels, class_names=class_names, val_size=val_size,
                         seed=config.seed)
    return distill(data, config, run_dir=run_dir, resume=resume, progress=progress)


def _images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))  # also reversed views
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor or numpy array, got "
                        f"{type(images).__name__}")
    if images.ndim != 4 or images.shape[2] != images.shape[3] or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty (n, c, s, s) batch of square images, got shape "
            f"{tuple(images.shape)} (for (n, h, w, c) arrays use images.permute(0, 3, 1, 2))"
        )
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 pixels or floats in [0, 1], got {images.dtype}")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"float images must lie in [0, 1], found values in [{low:.3g}, "
                         f"{high:.3g}]; pass uint8 pixels, or scale the images to [0, 1]")
    return images


def _labels(labels, count: int) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(np.ascontiguousarray(labels))
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.shape != (count,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be {count} integer class indices, shape ({count},), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    labels = labels.long().cpu()
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0, found {int(labels.min())}")
    return labels
