"""How much of the real data each distilled set covers, in a fixed feature space.

Features come from the evaluation Conv trained on the real train split
(``pipeline.feature_network``), the same network for every variant. Real samples are up to
``max_real`` train images drawn with seed 0. Metrics (``knn_manifold``), per variant and seed,
averaged over seeds: precision, recall (the paper's number) and coverage with k = 5.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import allows_flip
from .knn_manifold import manifold_metrics
from .output import new_figure, write_plot, write_table
from .pipeline import (
    distill_variant,
    feature_network,
    features,
    load_data,
    preprocessed,
    real_preprocessor,
)
from .settings import ExperimentSettings
from .stats import mean_std
from .variants import resolve_variants

DEFAULT_VARIANTS = ("baseline", "easy10", "easy20", "easy30", "isa+easy20")
METRICS = ("precision", "recall", "coverage")
COLUMNS = ("variant", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")], "seeds")


def run_diversity(
    settings: ExperimentSettings, out_dir: str | Path, variants: list[str] | None = None, *,
    k: int = 5, max_real: int = 2000, feature_steps: int | None = None,
) -> list[dict]:
    settings.validate()
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(max_real, bool) or not isinstance(max_real, int) or max_real <= k:
        raise ValueError(f"max_real must be an int > k={k}, got {max_real!r}")
    chosen = resolve_variants(list(DEFAULT_VARIANTS) if variants is None else variants)
    data = load_data(settings)
    synthetic = settings.ipc * data.num_classes
    if k >= synthetic:  # checked before any set is distilled
        raise ValueError(f"k must be smaller than the {synthetic} synthetic images (IPC "
                         f"{settings.ipc} x {data.num_classes} classes), got {k}")
    prep = real_preprocessor(data, settings)
    train = preprocessed(data.train, prep)
    network = feature_network(train, data.num_classes, settings, steps=feature_steps,
                              flip=allows_flip(data.name))
    rows_of_real = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    real = features(network, train.images[rows_of_real[:max_real]], settings.device)
    rows = []
    for variant in chosen:
        scores = {m: [] for m in METRICS}
        for seed in settings.seeds:
            result = distill_variant(data, settings, variant, seed)
            synthetic = features(network, result.images, settings.device)
            for name, value in manifold_metrics(real, synthetic, k).items():
                scores[name].append(value)
        row = {"variant": variant.name, "seeds": len(settings.seeds)}
        for name in METRICS:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(scores[name])
        rows.append(row)
    out_dir = Path(out_dir)
    write_table(out_dir, rows, COLUMNS, title=f"Diversity (k={k}): {settings.dataset}, IPC "
                f"{settings.ipc}, {len(real)} real samples, seeds {list(settings.seeds)}")
    write_plot(out_dir, _plot(rows, k))
    return rows


def _plot(rows: list[dict], k: int):
    figure, (axis,) = new_figure(1, width=7.0)
    width = 0.8 / len(METRICS)
    for offset, metric in enumerate(METRICS):
        positions = [i + (offset - 1) * width for i in range(len(rows))]
        axis.bar(positions, [r[f"{metric}_mean"] for r in rows], width,
                 yerr=[r[f"{metric}_std"] for r in rows], capsize=2, label=metric)
    axis.set_xticks(range(len(rows)), [r["variant"] for r in rows], rotation=45)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"fraction (k = {k})")
    axis.legend()
    return figure
