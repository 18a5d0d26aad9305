"""A folder of images with one sub-folder per class, optionally pre-split into train/val/test."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import DatasetFormatError, DatasetNotFoundError
from .files import files_under, is_dir, reason, shown, subfolders
from .splits import Split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
SPLIT_FOLDERS = ("train", "val", "test")
MAX_IMAGE_SIZE = 1024
# What PIL raises for a damaged, truncated or hostile file, depending on the format plugin
# (UnidentifiedImageError is an OSError; a PPM with a bad header gives ValueError, a broken PNG
# SyntaxError, a huge declared size DecompressionBombError). Listed rather than catching every
# Exception, so that a bug of ours still shows its traceback.
_PIL_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


def _read_image(path: Path, image_size: int, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except _PIL_ERRORS as error:
        raise DatasetFormatError(f"cannot read image {shown(path)}: {reason(error)}") from error
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _class_names(folder: Path) -> list[str]:
    names = [p.name for p in subfolders(folder)]
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, which Python keeps as surrogates
            raise DatasetFormatError(
                f"class folder {shown(folder / name)} has a name that is not UTF-8 text; rename "
                "it (class names label plots and exports)"
            ) from None
    return names


def _load_classes(folder: Path, class_names: list[str], image_size: int, mode: str) -> Split:
    images, labels = [], []
    for label, name in enumerate(class_names):
        class_folder = folder / name
        if not is_dir(class_folder):
            continue  # val/ and test/ may lack a class
        files = files_under(class_folder, IMAGE_SUFFIXES)
        if not files:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DatasetFormatError(
                f"class folder {shown(class_folder)} holds no images ({suffixes})"
            )
        images.extend(_read_image(p, image_size, mode) for p in files)
        labels.extend([label] * len(files))
    if not images:
        raise DatasetNotFoundError(f"no image files ({sorted(IMAGE_SUFFIXES)}) under {folder}")
    return Split(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64))


def _is_presplit(root: Path) -> bool:
    """Whether ``root`` holds train/ (+ val/, test/) rather than the class folders; a class
    called "train" among other classes makes that ambiguous, so it is refused."""
    folders = {p.name for p in subfolders(root)}
    if "train" not in folders:
        return False
    others = sorted(f"{shown(name)}/" for name in folders - set(SPLIT_FOLDERS))
    if others:
        raise DatasetFormatError(
            f"image folder {root} is ambiguous: it holds train/ and also {', '.join(others)}; "
            "use either <root>/train/<class>/ (with optional val/ and test/ and no other "
            "sub-folders) or <root>/<class>/ with no class called 'train'"
        )
    return True


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
    presplit = _is_presplit(root)
    train_folder = root / "train" if presplit else root
    class_names = _class_names(train_folder)
    if not class_names:
        raise DatasetNotFoundError(
            f"no class sub-folders in {train_folder} (expected {train_folder}/<class>/<image>)"
        )
    splits = {"train": _load_classes(train_folder, class_names, image_size, mode)}
    if presplit:
        for name in ("val", "test"):
            if is_dir(root / name):
                unknown = {p.name for p in subfolders(root / name)} - set(class_names)
                if unknown:
                    raise DatasetFormatError(
                        f"{root / name} has classes absent from train/: {sorted(unknown)}"
                    )
                splits[name] = _load_classes(root / name, class_names, image_size, mode)
    return splits, class_names
