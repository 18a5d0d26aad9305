"""Distilled sets published by other projects, converted into run directories.

``isa-distill import --from SOURCE FILE RUN_DIR --dataset NAME`` writes a run directory that
``evaluate``, ``cross-arch``, ``show`` and ``export`` read like a distilled one, so sets from
other methods are evaluated with the same protocol, side by side. What each source saves, and
the preprocessing its images are in (recorded with the run, and applied to the real data at
evaluation):

``dc``     DC, DSA and DM (VICO-UoE/DatasetCondensation): a ``torch.save``d dict whose ``"data"``
           holds one ``[images, labels]`` pair per experiment (``--experiment K``, default 0),
           images (M, c, h, w) after ``Normalize(mean, std)`` with the constants of
           ``DC_STATS``, labels (M,) class indices. No ZCA.
``mtt``    MTT (GeorgeCazenavette/mtt-distillation): ``images_best.pt`` (M, c, h, w) and
           ``labels_best.pt`` (M,) tensors (``--labels``, default: the file name with
           "images" replaced by "labels"). Without ``--zca``: ``Normalize`` with ``DC_STATS``.
           With ``--zca`` (MTT's ``--zca``): raw pixels in [0, 1] whitened by kornia's
           ``ZCAWhitening(eps=0.1)`` fitted on the train split (centred, ridge 0.1 added to the
           covariance's eigenvalues). ``--zca`` or ``--no-zca`` must be given.
``frepo``  FRePo (``save_proto_np``): an .npz with ``image`` (M, h, w, c) and ``label`` (M, C)
           learned labels. Standardised with FRePo's constants (``FREPO_STATS``), then, except
           for MNIST and Fashion-MNIST, the protocol's ZCA (centred, ridge 0.1 * trace / D),
           fitted on the train split.
``kip``    KIP (neural_tangents' KIP code): an .npz with ``images`` (M, h, w, c) and ``labels``
           (M, C). Standardised with the train split's per-channel mean and std; with ZCA (the
           default except for MNIST and Fashion-MNIST): every image centred and scaled to unit
           L2 norm, then whitened without centring, ridge ``--zca-reg`` (default 0.1) * trace /
           D. KIP's sets were made with different ZCA strengths: give the one the set was made
           with.

``--zca`` / ``--no-zca`` and ``--zca-reg`` override these defaults. The .npz readers also accept
the other source's key names and NCHW arrays. Published files are read with
``torch.load(weights_only=True)`` (numpy scalars allowed) or ``numpy.load`` without pickles:
importing a file never runs code from it.

Each dataset's classes must have equally many images (the random-subset baseline of the same
IPC stands beside the set at evaluation); the run stores them class by class. The run's ``meta.json`` gets a ``"source"`` entry
(format, file, its sha256, the preprocessing in words); ``steps_done`` is 0 and its ``config``
describes the evaluation network only (Conv, width 128, depth 3, the networks of these papers).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ArgumentNames, DatasetSplits, load_dataset
from .data.preprocess import Preprocessor
from .data.registry import MNIST_LIKE, PYTHON_NAMES
from .runs import Run, file_sha256

SOURCES = ("dc", "mtt", "kip", "frepo")
SOURCE_NAMES = {"dc": "DC/DSA/DM", "mtt": "MTT", "kip": "KIP", "frepo": "FRePo"}
DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100")
_CIFAR_DC = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
DC_STATS = {"mnist": ([0.1307], [0.3081]), "fashion-mnist": ([0.2861], [0.3530]),
            "cifar10": _CIFAR_DC, "cifar100": _CIFAR_DC}  # fmt: skip
FREPO_STATS = {
    "mnist": ([0.1307], [0.3081]), "fashion-mnist": ([0.2861], [0.3530]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762]),
}  # fmt: skip
MTT_ZCA_EPS = 0.1  # kornia.enhance.ZCAWhitening(eps=0.1), absolute
ZCA_REG = 0.1  # relative: ridge = ZCA_REG * trace(cov) / D
NPZ_KEYS = {"frepo": ("image", "label"), "kip": ("images", "labels")}
EVAL_NETWORK = dict(arch="conv", width=128, depth=3)  # the evaluation ConvNet of these papers


class ImportFormatError(ValueError):
    """The file is not what its ``--from`` source writes."""


@dataclass
class PublishedSet:
    images: torch.Tensor  # (M, c, h, w) float32, in the source's network input space
    labels: torch.Tensor  # (M,) int64 class indices or (M, C) float32 labels
    details: dict[str, Any]  # what was read, for meta.json


# ----------------------------------------------------------------------------- readers


def _unreadable(path: Path, reader: str, error: BaseException) -> ImportFormatError:
    """The loader's complaint, first line only, naming the file: a damaged, empty or foreign
    file raises whatever its parser stumbles on (EOFError, zipfile.BadZipFile, OSError,
    RuntimeError from torch's zip reader, ...), and all of them mean the same to the user."""
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else type(error).__name__
    if isinstance(error, EOFError) or (path.is_file() and path.stat().st_size == 0):
        first_line = f"{first_line} (the file is empty or cut short)"
    return ImportFormatError(f"cannot read {path} with {reader}: {first_line}")


def _torch_file(path: Path) -> Any:
    """``torch.load`` without running pickled code; numpy scalars (DC stores its accuracies as
    numpy floats) are allowed."""
    reader = "torch.load(weights_only=True)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # refused a global: retried below with numpy's scalar types allowed
    except Exception as error:  # the file itself is unreadable (see _unreadable)
        raise _unreadable(path, reader, error) from error
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    module = getattr(np, "dtypes", None)  # numpy >= 1.25
    dtypes = [] if module is None else [getattr(module, n) for n in dir(module)
                                        if n.endswith("DType")]
    allowed: list[Any] = [np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"),
                          (scalar, "numpy._core.multiarray.scalar")]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise _unreadable(path, reader, error) from error


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise ImportFormatError(f"{what} is a {type(value).__name__}, not a tensor")
    return value.detach().cpu()


def read_dc(path: Path, experiment: int = 0) -> PublishedSet:
    saved = _torch_file(path)
    data = saved.get("data") if isinstance(saved, dict) else None
    if not isinstance(data, (list, tuple)) or not data:
        keys = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise ImportFormatError(f"{path} is not a DC/DSA/DM result file: expected a dict with a "
                                f"non-empty 'data' list of [images, labels] pairs, found {keys}")
    if not 0 <= experiment < len(data):
        raise ImportFormatError(f"--experiment {experiment} does not exist: {path} holds "
                                f"{len(data)} experiment(s), 0 to {len(data) - 1}")
    pair = data[experiment]
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ImportFormatError(f"{path}: data[{experiment}] must be an [images, labels] pair")
    images = _tensor(pair[0], f"{path}: data[{experiment}][0]")
    labels = _tensor(pair[1], f"{path}: data[{experiment}][1]")
    return PublishedSet(images.float(), labels, {"experiment": experiment,
                                                  "experiments_in_file": len(data)})


def mtt_labels_path(images_path: Path) -> Path:
    """``labels_best.pt`` beside ``images_best.pt`` (any ``images`` in the name -> ``labels``)."""
    if "images" not in images_path.name:
        raise ImportFormatError(f"cannot tell where the labels of {images_path} are (its name has "
                                "no 'images' to replace by 'labels'); pass --labels FILE")
    return images_path.with_name(images_path.name.replace("images", "labels"))


def read_mtt(path: Path, labels_path: Path | None = None) -> PublishedSet:
    labels_path = labels_path if labels_path is not None else mtt_labels_path(path)
    if not labels_path.is_file():
        raise ImportFormatError(f"labels file {labels_path} not found; MTT saves labels_best.pt "
                                "beside images_best.pt (or pass --labels FILE)")
    images = _tensor(_torch_file(path), str(path))
    labels = _tensor(_torch_file(labels_path), str(labels_path))
    return PublishedSet(images.float(), labels, {"labels_file": str(labels_path.resolve())})


def read_npz(path: Path, source: str) -> PublishedSet:
    try:
        # Opened here, not by numpy, which leaves the file open when it is not a zip archive.
        with open(path, "rb") as handle:
            arrays = np.load(handle, allow_pickle=False)
            if isinstance(arrays, np.ndarray):  # a bare .npy array, not named arrays
                raise ValueError("it is a single .npy array, not an .npz archive of named arrays")
            stored = {key: arrays[key] for key in arrays.files}
    except Exception as error:  # the file itself is unreadable (see _unreadable)
        raise _unreadable(path, "numpy.load as an .npz archive", error) from error
    for image_key, label_key in (NPZ_KEYS[source], *NPZ_KEYS.values()):
        if image_key in stored and label_key in stored:
            images = torch.from_numpy(np.asarray(stored[image_key], dtype=np.float32))
            labels = torch.from_numpy(np.asarray(stored[label_key]))
            return PublishedSet(images, labels, {"keys": [image_key, label_key]})
    image_key, label_key = NPZ_KEYS[source]
    raise ImportFormatError(f"{path} has the arrays {sorted(stored)}; a {SOURCE_NAMES[source]} "
                            f"file has {image_key!r} and {label_key!r}")


# ----------------------------------------------------------------------------- checks


def _channels_first(images: torch.Tensor, channels: int, size: int, path: Path) -> torch.Tensor:
    """(M, c, h, w) from NCHW or NHWC images of the dataset's shape."""
    if images.ndim == 4 and tuple(images.shape[1:]) == (channels, size, size):
        return images.contiguous()
    if images.ndim == 4 and tuple(images.shape[1:]) == (size, size, channels):
        return images.permute(0, 3, 1, 2).contiguous()
    raise ImportFormatError(f"{path}: images of shape {tuple(images.shape)} are not "
                            f"{channels}x{size}x{size} images (NCHW or NHWC) of the dataset")


def _checked_labels(labels: torch.Tensor, count: int, num_classes: int, path: Path):
    if labels.ndim == 2 and labels.shape == (count, num_classes) and labels.is_floating_point():
        if not torch.isfinite(labels).all():
            raise ImportFormatError(f"{path}: the labels contain NaN or Inf")
        return labels.float(), labels.argmax(1)
    if labels.ndim == 1 and labels.shape == (count,) and not labels.is_floating_point():
        classes = labels.long()
        if len(classes) and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ImportFormatError(f"{path}: labels must lie in [0, {num_classes}), found "
                                    f"[{int(classes.min())}, {int(classes.max())}]")
        return classes, classes
    raise ImportFormatError(f"{path}: labels must be ({count},) class indices or ({count}, "
                            f"{num_classes}) label rows, got {labels.dtype} "
                            f"{tuple(labels.shape)}")


def _ipc(classes: torch.Tensor, num_classes: int, path: Path) -> int:
    counts = torch.bincount(classes, minlength=num_classes)
    if len(set(counts.tolist())) != 1 or int(counts[0]) == 0:
        raise ImportFormatError(f"{path}: the classes have {counts.tolist()} images; isa-distill "
                                "evaluates sets with the same number of images per class")
    return int(counts[0])


# ----------------------------------------------------------------------------- preprocessing


def source_preprocessor(source: str, dataset: str, train_images: torch.Tensor, *,
                        zca: bool | None, zca_reg: float | None) -> tuple[Preprocessor, str]:
    """The preprocessing ``source``'s images of ``dataset`` are in, and a description."""
    mnist_like = dataset in MNIST_LIKE
    if source == "dc":
        if zca:
            raise ImportFormatError("DC/DSA/DM sets are not ZCA-whitened; leave --zca out")
        mean, std = DC_STATS[dataset]
        return (Preprocessor.fit(train_images, zca=False, mean=mean, std=std),
                f"Normalize(mean={mean}, std={std}) as DC's get_dataset, no ZCA")
    if source == "mtt":
        if zca is None:
            raise ImportFormatError("MTT sets exist with and without MTT's ZCA: pass --zca if it "
                                    "was distilled with --zca (MTT's CIFAR runs), else --no-zca")
        if not zca:
            mean, std = DC_STATS[dataset]
            return (Preprocessor.fit(train_images, zca=False, mean=mean, std=std),
                    f"Normalize(mean={mean}, std={std}) as MTT's get_dataset without --zca")
        eps = MTT_ZCA_EPS if zca_reg is None else zca_reg
        channels = train_images.shape[1]
        prep = Preprocessor.fit(train_images, zca=True, mean=[0.0] * channels,
                                std=[1.0] * channels, zca_reg=eps, zca_reg_absolute=True)
        return prep, (f"kornia ZCAWhitening(eps={eps}) of the raw [0, 1] pixels, fitted on the "
                      "train split, as MTT's --zca")
    zca = (not mnist_like) if zca is None else zca
    reg = ZCA_REG if zca_reg is None else zca_reg
    if source == "frepo":
        mean, std = FREPO_STATS[dataset]
        prep = Preprocessor.fit(train_images, zca=zca, zca_reg=reg, mean=mean, std=std)
        whitening = f", ZCA with ridge {reg:g} * trace / D fitted on the train split" if zca else ""
        return prep, f"standardised with FRePo's mean={mean}, std={std}{whitening}"
    prep = Preprocessor.fit(train_images, zca=zca, zca_reg=reg, zca_center=False, layer_norm=zca)
    whitening = (f", then per-image layer norm and uncentred ZCA with ridge {reg:g} * trace / D "
                 "(KIP's zca_normalize)") if zca else ""
    return prep, f"standardised with the train split's mean and std{whitening}"


# ----------------------------------------------------------------------------- the import


def import_set(
    source: str,
    file: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    dataset: str,
    data_root: str | os.PathLike | None = None,
    labels_file: str | os.PathLike | None = None,
    experiment: int = 0,
    zca: bool | None = None,
    zca_reg: float | None = None,
    argument_names: ArgumentNames = PYTHON_NAMES,
) -> Run:
    """Convert ``file``, written by ``source`` (one of ``SOURCES``) from ``dataset``, into a
    new run directory ``run_dir``; see the module docstring. Returns the open run."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)} (the datasets these "
                         f"projects published sets of that isa-distill reads), got {dataset!r}")
    if zca_reg is not None and (isinstance(zca_reg, bool) or not isinstance(zca_reg, Real)
                                or not 0 < zca_reg < math.inf):
        raise ValueError(f"zca_reg must be a finite positive number or None, got {zca_reg!r}")
    if isinstance(experiment, bool) or not isinstance(experiment, int) or experiment < 0:
        raise ValueError(f"experiment must be an int >= 0, got {experiment!r}")
    if zca is not None and not isinstance(zca, bool):
        raise ValueError(f"zca must be True, False or None, got {zca!r}")
    path = Path(file)
    if not path.is_file():
        raise ImportFormatError(f"{path} is not a file")
    target = Path(run_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        Run.create(target)  # raises RunExistsError, saying why, before any work is done
    if source == "dc":
        published = read_dc(path, experiment)
    elif source == "mtt":
        published = read_mtt(path, None if labels_file is None else Path(labels_file))
    else:
        published = read_npz(path, source)
    data = load_dataset(dataset, data_root, val_size=0, argument_names=argument_names)
    images = _channels_first(published.images, data.channels, data.image_size, path)
    if not torch.isfinite(images).all():
        raise ImportFormatError(f"{path}: the images contain NaN or Inf")
    labels, classes = _checked_labels(published.labels, len(images), data.num_classes, path)
    ipc = _ipc(classes, data.num_classes, path)
    order = torch.sort(classes, stable=True).indices  # class by class, as distilled runs are
    images, labels = images[order], labels[order]
    preprocessor, described = source_preprocessor(source, dataset, data.train.images, zca=zca,
                                                  zca_reg=zca_reg)
    return _write_run(run_dir, data, images, labels, preprocessor, ipc=ipc, source={
        "format": source, "method": SOURCE_NAMES[source], "file": str(path.resolve()),
        "file_sha256": file_sha256(path), "preprocessing": described, **published.details,
    })


def _write_run(run_dir, data: DatasetSplits, images, labels, preprocessor, *, ipc: int,
               source: dict[str, Any]) -> Run:
    from .distill import DistillConfig

    config = DistillConfig(ipc=ipc, steps=1, norm="none", device="cpu", **EVAL_NETWORK)
    run = Run.create(run_dir)
    run.write_meta(data, config, preprocessor, flip=False, steps_done=0)
    run.record_source(source, label_encoding=(
        "the source's learned labels, as published" if labels.is_floating_point() else
        "class indices, as published; evaluation trains on their centred one-hot encoding"))
    run.write_distilled(images, labels, preprocessor)
    return run


__all__ = ["DATASETS", "SOURCES", "ImportFormatError", "import_set"]
