"""``load_dataset``: one entry point for every supported dataset, with default locations.

Default roots (``root=None``): ``$ISA_DISTILL_DATA/<folder>`` (``ISA_DISTILL_DATA`` defaults
to ``~/data``), then system-wide copies:

==============  =====================================================================
digits          bundled with scikit-learn, no files needed
mnist           ``<data>/mnist``, ``/usr/share/datasets/mnist`` (IDX files, .gz or not)
fashion-mnist   ``<data>/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
                (Debian: ``apt-get install dataset-fashion-mnist``)
cifar10         ``<data>/cifar-10-batches-py`` or ``<data>/cifar-10-python.tar.gz``
cifar100        ``<data>/cifar-100-python`` or ``<data>/cifar-100-python.tar.gz``
image-folder    no default: pass ``root`` (images resized to ``image_size``, 32 by default,
                RGB unless ``grayscale``)
==============  =====================================================================

A given ``root`` may be the data folder itself or a folder holding the usual sub-folder or
archive name. Validation is held out of train (stratified, seeded by ``seed``). Datasets
without a test split (digits, an image folder without ``test/``) get a stratified test split
carved with a FIXED seed, so the test set never depends on ``seed``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..draws import check_seed
from .cifar import CIFAR10_FILES, CIFAR100_FILES, load_cifar
from .digits import load_digits_split
from .errors import DatasetFormatError, DatasetNotFoundError
from .files import is_dir, is_file, reason
from .idx import has_idx_files, load_idx_splits
from .image_folder import MAX_IMAGE_SIZE, load_image_folder
from .splits import DatasetSplits, Split, check_labels, stratified_holdout

KNOWN_DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "image-folder")
# The name of data handed over as tensors (``isa_distill.distill_tensors``): the protocol's
# rules treat it like an image folder, but there are no files to load it from again.
IN_MEMORY = "tensors"
# Grayscale digit/clothing sets: no ZCA (the protocol's choice for MNIST and Fashion-MNIST; we
# treat sklearn's digits the same way) and no horizontal flips (they change the class meaning).
MNIST_LIKE = ("digits", "mnist", "fashion-mnist")
CARVED_TEST_FRACTION = 0.2
CARVED_TEST_SEED = 0

FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_HOW_TO_GET = {
    "mnist": "download the four *-ubyte.gz files from the MNIST page into {folder}",
    "fashion-mnist": "run `apt-get install dataset-fashion-mnist` (Debian) or download the four "
    "*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist into {folder}",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(the archive or its extracted cifar-10-batches-py folder both work)",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
    "(the archive or its extracted cifar-100-python folder both work)",
    "image-folder": "pass {root} holding <class>/<image> or train/<class>/<image>",
}


@dataclass(frozen=True)
class ArgumentNames:
    """How error messages name the options of ``load_dataset``: its Python arguments by
    default, the command line's flags when the CLI loads the data (``CLI_NAMES``)."""

    root: str = "root=<folder>"
    image_size: str = "image_size"
    grayscale: str = "grayscale"
    seed: str = "seed"


PYTHON_NAMES = ArgumentNames()
CLI_NAMES = ArgumentNames(root="--data-root <folder>", image_size="--image-size",
                          grayscale="--grayscale", seed="--seed")


def uses_zca_by_default(name: str) -> bool:
    """ZCA whitening is the protocol's default for every dataset except the MNIST-like ones."""
    _check_name(name, in_memory=True)
    return name not in MNIST_LIKE


def allows_flip(name: str) -> bool:
    """Horizontal flips are label-preserving except for digits and clothing silhouettes."""
    _check_name(name, in_memory=True)
    return name not in MNIST_LIKE


def data_home() -> Path:
    return _expanded(os.environ.get("ISA_DISTILL_DATA", "~/data"), "ISA_DISTILL_DATA")


def _expanded(text: str | os.PathLike, what: str) -> Path:
    """``text`` with ``~`` expanded, checked for what would otherwise fail deep inside pathlib
    (and break `isa-distill info`): a ``~user`` of no user, a name too long, no permission."""
    try:
        path = Path(text).expanduser()
        path.exists()
    except RuntimeError:  # Path.expanduser: "Could not determine home directory."
        home = Path(text).parts[0]
        raise DatasetNotFoundError(f"{what} {text}: cannot expand {home}: no such user") from None
    except OSError as error:
        raise DatasetNotFoundError(f"{what} {text}: {reason(error)}") from error
    return path


