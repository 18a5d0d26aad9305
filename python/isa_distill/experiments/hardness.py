"""The paper's Figure 1: are hard targets the informative ones?

(a) For each seed, distil the set of a variant, then for ``batches`` random target batches
    rank the targets by their plain KRR loss l_i against the distilled set (support = distilled
    features and labels) and split the batch into the hardest 80% (H) and the easiest 20% (E).
    Report the KRR loss 1/2 ||P - Y||^2 (mean per target) of predicting E with H as the support
    set (hard -> easy) and H with E as support (easy -> hard). A small hard -> easy loss means
    the hard targets already explain the easy ones.
(b) A 2-D PCA of real features of three classes (fitted on those features), with each
    variant's distilled images of the same classes overlaid, and the targets that a 20%
    discard would keep (dots) or drop (crosses) against that variant's set.

Everything lives in one fixed feature space: the evaluation Conv trained on real data
(``pipeline.feature_network``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from ..data import allows_flip
from ..evaluate import centred_one_hot
from ..functional import isa_krr_loss, krr_predict
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

DEFAULT_VARIANTS = ("baseline", "isa+easy20")
HARD_FRACTION = 0.8
SPLIT_COLUMNS = ("variant", "hard_to_easy_mean", "hard_to_easy_std", "easy_to_hard_mean",
                 "easy_to_hard_std", "plain_hard_mean", "plain_easy_mean", "batches")
PCA_COLUMNS = ("variant", "class", "distilled", "targets", "kept", "discarded")


def hardness_split(fs, ys, ft, yt, *, hard_fraction: float = HARD_FRACTION) -> torch.Tensor:
    """Boolean mask of the hardest ceil(hard_fraction * N) targets by plain KRR loss."""
    plain = isa_krr_loss(fs, ys, ft, yt, epsilon=0.0, discard=0.0, reduction="none")
    n_hard = int(np.ceil(hard_fraction * len(plain)))
    mask = torch.zeros(len(plain), dtype=torch.bool)
    mask[plain.topk(n_hard).indices] = True
    return mask


def cross_prediction_loss(f_support, y_support, f_query, y_query) -> float:
    """Mean over queries of 1/2 ||P - Y||^2, P = KRR prediction from the support rows."""
    predictions = krr_predict(f_support, y_support, f_query)
    return float(0.5 * (predictions - y_query).square().sum(1).mean())


def run_hardness(
    settings: ExperimentSettings, out_dir: str | Path, variants: list[str] | None = None, *,
    batches: int = 5, classes: tuple[int, int, int] = (0, 1, 2), per_class: int = 150,
    feature_steps: int | None = None,
) -> tuple[list[dict], list[dict]]:
    """Write table.md/csv (a), pca.md/csv (b) and plot.png (both); return both tables' rows."""
    settings.validate()
    chosen = resolve_variants(list(DEFAULT_VARIANTS) if variants is None else variants)
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches must be a positive int, got {batches!r}")
    data = load_data(settings)
    if len(set(classes)) != 3 or not all(0 <= c < data.num_classes for c in classes):
        raise ValueError(f"classes must be 3 distinct labels in [0, {data.num_classes}), got "
                         f"{list(classes)}")
    train = preprocessed(data.train, real_preprocessor(data, settings))
    network = feature_network(train, data.num_classes, settings, steps=feature_steps,
                              flip=allows_flip(data.name))
    real_f = features(network, train.images, settings.device)
    real_y = centred_one_hot(train.labels, data.num_classes)
    batch_size = min(settings.batch_size or 1024, len(train))
    split_rows, distilled = [], {}
    for variant in chosen:
        losses = {"hard_to_easy": [], "easy_to_hard": [], "plain_hard": [], "plain_easy": []}
        for seed in settings.seeds:
            result = distill_variant(data, settings, variant, seed)
            fs = features(network, result.images, settings.device)
            distilled.setdefault(variant.name, (fs, result.labels))
            generator = torch.Generator().manual_seed(seed)
            for _ in range(batches):
                rows = torch.randperm(len(train), generator=generator)[:batch_size]
                ft, yt = real_f[rows], real_y[rows]
                hard = hardness_split(fs, result.labels, ft, yt)
                plain = isa_krr_loss(fs, result.labels, ft, yt, epsilon=0.0, discard=0.0,
                                     reduction="none")
                losses["hard_to_easy"].append(cross_prediction_loss(ft[hard], yt[hard],
                                                                    ft[~hard], yt[~hard]))
                losses["easy_to_hard"].append(cross_prediction_loss(ft[~hard], yt[~hard],
                                                                    ft[hard], yt[hard]))
                losses["plain_hard"].append(float(plain[hard].mean()))
                losses["plain_easy"].append(float(plain[~hard].mean()))
        row = {"variant": variant.name, "batches": batches * len(settings.seeds)}
        row["hard_to_easy_mean"], row["hard_to_easy_std"] = mean_std(losses["hard_to_easy"])
        row["easy_to_hard_mean"], row["easy_to_hard_std"] = mean_std(losses["easy_to_hard"])
        row["plain_hard_mean"] = mean_std(losses["plain_hard"])[0]
        row["plain_easy_mean"] = mean_std(losses["plain_easy"])[0]
        split_rows.append(row)

    pca_rows, panels = _pca_panels(train.labels, real_f, real_y, distilled, classes, per_class)
    out_dir = Path(out_dir)
    write_table(out_dir, split_rows, SPLIT_COLUMNS, title=f"Hard (80%) vs easy (20%) targets: "
                f"{settings.dataset}, IPC {settings.ipc}, seeds {list(settings.seeds)}")
    write_table(out_dir, pca_rows, PCA_COLUMNS, name="pca",
                title=f"Targets of classes {list(classes)} kept / discarded at 20%")
    write_plot(out_dir, _plot(split_rows, panels, classes))
    return split_rows, pca_rows


