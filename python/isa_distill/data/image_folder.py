"""A folder of images with one sub-folder per class, optionally pre-split into train/val/test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DatasetFormatError, DatasetNotFoundError
from .splits import Split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SPLIT_FOLDERS = ("train", "val", "test")


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _read_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetFormatError(f"cannot read image {path}: {error}") from error
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _load_classes(folder: Path, class_names: list[str], image_size: int, mode: str) -> Split:
    images, labels = [], []
    for label, name in enumerate(class_names):
        class_folder = folder / name
        files = _image_files(class_folder) if class_folder.is_dir() else []
        images.extend(_read_image(p, image_size, mode) for p in files)
        labels.extend([label] * len(files))
    if not images:
        raise DatasetNotFoundError(f"no image files ({sorted(IMAGE_SUFFIXES)}) under {folder}")
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def load_image_folder(
    root: Path, *, image_size: int, grayscale: bool
) -> tuple[dict[str, Split], list[str]]:
    """Splits found under ``root`` (at least "train") and the sorted class names.

    ``root/train/<class>/*.png`` (+ optional ``val/``, ``test/``) is used as given; a flat
    ``root/<class>/*.png`` becomes the "train" split alone and the caller carves the rest.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    mode = "L" if grayscale else "RGB"
    presplit = (root / "train").is_dir()
    train_folder = root / "train" if presplit else root
    class_names = [p.name for p in _class_folders(train_folder)]
    if not class_names:
        raise DatasetNotFoundError(
            f"no class sub-folders in {train_folder} (expected {train_folder}/<class>/<image>)"
        )
    splits = {"train": _load_classes(train_folder, class_names, image_size, mode)}
    if presplit:
        for name in ("val", "test"):
            if (root / name).is_dir():
                unknown = {p.name for p in _class_folders(root / name)} - set(class_names)
                if unknown:
                    raise DatasetFormatError(
                        f"{root / name} has classes absent from train/: {sorted(unknown)}"
                    )
                splits[name] = _load_classes(root / name, class_names, image_size, mode)
    return splits, class_names