def _check_name(name: str, *, in_memory: bool = False) -> None:
    if name == IN_MEMORY and in_memory:
        return
    if name == IN_MEMORY:
        raise DatasetNotFoundError(
            "this data was handed over as tensors (isa_distill.distill_tensors), so there are no "
            "files to read it from again; evaluate such a run in Python with "
            "isa_distill.evaluate.evaluate_set (docs/using-a-distilled-set.md)"
        )
    if name not in KNOWN_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")


def _candidates(name: str, root: Path | None) -> list[Path]:
    subfolders = {
        "mnist": ["mnist", "MNIST/raw"],
        "fashion-mnist": ["fashion-mnist", "FashionMNIST/raw"],
        "cifar10": ["cifar-10-batches-py", "cifar-10-python.tar.gz"],
        "cifar100": ["cifar-100-python", "cifar-100-python.tar.gz"],
    }[name]
    if root is not None:
        return [root] + [root / sub for sub in subfolders]
    system = {
        "mnist": [Path("/usr/share/datasets/mnist")],
        "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
    }.get(name, [])
    return [data_home() / sub for sub in subfolders] + system


def _looks_complete(name: str, path: Path) -> bool:
    if name in ("mnist", "fashion-mnist"):
        return is_dir(path) and has_idx_files(path)
    if is_file(path):
        return path.name.endswith((".tar.gz", ".tgz", ".tar"))
    meta = (CIFAR100_FILES if name == "cifar100" else CIFAR10_FILES)["meta"]
    return is_file(path / meta)


def _locate(name: str, root: Path | None, names: ArgumentNames = PYTHON_NAMES) -> Path:
    candidates = _candidates(name, root)
    for path in candidates:
        if _looks_complete(name, path):
            return path
    looked = "\n  ".join(str(p) for p in candidates)
    elsewhere = f" (or set ISA_DISTILL_DATA to the folder holding it, or pass {names.root})"
    raise DatasetNotFoundError(
        # The first place looked is where the files go (the last line alone, which `isa-distill
        # info` shows, still says it).
        f"dataset {name!r} not found; looked in:\n  {looked}\n"
        f"To get it: {_HOW_TO_GET[name].format(folder=candidates[0])}"
        + ("" if root is not None else elsewhere)
    )


def _check_class_sizes(
    name: str, source: Path | None, train: Split, class_names: list[str], holdouts: list[str]
) -> None:
    """Every class needs an image to distil from, and at least one more for each stratified
    hold-out taken from train: said here in the user's terms rather than scikit-learn's."""
    counts = torch.bincount(train.labels, minlength=len(class_names))
    smallest = int(counts.argmin())
    count, needed = int(counts[smallest]), 1 + len(holdouts)
    if count >= needed:
        return
    where = f"the train split of {name}" + ("" if source is None else f" ({source})")
    if count == 0:
        raise DatasetFormatError(f"{where} has no images of class {class_names[smallest]!r}")
    images = "image" if count == 1 else "images"
    need = "hold-out needs" if len(holdouts) == 1 else "hold-outs need"
    raise DatasetFormatError(
        f"class {class_names[smallest]!r} has only {count} {images} in {where}; the "
        f"{' and '.join(holdouts)} {need} at least {needed} images per class"
    )


def _check_room_for(
    name: str, root: Path | None, split: Split, size: object, num_classes: int, what: str
) -> None:
    """A stratified hold-out needs an image of every class on both sides; an image folder too
    small for that is told what to do instead of getting scikit-learn's message."""
    if name != "image-folder" or isinstance(size, bool) or not isinstance(size, (int, float)):
        return  # bad sizes are stratified_holdout's to report
    held = math.ceil(size * len(split)) if isinstance(size, float) else size
    if held == 0 or min(held, len(split) - held) >= num_classes:
        return
    share = f"{size:.0%}" if isinstance(size, float) else str(size)
    raise DatasetFormatError(
        f"image folder {root}: {len(split)} images of {num_classes} classes are too few to hold "
        f"out a stratified {what} split ({share} of them, with at least one image of every class "
        f"on each side); add images, or give the folder train/, val/ and test/ sub-folders "
        f"(each with the class sub-folders)"
    )


