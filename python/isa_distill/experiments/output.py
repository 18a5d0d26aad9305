"""Writing an experiment's results: Markdown + CSV tables and a PNG plot, each atomically.

Every file goes to a temporary sibling first and is moved into place (``runs.atomic_write``),
so an interrupted experiment leaves whole files from the previous or the new run, never half.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: experiments run on headless machines
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..runs import atomic_write, atomic_write_text  # noqa: E402

Row = dict[str, Any]


def format_cell(value: Any) -> str:
    """Floats with 4 significant decimals, NaN as 'n/a', everything else as str."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[Row], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Row], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buffer.getvalue()


def write_table(
    out_dir: Path, rows: Sequence[Row], columns: Sequence[str], *, name: str = "table",
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write ``<name>.md`` (optionally under a ``# title``) and ``<name>.csv`` in ``out_dir``."""
    if not rows:
        raise ValueError(f"table {name!r} has no rows to write")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    heading = f"# {title}\n\n" if title else ""
    atomic_write_text(md, heading + markdown_table(rows, columns))
    atomic_write_text(csv_path, csv_text(rows, columns))
    return md, csv_path


def write_plot(out_dir: Path, figure: Figure, *, name: str = "plot") -> Path:
    """Save ``figure`` as ``<name>.png`` (atomically) and close it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    try:
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120,
                                                      bbox_inches="tight"))
    finally:
        plt.close(figure)
    return path


def new_figure(ncols: int = 1, *, width: float = 6.0, height: float = 4.0):
    """A figure with ``ncols`` side-by-side axes (always returned as a list)."""
    figure, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return figure, list(axes[0])


def paired_difference_bars(axis, names: list[str], rows: list[dict], diff_key: str) -> None:
    """Bars of each row's mean paired difference (``diff_key``, a fraction) in points, with its
    95% interval (``ci95_low`` / ``ci95_high``) as error bars; green above zero, red below."""
    diffs = [100 * r[diff_key] for r in rows]
    errors = [[100 * (r[diff_key] - r["ci95_low"]) for r in rows],
              [100 * (r["ci95_high"] - r[diff_key]) for r in rows]]
    errors = [[0.0 if e != e else e for e in side] for side in errors]  # NaN (1 seed): no bar
    axis.bar(names, diffs, yerr=errors, capsize=3,
             color=["tab:green" if d >= 0 else "tab:red" for d in diffs])
    axis.axhline(0.0, color="black", linewidth=0.8)
