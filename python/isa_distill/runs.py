"""Run directories: the distilled set, its metadata, a resumable checkpoint and a CSV log.

A run directory holds::

    distilled.safetensors   images and labels (network input space) + the preprocessor tensors
                            under "preprocessor.<name>" (standardisation and ZCA state)
    meta.json               dataset, IPC, classes, preprocessing, label encoding, full config,
                            seed, steps done, library version
    checkpoint.pt           torch.save of a plain dict: synthetic set, optimiser state, every pool
                            model with its optimiser and counter, all generator states
    log.csv                 step, loss (= kernel_loss + margin_loss), kernel_loss (the ISA KRR
                            loss), margin_loss (the label-margin term, <= 0), lr, val_acc
                            (empty when not measured), elapsed seconds

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a run
killed at any moment leaves either the previous or the new version of each file, never half of
one. The CSV is appended row by row; on resume, rows past the checkpoint (and a torn last line)
are dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .data.preprocess import Preprocessor

DISTILLED = "distilled.safetensors"
META = "meta.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
LOG_COLUMNS = ("step", "loss", "kernel_loss", "margin_loss", "lr", "val_acc", "elapsed")
OPTIONAL_LOG_COLUMNS = ("kernel_loss", "margin_loss", "val_acc")  # absent or empty: None
PREPROCESSOR_PREFIX = "preprocessor."
LABEL_ENCODING = (
    "learned soft labels (one row per image), initialised as centred one-hot "
    "(1 - 1/C on, -1/C off) divided by sqrt(C / 10); train with MSE on them"
)


class RunExistsError(FileExistsError):
    """The run directory already holds something and we were not asked to resume it."""


class RunNotFoundError(FileNotFoundError):
    """The path is not a run directory (or lacks the file needed)."""


def library_version() -> str:
    from . import __version__  # the package root is cheap to import once distill has loaded

    return __version__


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then move it into place."""
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _preprocessor_parts(preprocessor: Preprocessor) -> tuple[dict[str, torch.Tensor], dict]:
    """Split the preprocessor state into tensors (safetensors) and plain values (JSON)."""
    tensors, values = {}, {}
    for key, value in preprocessor.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[PREPROCESSOR_PREFIX + key] = value.detach().cpu().contiguous()
        else:
            values[key] = value
    return tensors, values


