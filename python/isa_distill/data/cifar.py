"""CIFAR-10 / CIFAR-100 "python version" pickle batches, extracted or inside the .tar.gz."""

from __future__ import annotations

import io
import numbers
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import DatasetFormatError, DatasetNotFoundError
from .files import is_file, read_bytes, reason
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
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) in _STAND_INS:
            return _STAND_INS[module, name]
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a CIFAR batch (only numpy arrays, lists, "
            "dicts, numbers, str and bytes are read)"
        )


def _array_from_buffer(buffer, dtype, shape, order, axis_order=None) -> np.ndarray:
    """numpy's ``_frombuffer`` (how pickle protocol 5 stores an array), redone here: it is
    ``np.frombuffer``, which refuses object dtypes, so the bytes cannot become objects."""
    array = np.frombuffer(buffer, dtype=dtype)
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order)
    return array.reshape(shape, order=order)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Pickle protocol 2 stores bytes as ``_codecs.encode(text, "latin1")``; other codecs are
    refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r} (not latin1)")
    return text.encode("latin1")


# Globals that pickle protocols 2 and 5 use for arrays and bytes, mapped to harmless stand-ins.
_STAND_INS = {
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    ("_codecs", "encode"): _latin1_bytes,
}


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
        if not is_file(path):
            raise DatasetNotFoundError(f"missing CIFAR batch file {path}")
        return read_bytes(path)

    return read


def _tar_reader(archive: Path) -> Callable[[str], bytes]:
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"cannot read archive {archive}: {reason(error)}") from error
    try:
        with tar:
            members = {Path(m.name).name: tar.extractfile(m).read() for m in tar if m.isfile()}
            _check_nothing_follows(tar)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(
            f"archive {archive} is damaged or truncated: {reason(error)}"
        ) from error

    def read(name: str) -> bytes:
        if name not in members:
            raise DatasetFormatError(f"archive {archive} has no member named {name}")
        return members[name]

    return read


def _check_nothing_follows(tar: tarfile.TarFile) -> None:
    """tarfile stops listing members at a damaged header without saying so; after the last
    member an archive holds only zero blocks (reading them also checks the gzip checksum)."""
    tar.fileobj.seek(tar.offset)
    while chunk := tar.fileobj.read(1 << 20):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError(f"damaged member header at byte {tar.offset}")


def _describe(value: object) -> str:
    """What a batch holds instead of what was expected, in a few words."""
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError):
            return f"a ragged {kind}"
        if not array.size:
            return f"an empty {kind}"
        if array.dtype.kind in "iu":
            return f"a {kind} of ints in [{array.min()}, {array.max()}] of shape {array.shape}"
        return f"a {kind} of {_KINDS.get(array.dtype.kind, 'objects')} of shape {array.shape}"
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


_KINDS = {"b": "booleans", "f": "floats", "c": "complex numbers", "U": "strings", "S": "bytes"}


def _pixel_rows(data: object, where: str) -> np.ndarray:
    """'data' as (n, 3072) uint8 rows. Other dtypes would be scaled wrongly: float pixels
    already in [0, 1] divided by 255 again, uint16 ones above 1."""
    rows = _as_uint8(data) if isinstance(data, (list, tuple)) else data
    if not (
        isinstance(rows, np.ndarray)
        and rows.dtype == np.uint8
        and rows.ndim == 2
        and rows.shape[1] == 3 * 32 * 32
    ):
        raise DatasetFormatError(
            f"CIFAR batch {where}: 'data' must be uint8 pixels of shape (n, 3072), "
            f"channel-major; got {_describe(data)}"
        )
    return rows


def _as_uint8(items: list | tuple) -> np.ndarray | None:
    """Pixels written out as Python ints, as a uint8 array; None unless every one fits a byte."""
    try:
        array = np.asarray(items)
    except (ValueError, OverflowError):  # ragged
        return None
    fits = array.dtype.kind in "iu" and (array.size == 0 or 0 <= array.min() <= array.max() <= 255)
    return array.astype(np.uint8) if fits else None


def _is_class_index(value: object, num_classes: int) -> bool:
    """An integer, or a float of integral value (0.7 would be silently truncated), in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    integral = isinstance(value, numbers.Integral) or float(value).is_integer()
    return integral and 0 <= value < num_classes


def _class_indices(labels: object, n: int, num_classes: int, key: str, where: str) -> np.ndarray:
    values = labels.tolist() if isinstance(labels, np.ndarray) else labels
    if not isinstance(values, (list, tuple)):
        found = _describe(labels)
    elif len(values) != n:
        found = f"{len(values)} labels for {n} images"
    else:
        found = next((repr(v) for v in values if not _is_class_index(v, num_classes)), None)
        if found is None:
            return np.array(values, dtype=np.int64)
    raise DatasetFormatError(
        f"CIFAR batch {where}: '{key}' must be a list of {n} class indices in "
        f"[0, {num_classes}), got {found}"
    )


def _batch_split(batch: dict, label_key: str, num_classes: int, where: str) -> Split:
    if "data" not in batch or label_key not in batch:
        raise DatasetFormatError(f"CIFAR batch {where} lacks 'data' or '{label_key}'")
    data = _pixel_rows(batch["data"], where)
    labels = _class_indices(batch[label_key], len(data), num_classes, label_key, where)
    images = torch.from_numpy(data.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)
    return Split(images, torch.from_numpy(labels))


def _class_names(meta: dict, key: str, where: str) -> list[str]:
    if key not in meta:
        raise DatasetFormatError(f"CIFAR meta file {where} lacks '{key}'")
    names = meta[key]
    if not (
        isinstance(names, (list, tuple))
        and names
        and all(isinstance(n, (str, bytes)) for n in names)
    ):
        raise DatasetFormatError(
            f"CIFAR meta file {where}: '{key}' must be a list of class names (str or bytes), "
            f"got {_describe(names)}"
        )
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as error:
        raise DatasetFormatError(
            f"CIFAR meta file {where}: a name in '{key}' is not UTF-8 text ({error})"
        ) from error


def load_cifar(source: Path, *, fine: bool) -> tuple[Split, Split, list[str]]:
    """Train split, test split and class names from a batches folder or a .tar.gz archive."""
    files = CIFAR100_FILES if fine else CIFAR10_FILES
    label_key = "fine_labels" if fine else "labels"
    read = _tar_reader(source) if is_file(source) else _folder_reader(source)
    meta = _unpickle(read(files["meta"]), files["meta"])
    class_names = _class_names(meta, "fine_label_names" if fine else "label_names", files["meta"])

    def split(name: str) -> Split:
        names = files[name]
        parts = [_batch_split(_unpickle(read(n), n), label_key, len(class_names), n) for n in names]
        images = torch.cat([p.images for p in parts])
        if not len(images):
            raise DatasetFormatError(
                f"the {name} split is empty: CIFAR batches {', '.join(names)} in {source} hold "
                "no images"
            )
        return Split(images, torch.cat([p.labels for p in parts]))

    return split("train"), split("test"), class_names
