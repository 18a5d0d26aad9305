"""File-system access for the loaders, with failures reported as one-line dataset errors.

pathlib raises "permission denied" or "file name too long" from ``is_dir()`` and friends as
tracebacks, and ``Path.rglob`` skips a folder it cannot list as if it were empty; these helpers
turn such failures into a ``DatasetFormatError`` that names the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DatasetFormatError


def reason(error: Exception) -> str:
    """The error in words, such as "permission denied" (not "[Errno 13] Permission denied: ...",
    which repeats the path)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def shown(path: str | os.PathLike) -> str:
    """``path`` printable as it is on disk: bytes that are not UTF-8 (which Python keeps as lone
    surrogates, unprintable to a UTF-8 terminal) appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def unreadable(path: str | os.PathLike, error: OSError) -> DatasetFormatError:
    return DatasetFormatError(f"cannot read {shown(path)}: {reason(error)}")


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError as error:
        raise unreadable(path, error) from error


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as error:
        raise unreadable(path, error) from error


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise unreadable(path, error) from error


def subfolders(folder: Path) -> list[Path]:
    """The sorted sub-folders of ``folder``, hidden ones (".git", ...) left out."""
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        raise unreadable(folder, error) from error
    return sorted(p for p in entries if not p.name.startswith(".") and is_dir(p))


def files_under(folder: Path, suffixes: set[str]) -> list[Path]:
    """The files below ``folder`` whose suffix (lower-cased) is one of ``suffixes``, sorted; a
    sub-folder that cannot be listed is an error."""

    def fail(error: OSError) -> None:
        raise unreadable(error.filename or folder, error) from error

    found = []
    for parent, _, names in os.walk(folder, onerror=fail):
        found.extend(Path(parent, n) for n in names if Path(n).suffix.lower() in suffixes)
    return sorted(p for p in found if is_file(p))