@dataclass
class Run:
    """An open run directory; ``meta`` mirrors meta.json."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def create(cls, path: str | os.PathLike) -> Run:
        """A new run in ``path``, which must not exist or be an empty directory."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunExistsError(
                f"run directory {path} already exists and is not empty; resume it or choose "
                "another run directory (nothing was changed)"
            )
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, {})

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        path = Path(path)
        if not (path / META).is_file():
            raise RunNotFoundError(f"{path} is not a run directory (no {META})")
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RunNotFoundError(f"cannot read {path / META}: {error}") from error
        return cls(path, meta)

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike, *, dataset: str) -> Run:
        run = cls.open(path)
        if run.meta.get("dataset") != dataset:
            raise ValueError(
                f"run {path} distils {run.meta.get('dataset')!r}, cannot resume it on {dataset!r}"
            )
        return run

    # ------------------------------------------------------------------ meta.json

    def write_meta(self, data, config, preprocessor: Preprocessor, *, flip: bool,
                   steps_done: int) -> None:
        _, preprocessing = _preprocessor_parts(preprocessor)
        self.meta = {
            "library": "isa-distill",
            "version": library_version(),
            "dataset": data.name,
            "ipc": config.ipc,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "channels": data.channels,
            "image_size": data.image_size,
            "images": "network input space: apply the stored preprocessor's inverse to view, "
            "and its transform to real images before evaluating",
            "preprocessing": {**preprocessing, "tensors": f"{DISTILLED} ({PREPROCESSOR_PREFIX}*)"},
            "label_encoding": LABEL_ENCODING,
            "flip": flip,
            "seed": config.seed,
            "config": config.to_dict(),
            "steps_done": steps_done,
            "elapsed_seconds": 0.0,
        }
        atomic_write_text(self.path / META, json.dumps(self.meta, indent=2) + "\n")

    def update_meta(self, *, steps_done: int, elapsed: float) -> None:
        self.meta.update(steps_done=steps_done, elapsed_seconds=round(elapsed, 3))
        atomic_write_text(self.path / META, json.dumps(self.meta, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoint

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, or None if the run died before writing one."""
        path = self.path / CHECKPOINT
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged pickle/zip
            raise RunNotFoundError(f"cannot read checkpoint {path}: {error}") from error

    # ------------------------------------------------------------------ distilled set

    def write_distilled(self, images: torch.Tensor, labels: torch.Tensor,
                        preprocessor: Preprocessor) -> None:
        tensors, _ = _preprocessor_parts(preprocessor)
        tensors["images"] = images.detach().cpu().contiguous()
        tensors["labels"] = labels.detach().cpu().contiguous()
        atomic_write(self.path / DISTILLED, lambda tmp: save_file(tensors, str(tmp)))

    # ------------------------------------------------------------------ log.csv

    def append_log(self, row: dict[str, Any]) -> None:
        path = self.path / LOG
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in LOG_COLUMNS})

    def read_log(self, upto_step: int | None = None) -> list[dict[str, Any]]:
        """Rows with step <= upto_step; the file is rewritten without the rest (resume)."""
        rows = read_log(self.path / LOG)
        if upto_step is not None:
            kept = [row for row in rows if row["step"] <= upto_step]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            for row in kept:
                writer.writerow({k: "" if row[k] is None else row[k] for k in LOG_COLUMNS})
            atomic_write_text(self.path / LOG, buffer.getvalue())
            rows = kept
        return rows


def read_log(path: Path) -> list[dict[str, Any]]:
    """Parsed log rows; a torn last line from a killed run is skipped."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            try:
                row = {
                    "step": int(raw["step"]),
                    "loss": float(raw["loss"]),
                    "lr": float(raw["lr"]),
                    "elapsed": float(raw["elapsed"]),
                }
                for name in OPTIONAL_LOG_COLUMNS:  # logs of older versions lack some columns
                    row[name] = float(raw[name]) if raw.get(name) else None
            except (KeyError, TypeError, ValueError):
                continue
            rows.append(row)
    return rows


@dataclass
class Distilled:
    """A distilled set as stored: images in network input space, learned labels, metadata."""

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any]
    preprocessor: Preprocessor

    @property
    def pixel_images(self) -> torch.Tensor:
        """The images in pixel space ([0, 1] up to what distillation did), for viewing."""
        return self.preprocessor.inverse(self.images)


def load_distilled(path: str | os.PathLike) -> Distilled:
    """Load a run directory (or its distilled.safetensors) written by ``distill``."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    run = Run.open(folder)
    file = folder / DISTILLED
    if not file.is_file():
        raise RunNotFoundError(f"run {folder} has no {DISTILLED} yet")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise RunNotFoundError(f"cannot read {file}: {error}") from error
    missing = {"images", "labels"} - set(tensors)
    if missing:
        raise RunNotFoundError(f"{file} lacks {sorted(missing)}")
    state: dict[str, Any] = {
        key: value for key, value in run.meta.get("preprocessing", {}).items() if key != "tensors"
    }
    for key, value in tensors.items():
        if key.startswith(PREPROCESSOR_PREFIX):
            state[key[len(PREPROCESSOR_PREFIX):]] = value
    try:
        preprocessor = Preprocessor.from_state_dict(state)
    except ValueError as error:
        raise RunNotFoundError(f"{folder}: stored preprocessing is incomplete: {error}") from error
    return Distilled(tensors["images"], tensors["labels"], run.meta, preprocessor)
