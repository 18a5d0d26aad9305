"""MNIST-style IDX files (``train-images-idx3-ubyte.gz`` and friends), gzipped or not."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError
from .files import is_file, reason
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
            if is_file(candidate):
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
    except OSError as error:
        raise DatasetFormatError(f"cannot read IDX file {path}: {reason(error)}") from error
    except (EOFError, zlib.error) as error:  # gzip raises these for a damaged stream
        raise DatasetFormatError(
            f"cannot read IDX file {path}: corrupt or truncated gzip data ({error})"
        ) from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise DatasetFormatError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python ints: np.prod wraps around for (65536,) * 4
    if len(raw) - header != expected:
        raise DatasetFormatError(
            f"{path} declares shape {shape} ({expected} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_idx_split(folder: Path, split: str) -> tuple[Split, Path]:
    """One split and the file its images came from."""
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
    if images.shape[0] == 0:
        raise DatasetFormatError(f"the {split} split is empty: {paths['images']} holds no images")
    if images.shape[1] != images.shape[2]:
        raise DatasetFormatError(
            f"{paths['images']} holds {images.shape[1]}x{images.shape[2]} images; the models "
            "need square ones"
        )
    pixels = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Split(pixels, torch.from_numpy(labels.astype(np.int64))), paths["images"]


def load_idx_splits(folder: Path) -> dict[str, Split]:
    """The train and test splits of the IDX files in ``folder``, images of one size."""
    train, train_file = _load_idx_split(folder, "train")
    test, test_file = _load_idx_split(folder, "test")
    train_size, test_size = train.images.shape[2], test.images.shape[2]
    if train_size != test_size:
        raise DatasetFormatError(
            f"{test_file} holds {test_size}x{test_size} images but {train_file} holds "
            f"{train_size}x{train_size} ones: the test images must have the train images' size"
        )
    return {"train": train, "test": test}
