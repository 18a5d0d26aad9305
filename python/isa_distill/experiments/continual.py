"""Class-incremental learning with a GDumb-style learner (Figure 4 of the paper).

The classes arrive in ``num_steps`` equal groups in label order. At each step the memory gains
``per_class`` images for every new class, built from that step's data only, by one of:

    random    a class-balanced random draw
    herding   per class, greedy herding (Welling 2009) in the feature space of a randomly
              initialised evaluation Conv (fixed seed; no later classes are seen)
    frepo     the FRePo baseline distilled from the step's classes (epsilon 0, discard 0)
    isa       ISA distilled from the step's classes (epsilon 1, discard 20%)

Then fresh networks are trained on the whole memory only (GDumb) and scored on the test images
of every class seen so far. Distilled images are mapped from their step's preprocessing back to
pixels and into one shared preprocessing (fitted on the whole train split, a mild shortcut that
only sets the standardisation statistics); they carry the hard label their learned soft label
points to, so every method trains on the same kind of labels.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import DatasetSplits, Split
from ..data.splits import class_balanced_subset
from .output import new_figure, write_plot, write_table
from .pipeline import (
    distill_variant,
    eval_network,
    evaluate,
    features,
    load_data,
    preprocessed,
    real_preprocessor,
)
from .settings import ExperimentSettings
from .stats import mean_std
from .variants import VARIANTS

METHODS = ("random", "herding", "frepo", "isa")
_DISTILLED = {"frepo": "baseline", "isa": "isa+easy20"}
COLUMNS = ("method", "step", "classes_seen", "memory", "acc_mean", "acc_std", "seeds")


def herding_indices(points: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy herding: pick, one at a time, the point that brings the mean of the picked ones
    closest to the mean of all points (each point at most once)."""
    if count > len(points):
        raise ValueError(f"cannot herd {count} points out of {len(points)}")
    target = points.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(target)
    available = torch.ones(len(points), dtype=torch.bool)
    for k in range(1, count + 1):
        gap = ((total + points) / k - target).norm(dim=1)
        gap[~available] = float("inf")
        best = int(gap.argmin())
        chosen.append(best)
        available[best] = False
        total = total + points[best]
    return torch.tensor(chosen, dtype=torch.int64)


def _task(data: DatasetSplits, classes: list[int]) -> DatasetSplits:
    """The step's data with labels renumbered 0..k-1 (what a distillation of it sees)."""
    lookup = torch.full((data.num_classes,), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))

    def restrict(split: Split) -> Split:
        rows = torch.nonzero(torch.isin(split.labels, torch.tensor(classes))).flatten()
        return Split(split.images[rows], lookup[split.labels[rows]])

    names = [data.class_names[c] for c in classes]
    return DatasetSplits(data.name, restrict(data.train), restrict(data.val),
                         restrict(data.test), names)


def _new_memory(method, task, classes, per_class, settings, seed, prep, herding_net):
    """(preprocessed images, global int labels) this step adds for ``method``."""
    global_label = torch.tensor(classes)
    if method == "random":
        chosen = class_balanced_subset(task.train, per_class, torch.Generator().manual_seed(seed))
        return prep.transform(chosen.images), global_label[chosen.labels]
    if method == "herding":
        images, labels = [], []
        for local, label in enumerate(classes):
            own = task.train.images[task.train.labels == local]
            picked = herding_indices(features(herding_net, prep.transform(own), settings.device),
                                     per_class)
            images.append(prep.transform(own[picked]))
            labels.append(torch.full((per_class,), label, dtype=torch.int64))
        return torch.cat(images), torch.cat(labels)
    variant = VARIANTS[_DISTILLED[method]]
    result = distill_variant(task, settings, variant, seed, ipc=per_class)
    pixels = result.preprocessor.inverse(result.images.detach())
    return prep.transform(pixels), global_label[result.labels.argmax(1)]


def run_continual(
    settings: ExperimentSettings, out_dir: str | Path, *, num_steps: int = 5,
    methods: list[str] | None = None,
) -> list[dict]:
    """Memory of ``settings.ipc`` images per class per method; table.md/csv and plot.png."""
    settings.validate()
    methods = list(METHODS) if methods is None else methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct names among {', '.join(METHODS)}, got "
                         f"{methods}")
    data = load_data(settings)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1 or (
            data.num_classes % num_steps):
        raise ValueError(f"num_steps must divide the {data.num_classes} classes of "
                         f"{data.name}, got {num_steps!r}")
    per_step = data.num_classes // num_steps
    if per_step < 2 and any(m in _DISTILLED for m in methods):
        raise ValueError(f"{num_steps} steps give {per_step} class per step; distillation needs "
                         f">= 2 classes per step (use fewer steps or only random/herding)")
    prep = real_preprocessor(data, settings)
    network = eval_network(settings)
    from ..models import build_model  # only herding needs an untrained network

    accuracy: dict[tuple[str, int], list[float]] = {}
    for seed in settings.seeds:
        torch.manual_seed(seed)  # only the herding network's init reads the global RNG
        herding_net = build_model(network.arch, in_channels=data.channels,
                                  num_classes=data.num_classes, image_size=data.image_size,
                                  width=network.width, depth=network.depth, norm="none")
        for method in methods:
            images, labels = [], []
            for step in range(num_steps):
                classes = list(range(step * per_step, (step + 1) * per_step))
                task = _task(data, classes)
                new_images, new_labels = _new_memory(method, task, classes, settings.ipc,
                                                     settings, seed, prep, herding_net)
                images.append(new_images)
                labels.append(new_labels)
                seen = torch.nonzero(data.test.labels < (step + 1) * per_step).flatten()
                test = preprocessed(data.test.subset(seen), prep)
                result = evaluate(torch.cat(images), torch.cat(labels), test, settings, seed,
                                  dataset=data.name, num_classes=data.num_classes)
                accuracy.setdefault((method, step), []).append(result.mean)
    rows = []
    for method in methods:
        for step in range(num_steps):
            mean, std = mean_std(accuracy[(method, step)])
            rows.append({"method": method, "step": step + 1,
                         "classes_seen": (step + 1) * per_step,
                         "memory": (step + 1) * per_step * settings.ipc, "acc_mean": mean,
                         "acc_std": std, "seeds": len(settings.seeds)})
    out_dir = Path(out_dir)
    write_table(out_dir, rows, COLUMNS, title=f"Class-incremental ({num_steps} steps, "
                f"{settings.ipc} images per class): {settings.dataset}")
    write_plot(out_dir, _plot(rows, methods))
    return rows


def _plot(rows: list[dict], methods: list[str]):
    figure, (axis,) = new_figure(1)
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        axis.errorbar([r["classes_seen"] for r in mine], [100 * r["acc_mean"] for r in mine],
                      yerr=[100 * r["acc_std"] for r in mine], marker="o", capsize=3,
                      label=method)
    axis.set_xlabel("classes seen")
    axis.set_ylabel("test accuracy on seen classes (%)")
    axis.legend()
    return figure
