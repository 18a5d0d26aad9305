"""Run directories: the distilled set, its metadata, a resumable checkpoint and a CSV log.

A run directory holds::

    distilled.safetensors   images and labels (network input space) + the preprocessor tensors
                            under "preprocessor.<name>" (standardisation and ZCA state); the
                            images are the STORED ones: with multi-formation F > 1 each decodes
                            to F x F training images (``Distilled.training_images``)
    meta.json               dataset, IPC, classes, preprocessing, label encoding, formation F,
                            full config, seed, steps done, processes (ranks) that ran it,
                            library version
    checkpoint.pt           torch.save of a plain dict: synthetic set, optimiser state, every pool
                            model with its optimiser and counter, all generator states
    log.csv                 step, loss (= kernel_loss + margin_loss), kernel_loss (the ISA KRR
                            loss), margin_loss (the label-margin term, <= 0), lr, val_acc
                            (empty when not measured), elapsed seconds

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a run
killed at any moment leaves either the previous or the new version of each file, never half of
one. The CSV is appended row by row; on resume, rows past the checkpoint (and a torn last line)
are dropped.

Damage is noticed: meta.json records the sha256 of checkpoint.pt and distilled.safetensors
(``"sha256": {file: hex}``), and every load checks the file against it (``RunDamagedError``
otherwise). A file and meta.json cannot be replaced together, so each hashed file is written in
three atomic moves:

1. the new version is written to its temporary sibling and hashed;
2. meta.json records that hash as pending (``"sha256_pending": {file: hex}``);
3. the file is moved into place; then meta.json records the hash as the file's and drops the
   pending one.

A kill before 2 leaves the old file and the old meta.json; between 2 and 3 the old file with
its hash recorded and the new one pending; after the move the new file with its hash pending.
A loader therefore accepts a file whose hash is the recorded or the pending one, and nothing
else. Runs written before hashes were recorded (no ``"sha256"`` in meta.json) load unchecked.

One process writes a run at a time: ``Run.writing()`` holds an exclusive ``flock`` on the
directory itself (no lock file to leave behind; the kernel drops it when the process dies), and
a second distillation of the same directory is refused (``RunInUseError``) before it writes.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # not on Windows, where directories are not locked
    fcntl = None

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .data.preprocess import Preprocessor
from .formation import as_training_set, check_formation

DISTILLED = "distilled.safetensors"
META = "meta.json"
CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
LOG_COLUMNS = ("step", "loss", "kernel_loss", "margin_loss", "lr", "val_acc", "elapsed")
OPTIONAL_LOG_COLUMNS = ("kernel_loss", "margin_loss", "val_acc")  # absent or empty: None
PREPROCESSOR_PREFIX = "preprocessor."
FORMATION_DECODING = (
    "stored image k decodes to formation^2 training images: tile (i, j) of an F x F grid, "
    "bilinearly upsampled to the full size, is training image k * F^2 + i * F + j, with the "
    "label of stored image k"
)
LABEL_ENCODING = (
    "learned soft labels (one row per image), initialised as centred one-hot "
    "(1 - 1/C on, -1/C off) divided by sqrt(C / 10); train with MSE on them"
)


HASHED_FILES = (CHECKPOINT, DISTILLED)
SHA256 = "sha256"  # meta.json key: {file name: sha256 of the version in place}
PENDING_SHA256 = "sha256_pending"  # {file name: sha256 of a version being moved into place}
# meta.json keys every run has, with their JSON types (bool is not an int here).
REQUIRED_META = {
    "dataset": str, "ipc": int, "num_classes": int, "channels": int, "image_size": int,
    "flip": bool, "seed": int, "steps_done": int, "preprocessing": dict, "config": dict,
}  # fmt: skip
OPTIONAL_META = {
    "class_names": list, "version": str, "elapsed_seconds": float,
    "data_root": (str, type(None)), SHA256: dict, PENDING_SHA256: dict, "world_size": int,
    "source": dict, "formation": int,
}  # fmt: skip


class RunExistsError(FileExistsError):
    """Something is already where the run directory would go, and we were not asked to resume
    it (a non-empty directory, or a regular file on the path)."""


class RunNotFoundError(FileNotFoundError):
    """The path is not a run directory (or lacks the file needed)."""


class RunInUseError(RuntimeError):
    """Another process is writing the directory: a run being distilled, or an experiment's
    output folder (``directory_lock``)."""


class RunDamagedError(RunNotFoundError):
    """A run file is not what isa-distill wrote: meta.json is malformed, or checkpoint.pt /
    distilled.safetensors does not match the sha256 recorded in meta.json, or is missing.

    A subclass of RunNotFoundError, so code that handles unreadable runs handles it too.
    """


def library_version() -> str:
    from . import __version__  # the package root is cheap to import once distill has loaded

    return __version__


def _temporary_sibling(path: Path) -> Path:
    """A new, empty, hidden file beside ``path``, created with mode 0666 less the umask (as
    ``open`` creates files; ``tempfile.mkstemp`` would give 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


def synced_sibling(path: Path, write: Callable[[Path], None]) -> Path:
    """A temporary sibling of ``path`` holding what ``write(tmp)`` wrote, fsynced (removed
    again if writing fails).

    The file keeps the mode a new file gets under the umask (0644 under umask 022), also when
    ``write`` replaces it (safetensors creates its files 0600), so the run's files are as
    readable as any other file the user writes.
    """
    tmp = _temporary_sibling(path)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
    except OSError as error:  # disk full, ...: name the file being written, not its sibling
        tmp.unlink(missing_ok=True)
        message = f"cannot write {path}: {error.strerror or error}"
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _serialised(to_bytes: Callable[[], bytes]) -> Callable[[Path], None]:
    """A writer of ``to_bytes()`` through Python's file I/O: torch and safetensors report a full
    disk as an opaque RuntimeError / SafetensorError, Python's write as OSError ENOSPC."""
    return lambda tmp: tmp.write_bytes(to_bytes())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a synced temporary sibling moved into place: a kill leaves the old
    or the new version, never half of one."""
    tmp = synced_sibling(path, write)
    try:
        os.replace(tmp, path)
    except OSError:  # e.g. a directory where the file goes: leave no temporary behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class StagedFile:
    """A new version of ``path``, written and fsynced to a temporary sibling, not yet in place."""

    path: Path
    tmp: Path
    sha256: str

    @classmethod
    def write(cls, path: Path, write: Callable[[Path], None]) -> StagedFile:
        tmp = synced_sibling(path, write)
        return cls(path, tmp, file_sha256(tmp))

    def move_into_place(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


def _preprocessor_parts(preprocessor: Preprocessor) -> tuple[dict[str, torch.Tensor], dict]:
    """Split the preprocessor state into tensors (safetensors) and plain values (JSON)."""
    tensors, values = {}, {}
    for key, value in preprocessor.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[PREPROCESSOR_PREFIX + key] = value.detach().cpu().contiguous()
        else:
            values[key] = value
    return tensors, values


# ----------------------------------------------------------------------------- meta.json checks


def _json_type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "an object", list: "a list", type(None): "null"}
    return " or ".join(names[k] for k in kinds)


def _has_json_type(value: Any, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def meta_problems(meta: Any) -> list[str]:
    """What is wrong with a parsed meta.json (empty when nothing is)."""
    if not isinstance(meta, dict):
        return [f"it is not a JSON object (it holds {type(meta).__name__} {meta!r:.40})"]
    missing = [key for key in REQUIRED_META if key not in meta]
    problems = [f"it lacks {', '.join(repr(key) for key in missing)}"] if missing else []
    expected = {**REQUIRED_META, **OPTIONAL_META}
    for key, kind in expected.items():
        if key in meta and not _has_json_type(meta[key], kind):
            problems.append(f"{key!r} must be {_json_type_name(kind)}, got {meta[key]!r:.40}")
    for key in (SHA256, PENDING_SHA256):
        if isinstance(meta.get(key), dict):
            problems += _hash_map_problems(key, meta[key])
    if isinstance(meta.get("config"), dict):
        problems += _config_problems(meta["config"])
    if not problems and "formation" in meta:
        problems += _formation_problems(meta)
    return problems


def _formation_problems(meta: dict) -> list[str]:
    """The formation factor must divide the image size and agree with the stored config."""
    try:
        check_formation(meta["formation"], meta["image_size"])
    except ValueError as error:
        return [str(error)]
    stored = meta["config"].get("formation", 1)
    if stored != meta["formation"]:
        return [f"'formation' is {meta['formation']} but its config has {stored}"]
    return []


def _hash_map_problems(key: str, hashes: dict) -> list[str]:
    problems = []
    for name, value in hashes.items():
        if name not in HASHED_FILES:
            problems.append(f"{key!r} names an unknown file {name!r}")
        elif not (isinstance(value, str) and len(value) == 64
                  and all(c in "0123456789abcdef" for c in value)):
            problems.append(f"{key}[{name!r}] must be a sha256 hex digest, got {value!r:.70}")
    return problems


_CONFIG_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}


def _config_problems(values: dict) -> list[str]:
    """Type and range problems of a stored DistillConfig (missing fields get their defaults)."""
    from .distill import DistillConfig  # runs is imported by distill; import it when needed

    problems = []
    for field in dataclasses.fields(DistillConfig):
        kinds = tuple(part.strip() for part in str(field.type).split("|"))
        if field.name not in values or not all(kind in _CONFIG_TYPES for kind in kinds):
            continue
        allowed = tuple(_CONFIG_TYPES[kind] for kind in kinds)
        if not _has_json_type(values[field.name], allowed):
            problems.append(f"config.{field.name} must be {_json_type_name(allowed)}, got "
                            f"{values[field.name]!r:.40}")
    if problems:
        return problems
    try:
        DistillConfig.from_dict(values).validate()
    except ValueError as error:
        return [f"its config is invalid: {error}"]
    return []


def _damaged_meta(path: Path, problems: list[str]) -> RunDamagedError:
    return RunDamagedError(
        f"{path / META} is damaged: {'; '.join(problems)}. meta.json is written by isa-distill "
        "and describes the run; restore it from a backup, or distil the run again"
    )


@contextlib.contextmanager
def directory_lock(path: Path, why: str) -> Iterator[None]:
    """An exclusive ``flock`` on the directory ``path`` for the duration (no lock file to leave
    behind; the kernel drops it when the process dies); ``RunInUseError`` saying ``why`` when
    another process holds it. A no-op where there is no ``fcntl`` (Windows)."""
    if fcntl is None:
        yield
        return
    handle = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUseError(f"{path} is in use: {why}") from None
        yield
    finally:
        os.close(handle)  # releases the lock


def nearest_existing(path: Path) -> Path | None:
    """``path`` if it exists, else its nearest ancestor that does (None: none does); when that
    is a regular file, no folder can be made at ``path``."""
    return next((part for part in (path, *path.parents) if part.exists()), None)


def _not_a_run_directory(path: Path) -> RunNotFoundError:
    """Why ``path`` cannot be opened as a run directory, in words."""
    blocking = nearest_existing(path)
    if blocking is not None and not blocking.is_dir():
        where = "it is" if blocking == path else f"{blocking} is"
        return RunNotFoundError(f"{path} is not a run directory: {where} a regular file")
    if blocking != path:
        return RunNotFoundError(f"{path} is not a run directory: it does not exist")
    return RunNotFoundError(f"{path} is not a run directory (no {META})")


@dataclass
class Run:
    """An open run directory; ``meta`` mirrors meta.json."""

    path: Path
    meta: dict[str, Any]

    @classmethod
    def create(cls, path: str | os.PathLike) -> Run:
        """A new run in ``path``, which must not exist or be an empty directory."""
        path = Path(path)
        cls.check_creatable(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, {})

    @staticmethod
    def check_creatable(path: str | os.PathLike) -> None:
        """``RunExistsError`` unless ``create(path)`` would succeed; changes nothing (the CLI
        asks before it loads any data)."""
        path = Path(path)
        blocking = nearest_existing(path)
        if blocking is not None and not blocking.is_dir():
            where = f"{path} is a regular file" if blocking == path else (
                f"{blocking}, on its path, is a regular file")
            raise RunExistsError(f"cannot create run directory {path}: {where}; choose another "
                                 "run directory (nothing was changed)")
        if path.exists() and any(path.iterdir()):
            raise RunExistsError(
                f"run directory {path} already exists and is not empty; resume it (--resume; "
                "resume=True in Python) or choose another run directory (nothing was changed)"
            )

    @classmethod
    def open(cls, path: str | os.PathLike) -> Run:
        """The run in ``path``, with meta.json checked (``RunDamagedError`` when malformed)."""
        path = Path(path)
        if not (path / META).is_file():
            raise _not_a_run_directory(path)
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as error:
            raise RunNotFoundError(f"cannot read {path / META}: {error}") from error
        except json.JSONDecodeError as error:
            raise _damaged_meta(path, [f"it is not valid JSON ({error})"]) from error
        problems = meta_problems(meta)
        if problems:
            raise _damaged_meta(path, problems)
        from .distill import DistillConfig

        # Fields added to the config since the run was written get their defaults.
        meta["config"] = DistillConfig.from_dict(meta["config"]).to_dict()
        return cls(path, meta)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """Hold the run directory's lock while this process writes it: another process that
        tries to write the same run meanwhile gets ``RunInUseError``."""
        return directory_lock(self.path, "another process is distilling into it; wait for that "
                                         "one to finish (or stop it) and resume then")

    @classmethod
    def open_for_resume(cls, path: str | os.PathLike, data) -> Run:
        """The run in ``path``, checked to distil ``data`` (a DatasetSplits) and to be intact.

        Runs written before hashes were recorded are adopted: their files are hashed as found.
        """
        run = cls.open(path)
        run.check_data(data)
        if SHA256 not in run.meta:
            run.meta[SHA256] = {name: file_sha256(run.path / name)
                                for name in HASHED_FILES if (run.path / name).is_file()}
            run.meta[PENDING_SHA256] = {}
        if (run.path / DISTILLED).is_file() or DISTILLED in run.meta[SHA256]:
            run.verify(DISTILLED)
        return run

    def check_data(self, data) -> None:
        """Raise ValueError unless ``data`` is the dataset (name and shapes) this run distils."""
        meta = self.meta
        stored = (meta["dataset"], meta["num_classes"], meta["channels"], meta["image_size"])
        given = (data.name, data.num_classes, data.channels, data.image_size)
        if stored[0] != given[0]:
            raise ValueError(
                f"run {self.path} distils {stored[0]!r}, cannot resume it on {given[0]!r}"
            )
        if stored != given:
            raise ValueError(
                f"run {self.path} distils {stored[0]} with {stored[1]} classes of "
                f"{stored[2]}x{stored[3]}x{stored[3]} images; the data given has {given[1]} "
                f"classes of {given[2]}x{given[3]}x{given[3]} (another data root?)"
            )

    # ------------------------------------------------------------------ meta.json

    def write_meta(self, data, config, preprocessor: Preprocessor, *, flip: bool,
                   steps_done: int, world_size: int = 1) -> None:
        _, preprocessing = _preprocessor_parts(preprocessor)
        self.meta = {
            "library": "isa-distill",
            "version": library_version(),
            "dataset": data.name,
            "data_root": getattr(data, "root", None),
            "ipc": config.ipc,
            "num_classes": data.num_classes,
            "class_names": list(data.class_names),
            "channels": data.channels,
            "image_size": data.image_size,
            "images": "network input space: apply the stored preprocessor's inverse to view, "
            "and its transform to real images before evaluating",
            "formation": config.formation,
            "formation_decoding": FORMATION_DECODING,
            "preprocessing": {**preprocessing, "tensors": f"{DISTILLED} ({PREPROCESSOR_PREFIX}*)"},
            "label_encoding": LABEL_ENCODING,
            "flip": flip,
            "seed": config.seed,
            "config": config.to_dict(),
            "steps_done": steps_done,
            "world_size": world_size,  # processes (torchrun ranks) distilling it
            "elapsed_seconds": 0.0,
            SHA256: {},
            PENDING_SHA256: {},
        }
        self._write_meta_file()

    def update_meta(self, *, steps_done: int, elapsed: float) -> None:
        self.meta.update(steps_done=steps_done, elapsed_seconds=round(elapsed, 3))
        self._write_meta_file()

    def record_resume(self, config, *, data_root: str | None, world_size: int = 1) -> None:
        """Store the config a resumed run continues with (e.g. more ``steps``), the number of
        processes continuing it and, when known, the data root it was resumed from."""
        self.meta["config"] = config.to_dict()
        self.meta["world_size"] = world_size
        if data_root is not None:
            self.meta["data_root"] = data_root
        self._write_meta_file()

    def record_source(self, source: dict[str, Any], *, label_encoding: str) -> None:
        """Mark the run as a set distilled elsewhere (``isa-distill import``): ``source`` says
        by what and from which file; nothing was distilled here."""
        self.meta.update(source=source, label_encoding=label_encoding)
        self._write_meta_file()

    def _write_meta_file(self) -> None:
        atomic_write_text(self.path / META, json.dumps(self.meta, indent=2) + "\n")

    # ------------------------------------------------------------------ hashed files

    def _write_hashed(self, name: str, write: Callable[[Path], None]) -> None:
        """Write ``name`` and record its sha256 in meta.json, in the order the module
        docstring explains, so that a kill at any point leaves a state ``verify`` accepts."""
        staged = StagedFile.write(self.path / name, write)
        try:
            self._record_pending(name, staged.sha256)
            staged.move_into_place()
        except BaseException:
            staged.discard()
            raise
        self._record_written(name, staged.sha256)

    def _record_pending(self, name: str, sha256: str) -> None:
        self.meta.setdefault(SHA256, {})
        self.meta.setdefault(PENDING_SHA256, {})[name] = sha256
        self._write_meta_file()

    def _record_written(self, name: str, sha256: str) -> None:
        self.meta[SHA256][name] = sha256
        self.meta[PENDING_SHA256].pop(name, None)
        self._write_meta_file()

    def verify(self, name: str) -> None:
        """Raise ``RunDamagedError`` unless ``name`` is a version meta.json recorded.

        The version found becomes the recorded one (in memory; the next meta.json write keeps
        it), so a later write starts from a state that matches the disk.
        """
        if SHA256 not in self.meta:
            return  # written before hashes were recorded: nothing to check against
        path = self.path / name
        recorded = {self.meta[SHA256].get(name), self.meta.get(PENDING_SHA256, {}).get(name)}
        recorded.discard(None)
        if not path.is_file():
            if recorded:
                what = "is not a regular file" if path.exists() else "is missing"
                raise RunDamagedError(
                    f"{path} {what}, although meta.json records that it was written; "
                    "restore it from a backup, or distil the run again"
                )
            raise RunNotFoundError(f"run {self.path} has no {name} yet")
        actual = file_sha256(path)
        if actual not in recorded:
            raise RunDamagedError(
                f"{path} is damaged: its sha256 ({actual[:12]}...) is not the one meta.json "
                "recorded when it was written, so its contents changed since; restore it from a "
                "backup, or distil the run again"
            )
        self.meta[SHA256][name] = actual
        self.meta.get(PENDING_SHA256, {}).pop(name, None)

    # ------------------------------------------------------------------ checkpoint

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        def to_bytes() -> bytes:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            return buffer.getvalue()

        self._write_hashed(CHECKPOINT, _serialised(to_bytes))

    def check_resumable(self) -> None:
        """Raise ``RunNotFoundError`` when there is no checkpoint to continue from."""
        path = self.path / CHECKPOINT
        if path.is_file() or CHECKPOINT in self.meta.get(SHA256, {}):
            return  # a checkpoint recorded but missing is damage, which loading reports
        raise RunNotFoundError(
            f"run {self.path} has no {CHECKPOINT}: it stopped before its first checkpoint, so "
            f"there is nothing to resume. To start it again from step 0, delete {self.path} and "
            f"run the same command without --resume (its settings are in {self.path / META})"
        )

    def load_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint, checked against its recorded sha256.

        Raises ``RunNotFoundError`` when the run stopped before its first checkpoint, and
        ``RunDamagedError`` when the file is missing, damaged or unreadable.
        """
        self.check_resumable()
        self.verify(CHECKPOINT)
        path = self.path / CHECKPOINT
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for a damaged pickle/zip
            # The first line only: torch goes on to suggest weights_only=False, which would run
            # whatever code a foreign file holds.
            text = str(error).strip()
            reason = text.splitlines()[0] if text else type(error).__name__
            raise RunDamagedError(f"cannot read checkpoint {path}: {reason}") from error
        return checkpoint

    # ------------------------------------------------------------------ distilled set

    def write_distilled(self, images: torch.Tensor, labels: torch.Tensor,
                        preprocessor: Preprocessor) -> None:
        tensors, _ = _preprocessor_parts(preprocessor)
        tensors["images"] = images.detach().cpu().contiguous()
        tensors["labels"] = labels.detach().cpu().contiguous()
        self._write_hashed(DISTILLED, _serialised(lambda: save(tensors)))

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
    """Parsed log rows; a torn last line from a killed run is skipped, like any line that is
    not a log row (bytes that are not UTF-8 become U+FFFD and fail to parse)."""
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
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
    def formation(self) -> int:
        """The multi-formation factor F (1 for runs written before it existed)."""
        return int(self.meta.get("formation", 1))

    @property
    def training_images(self) -> torch.Tensor:
        """The images networks train on: the stored ``images`` decoded, IPC x F^2 per class
        (``isa_distill.formation``); the stored images themselves when F = 1."""
        return as_training_set(self.images, self.labels, self.formation)[0]

    @property
    def training_labels(self) -> torch.Tensor:
        """One label row per training image: a stored image's label, shared by its tiles."""
        return as_training_set(self.images, self.labels, self.formation)[1]

    @property
    def pixel_images(self) -> torch.Tensor:
        """The stored images in pixel space ([0, 1] up to what distillation did), for viewing."""
        return self.preprocessor.inverse(self.images)


def load_distilled(path: str | os.PathLike) -> Distilled:
    """Load a run directory (or its distilled.safetensors) written by ``distill``.

    Raises ``RunNotFoundError`` when ``path`` is not a run (or has no distilled set yet) and
    ``RunDamagedError`` when meta.json is malformed or the file does not match its sha256.
    """
    path = Path(path)
    folder = path.parent if path.is_file() and path.name == DISTILLED else path
    run = Run.open(folder)
    file = folder / DISTILLED
    run.verify(DISTILLED)
    if not file.is_file():  # a run written before hashes were recorded
        raise RunNotFoundError(f"run {folder} has no {DISTILLED} yet")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as error:
        raise RunDamagedError(f"cannot read {file}: {error}") from error
    missing = {"images", "labels"} - set(tensors)
    if missing:
        raise RunDamagedError(f"{file} lacks {sorted(missing)}")
    state: dict[str, Any] = {
        key: value for key, value in run.meta.get("preprocessing", {}).items() if key != "tensors"
    }
    for key, value in tensors.items():
        if key.startswith(PREPROCESSOR_PREFIX):
            state[key[len(PREPROCESSOR_PREFIX):]] = value
    try:
        preprocessor = Preprocessor.from_state_dict(state)
    except ValueError as error:
        raise RunDamagedError(f"{folder}: stored preprocessing is incomplete: {error}") from error
    problems = _set_problems(run.meta, tensors["images"], tensors["labels"])
    if problems:
        raise _damaged_meta(folder, problems)
    return Distilled(tensors["images"], tensors["labels"], run.meta, preprocessor)


def _set_problems(meta: dict[str, Any], images: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Where meta.json's description of the set disagrees with the stored tensors (a file
    edited by hand or taken from another run): every later use would fail or mislabel."""
    classes, ipc = meta["num_classes"], meta["ipc"]
    names = meta.get("class_names")
    problems = []
    if classes < 1 or ipc < 1:
        problems.append(f"num_classes {classes} and ipc {ipc} must be positive")
    elif images.ndim != 4 or len(images) != classes * ipc:
        problems.append(f"num_classes {classes} x ipc {ipc} != the {len(images)} stored images")
    if labels.ndim == 2 and labels.shape != (len(images), classes):
        problems.append(f"the stored labels are {tuple(labels.shape)}, not ({len(images)}, "
                        f"num_classes {classes})")
    if names and len(names) != classes:
        problems.append(f"{len(names)} class_names for num_classes {classes}")
    channels, size = meta.get("channels"), meta.get("image_size")
    if images.ndim == 4 and channels is not None and size is not None:
        formation = int(meta.get("formation", 1))
        stored = (channels, size, size)  # a multi-formation mosaic has the real images' size
        if tuple(images.shape[1:]) != stored:
            problems.append(f"channels {channels} and image_size {size} describe images of "
                            f"{stored}, the stored ones are {tuple(images.shape[1:])}"
                            + ("" if formation == 1 else f" (formation {formation})"))
    if not images.is_floating_point() or not torch.isfinite(images).all():
        problems.append(f"the stored images are {images.dtype} with NaN/Inf or not floats")
    if labels.is_floating_point() and not torch.isfinite(labels).all():
        problems.append("the stored labels hold NaN or Inf")
    return problems