def _pca_panels(labels, real_f, real_y, distilled, classes, per_class):
    generator = torch.Generator().manual_seed(0)
    rows = torch.cat([
        torch.nonzero(labels == c).flatten()[
            torch.randperm(int((labels == c).sum()), generator=generator)[:per_class]]
        for c in classes
    ])
    pca = PCA(2).fit(real_f[rows].double().numpy())
    real_2d = pca.transform(real_f[rows].double().numpy())
    table, panels = [], []
    for name, (fs, ys) in distilled.items():
        kept = ~_easiest_mask(fs, ys, real_f[rows], real_y[rows], 0.2)
        in_classes = torch.isin(ys.argmax(1), torch.tensor(classes))
        synthetic_2d = pca.transform(fs[in_classes].double().numpy())
        panels.append((name, real_2d, labels[rows], kept, synthetic_2d,
                       ys.argmax(1)[in_classes]))
        for c in classes:
            of_class = labels[rows] == c
            table.append({"variant": name, "class": c,
                          "distilled": int((ys.argmax(1)[in_classes] == c).sum()),
                          "targets": int(of_class.sum()), "kept": int((kept & of_class).sum()),
                          "discarded": int((~kept & of_class).sum())})
    return table, panels


def _easiest_mask(fs, ys, ft, yt, discard: float) -> torch.Tensor:
    """Targets the loss with ``discard`` drops (the op's own rule, via return_info)."""
    _, info = isa_krr_loss(fs, ys, ft, yt, epsilon=0.0, discard=discard, return_info=True)
    mask = torch.ones(len(ft), dtype=torch.bool)
    mask[info.kept] = False
    return mask


def _plot(split_rows, panels, classes):
    figure, axes = new_figure(1 + len(panels), width=5.0)
    names = [r["variant"] for r in split_rows]
    positions = np.arange(len(names))
    axes[0].bar(positions - 0.2, [r["hard_to_easy_mean"] for r in split_rows], 0.4,
                yerr=[r["hard_to_easy_std"] for r in split_rows], label="hard -> easy")
    axes[0].bar(positions + 0.2, [r["easy_to_hard_mean"] for r in split_rows], 0.4,
                yerr=[r["easy_to_hard_std"] for r in split_rows], label="easy -> hard")
    axes[0].set_xticks(positions, names)
    axes[0].set_ylabel("KRR loss of the other split")
    axes[0].legend()
    colours = dict(zip(classes, ("tab:blue", "tab:orange", "tab:green")))
    for axis, (name, real_2d, labels, kept, synthetic_2d, synthetic_labels) in zip(axes[1:],
                                                                                   panels):
        for c in classes:
            of_class = (labels == c).numpy()
            keep, drop = of_class & kept.numpy(), of_class & ~kept.numpy()
            axis.scatter(*real_2d[keep].T, s=6, color=colours[c], alpha=0.5)
            axis.scatter(*real_2d[drop].T, s=14, color=colours[c], marker="x")
            mine = (synthetic_labels == c).numpy()
            axis.scatter(*synthetic_2d[mine].T, s=90, color=colours[c], marker="*",
                         edgecolors="black", label=f"class {c} distilled")
        axis.set_title(f"{name}: dots kept, crosses discarded")
        axis.legend(fontsize=7)
    return figure
