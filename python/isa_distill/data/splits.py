"""Containers for image datasets and the seeded, stratified splits between them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Split:
    """Images (n, c, h, w) float32 in [0, 1] before preprocessing, labels (n,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must have shape (n, c, h, w), got {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match images, "
                f"got {tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64, got {self.labels.dtype}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self):
        # Lets a Split stand wherever an (images, labels) pair is expected.
        return iter((self.images, self.labels))

    def subset(self, indices: torch.Tensor | np.ndarray) -> Split:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset with disjoint train / validation / test splits.

    ``root`` is the folder the files were read from when it has to be given again to read them
    (a root passed to ``load_dataset``, or ``ISA_DISTILL_DATA`` when they were found there);
    None for bundled data and the default locations. A run stores it for resume and evaluate.
    """

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    root: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    def check(self) -> None:
        """Raise ValueError naming the split whose images or labels a run cannot use: the
        loaders guarantee all of this, a ``DatasetSplits`` built by hand may not (a val split
        of another size fails only at the end of a run, NaN images or labels out of range
        give a garbage validation accuracy)."""
        names = self.class_names
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"class_names must be a list of str, got {names!r}")
        shape = tuple(self.train.images.shape[1:])
        if shape[1] != shape[2]:
            raise ValueError(f"train images must be square (n, c, s, s), got {shape} per image")
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if len(split) == 0:
                if split_name == "train":
                    raise ValueError("the train split is empty")
                continue
            images = split.images
            where = f"{self.name} {split_name} split"
            if tuple(images.shape[1:]) != shape:
                raise ValueError(f"{where}: images of {tuple(images.shape[1:])}, but the train "
                                 f"images are {shape}")
            if images.dtype != torch.float32:
                raise ValueError(f"{where}: images must be float32 in [0, 1], got {images.dtype}")
            if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
                raise ValueError(f"{where}: images must lie in [0, 1] (no NaN or Inf)")
            check_labels(split, len(names), where)


def check_labels(split: Split, num_classes: int, where: str,
                 error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` naming ``where`` unless every label lies in [0, num_classes)."""
    if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= num_classes):
        raise error(
            f"{where}: labels must lie in [0, {num_classes}), found "
            f"[{int(split.labels.min())}, {int(split.labels.max())}]"
        )


def stratified_holdout(
    split: Split, size: int | float, *, seed: int, what: str = "val_size"
) -> tuple[Split, Split]:
    """Split off a stratified, seeded hold-out set; returns (rest, held_out).

    ``size`` is a fraction in [0, 1) or an absolute count; 0 gives an empty hold-out.
    """
    n = len(split)
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"{what} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float) and not 0.0 <= size < 1.0:
        raise ValueError(f"{what} as a fraction must lie in [0, 1), got {size}")
    if isinstance(size, int) and not 0 <= size < n:
        raise ValueError(f"{what} as a count must lie in [0, {n}), got {size}")
    if size == 0:
        return split, split.subset(np.zeros(0, dtype=np.int64))
    from sklearn.model_selection import train_test_split  # seconds to import: only when used

    labels = split.labels.numpy()
    classes = len(np.unique(labels))
    held_count = math.ceil(size * n) if isinstance(size, float) else size  # as scikit-learn
    if held_count < classes:
        raise ValueError(
            f"{what}={size} holds out {held_count} of {n} images, fewer than their {classes} "
            f"classes: a stratified hold-out takes at least one image of each; pass {what} >= "
            f"{classes} (a count) or a larger fraction"
        )
    try:
        rest, held = train_test_split(
            np.arange(n), test_size=size, random_state=seed, stratify=labels
        )
    except ValueError as error:
        raise ValueError(
            f"cannot hold out {what}={size} stratified over {n} samples: {error}"
        ) from error
    return split.subset(np.sort(rest)), split.subset(np.sort(held))


def class_balanced_subset(split: Split, ipc: int, generator: torch.Generator) -> Split:
    """``ipc`` samples of every class drawn without replacement, grouped by class."""
    if isinstance(ipc, bool) or not isinstance(ipc, int) or ipc < 1:
        raise ValueError(f"ipc must be a positive int, got {ipc!r}")
    classes, counts = torch.unique(split.labels, return_counts=True)
    if len(classes) == 0:
        raise ValueError("cannot draw a class-balanced subset of an empty split")
    smallest = int(counts.min())
    if ipc > smallest:
        raise ValueError(
            f"ipc={ipc} exceeds the smallest class (class {int(classes[counts.argmin()])} has "
            f"{smallest} samples)"
        )
    chosen = []
    for label in classes:
        members = torch.nonzero(split.labels == label).flatten()
        order = torch.randperm(len(members), generator=generator)[:ipc]
        chosen.append(members[order])
    return split.subset(torch.cat(chosen))
