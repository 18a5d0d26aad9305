"""Paired ablation of the outer loss: which part of ISA buys what.

Every variant is distilled with the same seeds, so for a given seed all variants start from the
same synthetic images, see the same stream of target batches and pool initialisations, and are
evaluated by networks with the same initialisations and batches. The accuracy of seed s is the
mean over its evaluation networks; the table reports, per variant, mean +- std over seeds, the
mean paired difference to the baseline, d = mean_s (acc_s - baseline_s), with a Student-t
95% confidence interval over seeds, and the mean wall time of one distillation and of one
evaluation (all its networks).

The loop runs seed by seed (every variant of seed 0, then of seed 1, ...), so an interrupted
run leaves complete pairs. After every (variant, seed) the raw result is written to
``seeds.csv`` (atomically) and a line to ``progress.log``; ``resume=True`` reuses the rows of
``seeds.csv`` that an earlier run with the same settings (``settings.json``) wrote, and runs
only the missing ones.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

from ..runs import atomic_write_text, directory_lock
from .output import csv_text, new_figure, paired_difference_bars, write_plot, write_table
from .pipeline import distill_config, distill_variant, evaluate, load_data, preprocessed
from .settings import ExperimentSettings, settings_key
from .stats import mean_std, paired_difference
from .variants import BASELINE, resolve_variants

COLUMNS = ("variant", "description", "acc_mean", "acc_std", "diff_vs_baseline", "ci95_low",
           "ci95_high", "seeds", "distill_s", "eval_s")
SEED_COLUMNS = ("variant", "seed", "accuracy", "network_std", "network_accuracies",
                "distill_s", "eval_s")
SEEDS_FILE, SETTINGS_FILE, LOG_FILE = "seeds.csv", "settings.json", "progress.log"


def run_ablation(
    settings: ExperimentSettings, out_dir: str | Path, variants: list[str] | None = None, *,
    resume: bool = False,
) -> list[dict]:
    """Distil and evaluate each variant for every seed; write table.md/csv, plot.png, the raw
    per-seed results seeds.csv, settings.json and progress.log.

    The baseline is always run (first) because every difference is taken against it. With
    ``resume``, (variant, seed) results already in ``out_dir/seeds.csv`` are reused when
    ``out_dir/settings.json`` matches ``settings`` (seeds aside); a mismatch raises ValueError.
    Returns the table rows (accuracies as fractions in [0, 1], times in seconds).
    """
    settings.validate()
    chosen = resolve_variants(variants)
    if BASELINE not in [v.name for v in chosen]:
        chosen = resolve_variants([BASELINE]) + chosen
    chosen.sort(key=lambda v: v.name != BASELINE)
    out_dir = Path(out_dir)
    key = settings_key(settings)
    if not resume and (out_dir / SEEDS_FILE).is_file():
        raise ValueError(f"{out_dir} holds the results of an earlier ablation ({SEEDS_FILE}); "
                         "continue it with --resume (resume=True), or choose another --out")
    results = load_seed_results(out_dir, key) if resume else {}
    data = load_data(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(out_dir, "another ablation is writing it"):
        return _run_ablation(settings, out_dir, chosen, key, results, data)


def _run_ablation(settings, out_dir: Path, chosen, key, results, data) -> list[dict]:
    atomic_write_text(out_dir / SETTINGS_FILE, json.dumps(key, indent=1, sort_keys=True) + "\n")
    log = ProgressLog(out_dir / LOG_FILE)
    log(f"start: {_title(settings)}; variants {[v.name for v in chosen]}; "
        f"{len(results)} results reused")
    for seed in settings.seeds:
        for variant in chosen:
            if (variant.name, seed) in results:
                continue
            result = distill_variant(data, settings, variant, seed)
            started = time.perf_counter()
            test = preprocessed(data.test, result.preprocessor)
            evaluation = evaluate(result.training_images, result.training_labels, test,
                                  settings, seed,
                                  dataset=data.name, num_classes=data.num_classes)
            row = dict(variant=variant.name, seed=seed, accuracy=evaluation.mean,
                       network_std=evaluation.std,
                       network_accuracies=" ".join(repr(a) for a in evaluation.accuracies),
                       distill_s=result.elapsed, eval_s=time.perf_counter() - started)
            results[(variant.name, seed)] = row
            atomic_write_text(out_dir / SEEDS_FILE, csv_text(list(results.values()),
                                                             SEED_COLUMNS))
            log(f"seed {seed} {variant.name}: accuracy {100 * row['accuracy']:.2f} "
                f"(+- {100 * row['network_std']:.2f} over networks), distill "
                f"{row['distill_s']:.0f} s, eval {row['eval_s']:.0f} s")
    rows = summarise(results, chosen, settings.seeds)
    write_table(out_dir, rows, COLUMNS, title=_title(settings))
    write_plot(out_dir, _bar_plot(rows, settings))
    log("done")
    return rows


def summarise(results: dict[tuple[str, int], dict[str, Any]], variants, seeds) -> list[dict]:
    """One table row per variant from the per-seed results (every (variant, seed) present)."""
    accuracy = {v.name: [results[(v.name, s)]["accuracy"] for s in seeds] for v in variants}
    rows = []
    for variant in variants:
        mean, std = mean_std(accuracy[variant.name])
        diff, low, high = paired_difference(accuracy[variant.name], accuracy[BASELINE])
        rows.append(dict(
            variant=variant.name, description=variant.description, acc_mean=mean, acc_std=std,
            diff_vs_baseline=diff, ci95_low=low, ci95_high=high, seeds=len(seeds),
            distill_s=mean_std([results[(variant.name, s)]["distill_s"] for s in seeds])[0],
            eval_s=mean_std([results[(variant.name, s)]["eval_s"] for s in seeds])[0],
        ))
    return rows


def load_seed_results(out_dir: Path, key: dict[str, Any]) -> dict[tuple[str, int], dict]:
    """The stored per-seed results of ``out_dir`` ({} when it has none), checked against
    ``key``: results of other settings are never mixed in."""
    seeds_path, settings_path = out_dir / SEEDS_FILE, out_dir / SETTINGS_FILE
    if not seeds_path.is_file():
        return {}
    if not settings_path.is_file():
        raise ValueError(f"resume: {out_dir} has {SEEDS_FILE} but no {SETTINGS_FILE}, so its "
                         "settings are unknown; pass another --out or run without --resume")
    stored = json.loads(settings_path.read_text(encoding="utf-8"))
    current = json.loads(json.dumps(key))  # tuples as lists, as stored
    if stored != current:
        names = sorted(n for n in set(stored) | set(current) if stored.get(n) != current.get(n))
        differences = ", ".join(f"{n}: stored {stored.get(n)!r}, now {current.get(n)!r}"
                                for n in names)
        raise ValueError(f"resume: {out_dir} holds results of other settings ({differences}); "
                         "pass another --out or run without --resume")
    results = {}
    with open(seeds_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            parsed = dict(row, seed=int(row["seed"]))
            for name in ("accuracy", "network_std", "distill_s", "eval_s"):
                parsed[name] = float(row[name])
            results[(parsed["variant"], parsed["seed"])] = parsed
    return results


class ProgressLog:
    """Appends time-stamped lines to a file (flushed each time): ``tail -f`` shows progress."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{stamp} {message}\n")


