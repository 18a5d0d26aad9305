"""The ISA module on other distillation methods (the paper's Tables 4 and 10), paired.

Arms (each distilled and evaluated for every seed):

    rfad            RFAD: random-feature source, Platt loss (preset ``rfad`` / ``rfad-cpu``)
    rfad+isa        RFAD + discard the easiest 20% + ISA (epsilon 1)
    frepo           FRePo: the trained pool, epsilon 0, discard 0 (preset ``paper`` / ``cpu``)
    frepo+isa       FRePo + discard + ISA with the preset's loss (= the library's ISA)
    frepo-f2        FRePo with multi-formation F = 2 (IDC's decoding)
    frepo+isa-f2    FRePo + discard + ISA with F = 2

A seed fixes the synthetic initialisation, the target batches, the feature networks' draws and
the evaluation networks, so the two arms of a comparison differ only in the module (or in F).
Every comparison reports the mean paired difference over seeds with a Student-t 95% interval
(``stats.paired_difference``). With F = 2 the networks train on the IPC x 4 decoded images per
class, at the storage of IPC.

Each finished (arm, seed) is recorded in ``results.json`` in the output directory, so an
interrupted study continues where it stopped when run again with the same settings, and more
seeds can be added later (the seed list is not part of the settings a record must match).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..distill import distill
from ..runs import atomic_write_text, directory_lock
from .names import resolve_names
from .output import new_figure, paired_difference_bars, write_plot, write_table
from .pipeline import distill_config, evaluate, load_data, preprocessed
from .settings import ExperimentSettings, settings_key
from .stats import mean_std, paired_difference


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    method: str  # "rfad" | "frepo"
    module: bool  # discard + ISA on
    formation: int = 1


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("rfad", "RFAD (random features, Platt loss)", "rfad", False),
    Arm("rfad+isa", "RFAD + discard 20% + ISA (epsilon 1)", "rfad", True),
    Arm("frepo", "FRePo (trained pool, epsilon 0, discard 0)", "frepo", False),
    Arm("frepo+isa", "FRePo + discard 20% + ISA (the preset's loss)", "frepo", True),
    Arm("frepo-f2", "FRePo, multi-formation F = 2", "frepo", False, 2),
    Arm("frepo+isa-f2", "FRePo + discard + ISA, multi-formation F = 2", "frepo", True, 2),
]}
# (with, without): what the module adds to each method, and what F = 2 adds to ISA (Table 10).
COMPARISONS = (("rfad+isa", "rfad"), ("frepo+isa", "frepo"), ("frepo+isa-f2", "frepo-f2"),
               ("frepo+isa-f2", "frepo+isa"))
# The distillation preset of each method, per experiment preset.
METHOD_PRESETS = {"cpu": {"frepo": "cpu", "rfad": "rfad-cpu"},
                  "paper": {"frepo": "paper", "rfad": "rfad"}}
RFAD_MODULE = dict(epsilon=1.0, discard=0.2)  # the Platt loss needs 0 <= epsilon <= 1
BASELINE = dict(epsilon=0.0, discard=0.0)
RESULTS = "results.json"
COLUMNS = ("comparison", "ipc", "with_acc", "without_acc", "diff", "ci95_low", "ci95_high",
           "seeds", "with_distill_s", "without_distill_s")
ARM_COLUMNS = ("arm", "description", "ipc", "formation", "training_images_per_class",
               "acc_mean", "acc_std", "seeds", "distill_s", "eval_s")


def resolve_arms(names: list[str] | tuple[str, ...] | None) -> list[Arm]:
    """The arms named (None: all), checked before any work."""
    return resolve_names(names, ARMS, "arm")


def arm_overrides(arm: Arm, settings: ExperimentSettings,
                  extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(distillation preset, config overrides) of ``arm``: the module off is epsilon 0 and
    discard 0; on, RFAD takes epsilon 1, discard 0.2 and FRePo the preset's own ISA loss."""
    preset = METHOD_PRESETS[settings.preset][arm.method]
    overrides: dict[str, Any] = {"formation": arm.formation, **(extra or {})}
    if not arm.module:
        overrides.update(BASELINE)
    elif arm.method == "rfad":
        overrides.update(RFAD_MODULE)
    return preset, overrides


@dataclass
class Record:
    """One (arm, seed): the seed's accuracy (mean over its networks) and the wall times."""

    accuracy: float
    accuracies: list[float]
    distill_s: float
    eval_s: float


@dataclass
class Results:
    """``results.json``: the settings it belongs to and every finished (arm, seed)."""

    key: dict[str, Any]
    records: dict[str, Record] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, key: dict[str, Any]) -> Results:
        if not path.is_file():
            return cls(key)
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored_settings = (stored.get("key") or {}).get("settings")
        if isinstance(stored_settings, dict):
            stored_settings.pop("seeds", None)  # files from before seeds left the key
        if stored.get("key") != key:
            raise ValueError(
                f"{path} holds results of other settings ({stored.get('key')}); pass another "
                "--out, or delete it to start again"
            )
        return cls(key, {name: Record(**r) for name, r in stored["records"].items()})

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        records = {name: asdict(r) for name, r in self.records.items()}
        atomic_write_text(path, json.dumps({"key": self.key, "records": records}, indent=1))


