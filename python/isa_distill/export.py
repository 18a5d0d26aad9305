"""Write a run's distilled set in formats other tools read: PNG files, an image folder, or .npz.

``png``           ``OUT/0000-<class>.png``, ``0001-<class>.png``, ... one picture per image in
                  the order of the set, and ``OUT/labels.csv``.
``image-folder``  ``OUT/<class>/0000.png``, ... one sub-folder per class (the class of an image
                  is the argmax of its learned label) and ``OUT/labels.csv``: the layout of
                  torchvision's ``ImageFolder`` and of ``isa-distill distill --dataset
                  image-folder``.
``npz``           ``OUT/distilled.npz`` with the images in network input space, the learned
                  labels and the preprocessor (``NPZ_KEYS`` lists the keys).

Pictures hold the pixels of ``Distilled.pixel_images`` (normalisation and ZCA undone) times 255,
clamped to [0, 255] and rounded: distillation moves pixels slightly outside [0, 1]. Grey
images are written as one-channel PNGs. ``labels.csv`` has one row per image: ``file``, ``row``
(its index in the set), ``class``, ``class_name`` and the learned label values ``label_0`` ...
``label_{C-1}``, which a PNG cannot hold; train on those with MSE for the set's full accuracy.

A class name that is not a valid file name (e.g. Fashion-MNIST's ``T-shirt/top``) has every
character other than letters, digits, ``-``, ``_``, ``.`` and spaces replaced by ``-``, and is
cut to 200 bytes. The files are written into a hidden sibling folder renamed to the output
folder at the end, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from .runs import Distilled, load_distilled, nearest_existing

FORMATS = ("png", "image-folder", "npz")
NPZ_FILE = "distilled.npz"
LABELS_CSV = "labels.csv"
MAX_NAME_BYTES = 200  # of a class name in file names (file systems allow 255 per name)
NPZ_KEYS = {
    "images": "float32 (M, c, h, w): the images in network input space (what the networks see)",
    "labels": "float32 (M, C): the learned soft labels; train with MSE on them",
    "classes": "int64 (M,): argmax of the labels",
    "class_names": "str (C,)",
    "pixel_images": "float32 (M, c, h, w): the images with the preprocessing undone, ~[0, 1]",
    "preprocessor_mean": "float32 (c,): per-channel mean subtracted first",
    "preprocessor_std": "float32 (c,): per-channel std divided by next",
    "preprocessor_layer_norm": "bool: whether each standardised image is then centred and "
    "scaled to unit L2 norm (sets imported from KIP)",
    "preprocessor_zca": "bool: whether ZCA whitening follows",
    "preprocessor_zca_mean": "float32 (c*h*w,): subtracted before whitening (ZCA only)",
    "preprocessor_zca_whiten": "float32 (d, d): the whitening matrix W (ZCA only; d = c*h*w, "
    "or c*b*b for a block ZCA)",
    "preprocessor_zca_unwhiten": "float32 (d, d): its inverse (ZCA only)",
    "preprocessor_zca_block": "int: block side b of a block ZCA, 0 for a whole-image ZCA",
    "meta_json": "str: the run's meta.json",
}


def export_run(run_dir: str | os.PathLike, format: str, out: str | os.PathLike) -> list[Path]:
    """Write the distilled set of ``run_dir`` to the folder ``out`` (which must not exist or be
    empty) in ``format`` (one of ``FORMATS``); returns the files written."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if not os.fspath(out):
        raise ValueError("out must name a folder, got ''")
    distilled = load_distilled(run_dir)
    out = Path(out).absolute()
    _check_new_folder(out)
    # Written into a hidden sibling and moved into place at the end: a failure (a full disk, a
    # name the file system refuses) leaves no half-exported folder that a second try would
    # refuse.
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if format == "npz":
            written = [_write_npz(distilled, partial / NPZ_FILE)]
        else:
            written = _write_pictures(distilled, partial,
                                      per_class_folders=format == "image-folder")
        if out.is_dir():  # empty (checked above), perhaps the working directory: kept
            for entry in partial.iterdir():
                entry.rename(out / entry.name)
            partial.rmdir()
        else:
            partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return [out / path.relative_to(partial) for path in written]


