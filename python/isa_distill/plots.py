"""PNG pictures of a run: the distilled images, and the loss / validation curves.

Rendered with matplotlib's Agg backend (no display needed) and written atomically next to the
run's other files.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import torch  # noqa: E402

from .runs import LOG, Distilled, atomic_write, load_distilled, read_log  # noqa: E402

IMAGES_PNG = "images.png"
CURVES_PNG = "curves.png"
MAX_COLUMNS = 10  # images per class shown; larger IPCs show their first 10


def _save(figure: plt.Figure, path: Path, dpi: int) -> Path:
    with warnings.catch_warnings():
        # Class names in scripts the default font lacks (CJK, ...) show as boxes; matplotlib
        # would otherwise warn once per missing character.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from",
                                category=UserWarning)
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi,
                                                      bbox_inches="tight"))
    plt.close(figure)
    return path


def _printable(name: object) -> str:
    """A class name matplotlib can draw: characters that are not valid Unicode (a folder name
    that was not UTF-8 arrives with surrogate escapes) become '?'."""
    return str(name).encode("utf-8", errors="replace").decode("utf-8")


def pixel_grid(distilled: Distilled) -> tuple[torch.Tensor, int]:
    """(classes, columns, h, w, c) training images in [0, 1] with ZCA and normalisation undone.

    The images shown are those networks train on: with multi-formation, the stored images
    decoded (IPC x F^2 per class). Distillation keeps the class-balanced layout of its
    initialisation: rows [k * n, (k + 1) * n) of the n per class started from class k.
    """
    num_classes = int(distilled.meta["num_classes"])
    images = distilled.training_images
    ipc = len(images) // num_classes
    columns = min(ipc, MAX_COLUMNS)
    pixels = distilled.preprocessor.inverse(images).clamp(0.0, 1.0)
    grid = pixels.reshape(num_classes, ipc, *pixels.shape[1:])[:, :columns]
    return grid.permute(0, 1, 3, 4, 2), columns


def plot_images(distilled: Distilled, path: str | Path) -> Path:
    """One row per class (labelled with its name), up to 10 distilled images per row."""
    grid, columns = pixel_grid(distilled)
    rows = grid.shape[0]
    names = distilled.meta.get("class_names") or [str(k) for k in range(rows)]
    cell = 0.9 if grid.shape[2] <= 16 else 1.1
    height = cell * rows + 0.5
    figure, axes = plt.subplots(rows, columns, figsize=(cell * columns + 1.2, height), squeeze=False)
    grey = grid.shape[-1] == 1
    for k in range(rows):
        for j in range(columns):
            axis = axes[k][j]
            image = grid[k, j, ..., 0] if grey else grid[k, j]
            axis.imshow(image.numpy(), cmap="gray" if grey else None, vmin=0.0, vmax=1.0,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            for spine in axis.spines.values():
                spine.set_visible(False)
        axes[k][0].set_ylabel(_printable(names[k]), rotation=0, ha="right", va="center",
                              fontsize=10)
    ipc = distilled.meta.get("ipc", "?")
    steps = distilled.meta.get("steps_done", "?")
    title = f"{distilled.meta.get('dataset', '?')}: distilled set, IPC {ipc}, {steps} steps"
    if distilled.formation > 1:
        factor = distilled.formation
        title += (f", formation {factor}x{factor} ({grid.shape[1]} of the "
                  f"{len(distilled.training_images) // rows} decoded images per class)")
    figure.subplots_adjust(wspace=0.05, hspace=0.05, top=1 - 0.5 / height)
    figure.suptitle(title, fontsize=11, y=1 - 0.15 / height)
    return _save(figure, Path(path), dpi=110)


def plot_curves(rows: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """The kernel (ISA KRR) loss on a log scale, the label-margin term, and validation accuracy
    against outer steps. Logs written before the two terms were logged apart show their sum."""
    figure, (loss_axis, margin_axis, acc_axis) = plt.subplots(1, 3, figsize=(14, 3.6))
    steps = [row["step"] for row in rows]
    split = all(row.get("kernel_loss") is not None for row in rows)
    kernel = [row["kernel_loss"] if split else row["loss"] for row in rows]
    if rows:
        loss_axis.plot(steps, kernel, color="tab:blue", linewidth=1.2)
        if all(value > 0 for value in kernel):
            loss_axis.set_yscale("log")
    loss_axis.set_xlabel("outer step")
    loss_axis.set_ylabel("kernel loss" if split else "loss")
    loss_axis.set_title("ISA KRR loss (mean per log interval)" if split
                        else "ISA KRR loss + label margin", fontsize=10)
    loss_axis.grid(True, alpha=0.3)
    if rows and split:
        margin_axis.plot(steps, [row["margin_loss"] for row in rows], color="tab:orange",
                         linewidth=1.2)
    else:
        margin_axis.text(0.5, 0.5, "not logged separately", ha="center", va="center",
                         transform=margin_axis.transAxes, color="grey")
    margin_axis.set_xlabel("outer step")
    margin_axis.set_ylabel("label-margin term")
    margin_axis.set_title("-mean min(top1 - top2, 1/C) of the labels (<= 0)", fontsize=10)
    margin_axis.grid(True, alpha=0.3)
    measured = [(row["step"], 100.0 * row["val_acc"]) for row in rows if row["val_acc"] is not None]
    if measured:
        acc_axis.plot(*zip(*measured), marker="o", color="tab:green", linewidth=1.2)
        for step, accuracy in measured[-1:]:
            acc_axis.annotate(f"{accuracy:.1f}%", (step, accuracy), textcoords="offset points",
                              xytext=(-8, -4), ha="right", va="top", fontsize=9)
        low, high = min(a for _, a in measured), max(a for _, a in measured)
        acc_axis.set_ylim(low - 1.0 - 0.1 * (high - low), high + 1.0 + 0.1 * (high - low))
    else:
        acc_axis.text(0.5, 0.5, "no validation measured", ha="center", va="center",
                      transform=acc_axis.transAxes, color="grey")
    acc_axis.set_xlabel("outer step")
    acc_axis.set_ylabel("validation accuracy (%)")
    acc_axis.set_title("one Conv-NN trained on the set, scored on val", fontsize=10)
    acc_axis.grid(True, alpha=0.3)
    if steps:
        for axis in (loss_axis, margin_axis, acc_axis):
            axis.set_xlim(0, max(steps) * 1.02)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return _save(figure, Path(path), dpi=100)


def render_run(run_dir: str | Path) -> list[Path]:
    """(Re-)write images.png and curves.png in ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    distilled = load_distilled(run_dir)
    meta = distilled.meta
    title = f"{meta.get('dataset', '?')}, IPC {meta.get('ipc', '?')}"
    return [
        plot_images(distilled, run_dir / IMAGES_PNG),
        plot_curves(read_log(run_dir / LOG), run_dir / CURVES_PNG, title=title),
    ]