def _title(settings: ExperimentSettings) -> str:
    config = distill_config(settings, settings.seeds[0])
    return (f"Ablation: {settings.dataset}, IPC {settings.ipc}, preset {settings.preset}, "
            f"{config.steps} steps, {config.optimizer} lr {config.peak_lr:g}, "
            f"{settings.eval_models} evaluation networks of "
            f"{settings.eval_steps or 'protocol'} steps, seeds {list(settings.seeds)}")


def _bar_plot(rows: list[dict], settings: ExperimentSettings):
    figure, (accuracy_axis, diff_axis) = new_figure(2, width=6.5)
    names = [r["variant"] for r in rows]
    accuracy_axis.bar(names, [100 * r["acc_mean"] for r in rows],
                      yerr=[100 * r["acc_std"] for r in rows], capsize=3, color="tab:blue")
    low = min(100 * (r["acc_mean"] - r["acc_std"]) for r in rows)
    accuracy_axis.set_ylim(max(0.0, low - 5), None)
    accuracy_axis.set_ylabel("test accuracy (%)")
    accuracy_axis.set_title(f"{settings.dataset}, IPC {settings.ipc}: mean +- std over seeds")
    paired_difference_bars(diff_axis, names, rows, "diff_vs_baseline")
    diff_axis.set_ylabel("paired difference vs baseline (points)")
    diff_axis.set_title("mean paired difference, 95% CI")
    for axis in (accuracy_axis, diff_axis):
        axis.tick_params(axis="x", rotation=60)
    return figure