def _check_new_folder(out: Path) -> None:
    blocking = nearest_existing(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is not a folder" if not out.is_dir() else "already exists and is not empty"
    elif blocking is not None and not blocking.is_dir():
        what = f"cannot be made: {blocking}, on its path, is a file"
    else:
        return
    raise FileExistsError(f"{out} {what}; choose another output folder (nothing was written)")


def class_of_each_image(distilled: Distilled) -> torch.Tensor:
    """(M,) int64: the argmax of each learned label (hard labels stay as they are)."""
    labels = distilled.labels
    return labels.argmax(1) if labels.ndim == 2 else labels.long()


def folder_names(class_names: list[str]) -> list[str]:
    """File-system-safe, distinct names for the classes (see the module docstring)."""
    names: list[str] = []
    for index, name in enumerate(class_names):
        safe = re.sub(r"[^\w\-. ]", "-", str(name))
        safe = safe.encode()[:MAX_NAME_BYTES].decode(errors="ignore").strip(" .")
        safe = safe or f"class-{index}"
        names.append(safe if safe not in names else f"{safe}-{index}")
    return names


def pixels_uint8(distilled: Distilled) -> np.ndarray:
    """(M, h, w, c) uint8: ``pixel_images`` times 255, clamped to [0, 255] and rounded."""
    pixels = (distilled.pixel_images * 255.0).clamp(0.0, 255.0).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()


def _write_pictures(distilled: Distilled, out: Path, *, per_class_folders: bool) -> list[Path]:
    from PIL import Image

    classes = class_of_each_image(distilled).tolist()
    class_names = [str(n) for n in distilled.meta.get("class_names") or
                   range(int(distilled.meta["num_classes"]))]
    safe = folder_names(class_names)
    pixels = pixels_uint8(distilled)
    written, rows = [], []
    for row, (image, label) in enumerate(zip(pixels, classes)):
        if per_class_folders:
            path = out / safe[label] / f"{row:04d}.png"
            path.parent.mkdir(exist_ok=True)
        else:
            path = out / f"{row:04d}-{safe[label]}.png"
        mode = "L" if image.shape[2] == 1 else "RGB"
        Image.fromarray(image[..., 0] if mode == "L" else image, mode).save(path)
        written.append(path)
        soft = distilled.labels[row].tolist() if distilled.labels.ndim == 2 else []
        rows.append([path.relative_to(out).as_posix(), row, label, class_names[label], *soft])
    csv_path = out / LABELS_CSV
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        label_columns = [f"label_{k}" for k in range(distilled.labels.shape[1])] if (
            distilled.labels.ndim == 2) else []
        writer.writerow(["file", "row", "class", "class_name", *label_columns])
        writer.writerows(rows)
    return [*written, csv_path]


def _write_npz(distilled: Distilled, path: Path) -> Path:
    prep = distilled.preprocessor
    arrays: dict[str, np.ndarray] = {
        "images": distilled.images.float().numpy(),
        "labels": distilled.labels.float().numpy(),
        "classes": class_of_each_image(distilled).numpy(),
        "class_names": np.array([str(n) for n in distilled.meta.get("class_names", [])]),
        "pixel_images": distilled.pixel_images.numpy(),
        "preprocessor_mean": prep.mean.numpy(),
        "preprocessor_std": prep.std.numpy(),
        "preprocessor_layer_norm": np.array(prep.layer_norm),
        "preprocessor_zca": np.array(prep.zca),
        "meta_json": np.array(json.dumps(distilled.meta)),
    }
    if prep.zca:
        arrays.update(
            preprocessor_zca_mean=prep.zca_mean.numpy(),
            preprocessor_zca_whiten=prep.whiten.numpy(),
            preprocessor_zca_unwhiten=prep.unwhiten.numpy(),
            preprocessor_zca_block=np.array(prep.zca_block or 0),
        )
    np.savez(path, **arrays)
    return path