def run_module_study(settings: ExperimentSettings, out_dir: str | Path,
                     arms: list[str] | None = None, *,
                     overrides: dict[str, Any] | None = None) -> list[dict]:
    """Distil and evaluate each arm for every seed; write table.md/csv (the comparisons),
    arms.md/csv (each arm) and plot.png. ``overrides``: DistillConfig fields for every arm
    (e.g. ``optimizer``). Returns the comparison rows (accuracies as fractions)."""
    settings.validate()
    chosen = resolve_arms(arms)
    out_dir = Path(out_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    configs = {arm.name: {seed: distill_config(settings, seed, preset=preset, **extra)
                          for seed in settings.seeds}
               for arm in chosen
               for preset, extra in [arm_overrides(arm, settings, overrides)]}
    key = {"settings": settings_key(settings), "overrides": overrides}
    key = json.loads(json.dumps(key))  # tuples as lists, as stored
    results = Results.open(out_dir / RESULTS, key)
    data = load_data(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(out_dir, "another module study is writing it"):
        for arm in chosen:
            for seed in settings.seeds:
                name = f"{arm.name}/{seed}"
                if name in results.records:
                    continue
                started = time.perf_counter()
                result = distill(data, configs[arm.name][seed], progress=settings.progress)
                distilled = time.perf_counter()
                test = preprocessed(data.test, result.preprocessor)
                evaluation = evaluate(result.training_images, result.training_labels, test,
                                      settings, seed, dataset=data.name,
                                      num_classes=data.num_classes)
                results.records[name] = Record(evaluation.mean, evaluation.accuracies,
                                               distilled - started,
                                               time.perf_counter() - distilled)
                results.save(out_dir / RESULTS)
        arm_rows = [_arm_row(arm, settings, results) for arm in chosen]
        rows = _comparison_rows([a.name for a in chosen], settings, results)
        title = _title(settings, overrides)
        write_table(out_dir, arm_rows, ARM_COLUMNS, name="arms", title=title)
        if rows:
            write_table(out_dir, rows, COLUMNS, title=title)
            write_plot(out_dir, _plot(rows, settings))
        return rows


def _arm_row(arm: Arm, settings: ExperimentSettings, results: Results) -> dict:
    records = [results.records[f"{arm.name}/{seed}"] for seed in settings.seeds]
    mean, std = mean_std([r.accuracy for r in records])
    return dict(arm=arm.name, description=arm.description, ipc=settings.ipc,
                formation=arm.formation, training_images_per_class=settings.ipc * arm.formation**2,
                acc_mean=mean, acc_std=std, seeds=len(records),
                distill_s=_mean_seconds(r.distill_s for r in records),
                eval_s=_mean_seconds(r.eval_s for r in records))


def _mean_seconds(values) -> int:
    """Mean wall seconds, whole (the table prints floats with 4 decimals)."""
    values = list(values)
    return round(sum(values) / len(values))


def _comparison_rows(names: list[str], settings: ExperimentSettings,
                     results: Results) -> list[dict]:
    rows = []
    for with_name, without_name in COMPARISONS:
        if with_name not in names or without_name not in names:
            continue
        with_records = [results.records[f"{with_name}/{s}"] for s in settings.seeds]
        without_records = [results.records[f"{without_name}/{s}"] for s in settings.seeds]
        with_acc = [r.accuracy for r in with_records]
        without_acc = [r.accuracy for r in without_records]
        diff, low, high = paired_difference(with_acc, without_acc)
        rows.append(dict(
            comparison=f"{with_name} vs {without_name}", ipc=settings.ipc,
            with_acc=mean_std(with_acc)[0], without_acc=mean_std(without_acc)[0], diff=diff,
            ci95_low=low, ci95_high=high, seeds=len(settings.seeds),
            with_distill_s=_mean_seconds(r.distill_s for r in with_records),
            without_distill_s=_mean_seconds(r.distill_s for r in without_records),
        ))  # fmt: skip
    return rows


def _title(settings: ExperimentSettings, overrides: dict[str, Any]) -> str:
    extra = "".join(f", {k}={v}" for k, v in overrides.items())
    return (f"ISA module: {settings.dataset}, IPC {settings.ipc}, preset {settings.preset}, "
            f"{settings.steps or 'preset'} steps, seeds {list(settings.seeds)}{extra}")


def _plot(rows: list[dict], settings: ExperimentSettings):
    figure, (axis,) = new_figure(1, width=7.0)
    paired_difference_bars(axis, [r["comparison"] for r in rows], rows, "diff")
    axis.set_ylabel("paired difference (points)")
    axis.set_title(f"{settings.dataset}, IPC {settings.ipc}: mean paired difference, 95% CI")
    axis.tick_params(axis="x", rotation=30)
    return figure
