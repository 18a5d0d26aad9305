"""Paired ablation of the outer loss: which part of ISA buys what.

Every variant is distilled with the same seeds, so for a given seed all variants start from the
same synthetic images, see the same stream of target batches and pool initialisations, and are
evaluated by networks with the same initialisations and batches. The accuracy of seed s is the
mean over its evaluation networks; the table reports, per variant, mean +- std over seeds and
the mean paired difference to the baseline, d = mean_s (acc_s - baseline_s), with a Student-t
95% confidence interval over seeds.
"""

from __future__ import annotations

from pathlib import Path

from .output import new_figure, write_plot, write_table
from .pipeline import distill_variant, evaluate, load_data, preprocessed
from .settings import ExperimentSettings
from .stats import mean_std, paired_difference
from .variants import BASELINE, resolve_variants

COLUMNS = ("variant", "description", "acc_mean", "acc_std", "diff_vs_baseline", "ci95_low",
           "ci95_high", "seeds")


def run_ablation(
    settings: ExperimentSettings, out_dir: str | Path, variants: list[str] | None = None
) -> list[dict]:
    """Distil and evaluate each variant for every seed; write table.md/csv and plot.png.

    The baseline is always run (first) because every difference is taken against it.
    Returns the table rows (accuracies as fractions in [0, 1]).
    """
    settings.validate()
    chosen = resolve_variants(variants)
    if BASELINE not in [v.name for v in chosen]:
        chosen = resolve_variants([BASELINE]) + chosen
    chosen.sort(key=lambda v: v.name != BASELINE)
    data = load_data(settings)
    accuracy: dict[str, list[float]] = {}
    for variant in chosen:
        accuracy[variant.name] = []
        for seed in settings.seeds:
            result = distill_variant(data, settings, variant, seed)
            test = preprocessed(data.test, result.preprocessor)
            evaluation = evaluate(result.training_images, result.training_labels, test,
                                  settings, seed,
                                  dataset=data.name, num_classes=data.num_classes)
            accuracy[variant.name].append(evaluation.mean)
    rows = []
    for variant in chosen:
        mean, std = mean_std(accuracy[variant.name])
        diff, low, high = paired_difference(accuracy[variant.name], accuracy[BASELINE])
        rows.append(dict(variant=variant.name, description=variant.description, acc_mean=mean,
                         acc_std=std, diff_vs_baseline=diff, ci95_low=low, ci95_high=high,
                         seeds=len(settings.seeds)))
    out_dir = Path(out_dir)
    write_table(out_dir, rows, COLUMNS, title=_title(settings))
    write_plot(out_dir, _bar_plot(rows, settings))
    return rows


def _title(settings: ExperimentSettings) -> str:
    return (f"Ablation: {settings.dataset}, IPC {settings.ipc}, preset {settings.preset}, "
            f"{settings.steps or 'preset'} steps, seeds {list(settings.seeds)}")


def _bar_plot(rows: list[dict], settings: ExperimentSettings):
    figure, (accuracy_axis, diff_axis) = new_figure(2, width=6.5)
    names = [r["variant"] for r in rows]
    accuracy_axis.bar(names, [100 * r["acc_mean"] for r in rows],
                      yerr=[100 * r["acc_std"] for r in rows], capsize=3, color="tab:blue")
    low = min(100 * (r["acc_mean"] - r["acc_std"]) for r in rows)
    accuracy_axis.set_ylim(max(0.0, low - 5), None)
    accuracy_axis.set_ylabel("test accuracy (%)")
    accuracy_axis.set_title(f"{settings.dataset}, IPC {settings.ipc}: mean +- std over seeds")
    diffs = [100 * r["diff_vs_baseline"] for r in rows]
    errors = [[100 * (r["diff_vs_baseline"] - r["ci95_low"]) for r in rows],
              [100 * (r["ci95_high"] - r["diff_vs_baseline"]) for r in rows]]
    errors = [[0.0 if e != e else e for e in side] for side in errors]  # NaN (1 seed): no bar
    diff_axis.bar(names, diffs, yerr=errors, capsize=3,
                  color=["tab:green" if d >= 0 else "tab:red" for d in diffs])
    diff_axis.axhline(0.0, color="black", linewidth=0.8)
    diff_axis.set_ylabel("paired difference vs baseline (points)")
    diff_axis.set_title("mean paired difference, 95% CI")
    for axis in (accuracy_axis, diff_axis):
        axis.tick_params(axis="x", rotation=60)
    return figure
