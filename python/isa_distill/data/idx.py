"""MNIST-style IDX files (``train-images-idx3-ubyte.gz`` and friends), gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError
from .splits import Split

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), then the number of dimensions.
_UBYTE = 0x08
# Both spellings are in circulation ("-idx3-ubyte" from LeCun's site, ".idx3-ubyte" from mirrors).
_STEMS = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def find_idx_file(folder: Path, split: str, kind: str) -> Path | None:
    for stem in _STEMS[(split, kind)]:
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


def has_idx_files(folder: Path) -> bool:
    return all(find_idx_file(folder, split, kind) is not None for split, kind in _STEMS)


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file of unsigned bytes into an array of its declared shape."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetFormatError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DatasetFormatError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path} declares shape {shape} ({expected} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_split(folder: Path, split: str) -> Split:
    paths = {kind: find_idx_file(folder, split, kind) for kind in ("images", "labels")}
    for kind, path in paths.items():
        if path is None:
            raise DatasetNotFoundError(
                f"no {split} {kind} IDX file (one of {_STEMS[(split, kind)]}, .gz or not) "
                f"in {folder}"
            )
    images = read_idx(paths["images"])
    labels = read_idx(paths["labels"])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"{folder}: {split} images of shape {images.shape} do not match labels of shape "
            f"{labels.shape} (expected (n, h, w) and (n,))"
        )
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(pixels, torch.from_numpy(labels.astype(np.int64)))
