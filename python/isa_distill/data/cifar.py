"""CIFAR-10 / CIFAR-100 "python version" pickle batches, extracted or inside the .tar.gz."""

from __future__ import annotations

import io
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError
from .splits import Split

CIFAR10_FILES = {
    "train": [f"data_batch_{i}" for i in range(1, 6)],
    "test": ["test_batch"],
    "meta": "batches.meta",
}
CIFAR100_FILES = {"train": ["train"], "test": ["test"], "meta": "meta"}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what numpy arrays need: the batches are untrusted files."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # any unpickling failure means a corrupt file
        raise DatasetFormatError(f"cannot unpickle CIFAR batch {where}: {error}") from error
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"CIFAR batch {where} holds a {type(batch).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _folder_reader(folder: Path) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(f"missing CIFAR batch file {path}")
        return path.read_bytes()

    return read


def _tar_reader(archive: Path) -> Callable[[str], bytes]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {
                Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()
            }
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DatasetFormatError(f"cannot read archive {archive}: {error}") from error

    def read(name: str) -> bytes:
        if name not in members:
            raise DatasetFormatError(f"archive {archive} has no member named {name}")
        return members[name]

    return read


def _batch_split(batch: dict, label_key: str, where: str) -> Split:
    if "data" not in batch or label_key not in batch:
        raise DatasetFormatError(f"CIFAR batch {where} lacks 'data' or '{label_key}'")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DatasetFormatError(
            f"CIFAR batch {where}: data of shape {data.shape} and {labels.shape[0]} labels "
            "(expected (n, 3072) uint8 rows, channel-major, and n labels)"
        )
    images = torch.from_numpy(data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
    return Split(images, torch.from_numpy(labels))


def load_cifar(source: Path, *, fine: bool) -> tuple[Split, Split, list[str]]:
    """Train split, test split and class names from a batches folder or a .tar.gz archive."""
    files = CIFAR100_FILES if fine else CIFAR10_FILES
    label_key = "fine_labels" if fine else "labels"
    read = _tar_reader(source) if source.is_file() else _folder_reader(source)

    def split(names: list[str]) -> Split:
        parts = [_batch_split(_unpickle(read(n), n), label_key, n) for n in names]
        return Split(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))

    meta = _unpickle(read(files["meta"]), files["meta"])
    names_key = "fine_label_names" if fine else "label_names"
    if names_key not in meta:
        raise DatasetFormatError(f"CIFAR meta file {files['meta']} lacks '{names_key}'")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return split(files["train"]), split(files["test"]), class_names
