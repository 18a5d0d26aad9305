"""Names chosen on the command line (variants, arms), checked before any work starts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def resolve_names(names: Sequence[str] | None, known: Mapping[str, T], noun: str) -> list[T]:
    """The objects of ``known`` named by ``names`` (None: all of them, in order); ValueError for
    an empty list, an unknown name (naming the known ones) or a repeated one."""
    names = tuple(known) if names is None else tuple(names)
    if not names:
        raise ValueError(f"{noun}s must name at least one {noun}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {noun}s {unknown}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{noun}s must be distinct, got {list(names)}")
    return [known[n] for n in names]