def _raw_splits(
    name: str, root: Path | None, image_size: int | None, grayscale: bool, names: ArgumentNames
) -> tuple[dict[str, Split], list[str], Path | None]:
    """The splits found, the class names and where they were read (None: bundled data)."""
    if name == "digits":
        train, class_names = load_digits_split()
        return {"train": train}, class_names, None
    if name == "image-folder":
        if root is None:
            how = _HOW_TO_GET[name].format(root=names.root)
            raise DatasetNotFoundError(f"image-folder has no default location: {how}")
        if is_file(root):
            raise DatasetNotFoundError(f"image folder {root} is a file, not a folder")
        if not is_dir(root):
            raise DatasetNotFoundError(f"image folder {root} does not exist")
        splits, class_names = load_image_folder(
            root, image_size=image_size or 32, grayscale=grayscale
        )
        return splits, class_names, root
    source = _locate(name, root, names)
    if name in ("mnist", "fashion-mnist"):
        labels = FASHION_MNIST_LABELS if name == "fashion-mnist" else [str(d) for d in range(10)]
        return load_idx_splits(source), labels, source
    train, test, class_names = load_cifar(source, fine=name == "cifar100")
    return {"train": train, "test": test}, class_names, source


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    val_size: int | float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    grayscale: bool = False,
    argument_names: ArgumentNames = PYTHON_NAMES,
) -> DatasetSplits:
    """Load ``name`` as train / val / test splits of float32 images in [0, 1].

    Args:
        name: one of ``KNOWN_DATASETS``.
        root: where the files are (see the module docstring for defaults); the result's
            ``root`` records it (see ``DatasetSplits``).
        val_size: validation hold-out from train: a fraction in [0, 1) or a count (0 = none).
        seed: seeds the validation hold-out only.
        image_size: image-folder only: images are resized to this square size (default 32).
        grayscale: image-folder only: load one channel instead of RGB.
        argument_names: how error messages name these options (``CLI_NAMES`` from the CLI).

    Raises:
        ValueError: unknown ``name`` or a bad option.
        DatasetNotFoundError / DatasetFormatError: missing or unreadable files.
    """
    _check_name(name)
    check_seed(seed, argument_names.seed)
    if name != "image-folder" and (image_size is not None or grayscale):
        names = argument_names
        raise ValueError(f"{names.image_size} and {names.grayscale} apply to image-folder only, "
                         f"not {name!r}")
    if isinstance(image_size, int) and image_size > MAX_IMAGE_SIZE:
        raise ValueError(
            f"{argument_names.image_size} must be at most {MAX_IMAGE_SIZE}, got {image_size}: "
            "every image is held in memory at that size, and distillation is meant for small "
            "images (32 or 64 pixels in the paper)"
        )
    root = None if root is None else _expanded(root, "data root")
    splits, class_names, source = _raw_splits(name, root, image_size, grayscale, argument_names)
    for split_name, split in splits.items():
        check_labels(split, len(class_names), f"{name} {split_name} split",
                     DatasetFormatError)
    train = splits["train"]
    holdouts = [] if "test" in splits else ["carved test"]
    if "val" not in splits and val_size != 0:
        holdouts.append("validation")
    _check_class_sizes(name, source, train, class_names, holdouts)
    if "test" not in splits:
        _check_room_for(name, root, train, CARVED_TEST_FRACTION, len(class_names), "test")
        train, splits["test"] = stratified_holdout(
            train, CARVED_TEST_FRACTION, seed=CARVED_TEST_SEED, what="carved test split"
        )
    if "val" in splits:
        val = splits["val"]
    else:
        _check_room_for(name, root, train, val_size, len(class_names), "validation")
        train, val = stratified_holdout(train, val_size, seed=seed)
    return DatasetSplits(name, train, val, splits["test"], list(class_names),
                         root=_root_to_record(name, root))


def _root_to_record(name: str, root: Path | None) -> str | None:
    """The root to read ``name`` from again, absolute: the given one, or ``ISA_DISTILL_DATA``
    when the files were found under it; None when the default lookup finds them anyway."""
    if name == "digits":
        return None
    if root is not None:
        return str(root.resolve())
    if "ISA_DISTILL_DATA" not in os.environ:
        return None
    home = data_home().resolve()
    return str(home) if _locate(name, None).resolve().is_relative_to(home) else None
