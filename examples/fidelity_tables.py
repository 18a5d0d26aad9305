"""The tables of docs/experiments/fidelity.md from the raw per-seed results of its ablations.

    python examples/fidelity_tables.py docs/experiments/fidelity

reads every ``<study>.csv`` there (``ablate``'s ``seeds.csv``, one per IPC and optimiser, e.g.
``ipc1-adam.csv``) and prints, per study, each variant's mean accuracy and its paired
difference to FRePo with a Student-t 95% interval; then the contrasts between the ISA variants
and Adam against LAMB, paired by seed. Only seeds with every variant are used.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from isa_distill.experiments.stats import mean_std, paired_difference

VARIANTS = ("baseline", "discard-only", "isa-towards", "isa-away", "isa-official")
CONTRASTS = (("isa-away", "discard-only"), ("isa-towards", "discard-only"),
             ("isa-away", "isa-towards"), ("isa-official", "isa-away"))  # fmt: skip


def load(path: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]], list]:
    """Accuracy (%) and distillation seconds per variant and seed; the complete seeds."""
    accuracy: dict[str, dict[int, float]] = {v: {} for v in VARIANTS}
    seconds: dict[str, dict[int, float]] = {v: {} for v in VARIANTS}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["variant"] in accuracy:
                accuracy[row["variant"]][int(row["seed"])] = 100 * float(row["accuracy"])
                seconds[row["variant"]][int(row["seed"])] = float(row["distill_s"])
    seeds = sorted(set.intersection(*(set(accuracy[v]) for v in VARIANTS)))
    return accuracy, seconds, seeds


def interval(values, reference) -> str:
    diff, low, high = paired_difference(values, reference)
    return f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"


def study_table(name: str, path: Path) -> None:
    accuracy, seconds, seeds = load(path)
    print(f"\n{name}, seeds {seeds}\n")
    print("| variant | accuracy (%), mean +- std over seeds | minus FRePo, mean [95% CI] "
          "| distillation (s) |")
    print("|---|---|---|---|")
    base = [accuracy["baseline"][s] for s in seeds]
    for variant in VARIANTS:
        values = [accuracy[variant][s] for s in seeds]
        mean, std = mean_std(values)
        diff = "-" if variant == "baseline" else interval(values, base)
        wall = sum(seconds[variant][s] for s in seeds) / len(seeds)
        print(f"| `{variant}` | {mean:.2f} +- {std:.2f} | {diff} | {wall:.0f} |")
    print("\n| contrast | mean [95% CI] |\n|---|---|")
    for first, second in CONTRASTS:
        print(f"| `{first}` minus `{second}` | "
              f"{interval([accuracy[first][s] for s in seeds], [accuracy[second][s] for s in seeds])} |")


def optimiser_table(adam_path: Path, lamb_path: Path) -> None:
    adam, _, adam_seeds = load(adam_path)
    lamb, _, lamb_seeds = load(lamb_path)
    seeds = sorted(set(adam_seeds) & set(lamb_seeds))
    print(f"\nAdam 1e-3 minus LAMB 3e-4 ({adam_path.stem[:-5]}), paired by variant and seed, "
          f"seeds {seeds}\n")
    print("| variant | Adam minus LAMB, mean [95% CI] |\n|---|---|")
    for variant in VARIANTS:
        print(f"| `{variant}` | {interval([adam[variant][s] for s in seeds], [lamb[variant][s] for s in seeds])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of <study>.csv files")
    folder = parser.parse_args().folder
    studies = sorted(folder.glob("*.csv"))
    if not studies:
        parser.error(f"no .csv files in {folder}")
    for path in studies:
        study_table(path.stem, path)
    for path in studies:
        lamb = path.with_name(path.name.replace("-adam", "-lamb"))
        if "-adam" in path.stem and lamb.is_file():
            optimiser_table(path, lamb)


if __name__ == "__main__":
    main()
