"""One distilled run evaluated on other architectures with the same protocol (Table 2).

The networks: Conv (batch norm, the distillation net), Conv-NN, ResNet-18 without norm and
with batch norm, VGG-11 with batch norm, AlexNet. The data are read from ``--data-root``, else
from the root stored in the run. The test split is preprocessed with the run's stored
preprocessor; a random class-balanced real subset of the same IPC is evaluated
beside it on every architecture.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.splits import class_balanced_subset
from ..runs import load_distilled
from .output import new_figure, write_plot, write_table
from .pipeline import EvalNetwork, evaluate, load_run_dataset, preprocessed
from .settings import ExperimentSettings

ARCHITECTURES = {  # column name -> (arch, norm)
    "Conv": ("conv", "batch"), "Conv-NN": ("conv", "none"), "ResNet-DN": ("resnet18", "none"),
    "ResNet-BN": ("resnet18", "batch"), "VGG-BN": ("vgg11", "batch"), "AlexNet": ("alexnet", "none"),
}  # fmt: skip
CPU_WIDTHS = {"resnet18": 16, "vgg11": 16, "alexnet": 32}  # the paper preset uses the defaults


def run_cross_arch(
    run_dir: str | Path, settings: ExperimentSettings, out_dir: str | Path,
    architectures: list[str] | None = None, *, random_baseline: bool = True,
) -> list[dict]:
    settings.validate()
    names = list(ARCHITECTURES) if architectures is None else architectures
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"architectures must be distinct names among "
                         f"{', '.join(ARCHITECTURES)}, got {names}")
    run = load_distilled(run_dir)
    dataset = run.meta["dataset"]
    data = load_run_dataset(run.meta, settings.data_root)
    config = run.meta["config"]
    test = preprocessed(data.test, run.preprocessor)
    sets = {"distilled": (run.training_images, run.training_labels)}  # decoded (formation)
    if random_baseline:
        ipc = int(run.meta.get("ipc", config["ipc"]))
        subset = class_balanced_subset(data.train, ipc, torch.Generator().manual_seed(0))
        sets["random subset"] = (run.preprocessor.transform(subset.images), subset.labels)
    rows = []
    for set_name, (images, labels) in sets.items():
        row = {"set": set_name}
        for name in names:
            arch, norm = ARCHITECTURES[name]
            width = config["width"] if arch == "conv" else (
                CPU_WIDTHS[arch] if settings.preset == "cpu" else None)
            network = EvalNetwork(arch, norm, width, config["depth"])
            accuracies = [
                evaluate(images, labels, test, settings, seed, dataset=dataset,
                         num_classes=data.num_classes, network=network).mean
                for seed in settings.seeds
            ]
            mean = sum(accuracies) / len(accuracies)
            row[name] = mean
            row[f"{name}_std"] = float(torch.tensor(accuracies).std(unbiased=False))
        rows.append(row)
    columns = ["set", *[c for n in names for c in (n, f"{n}_std")]]
    out_dir = Path(out_dir)
    write_table(out_dir, rows, columns, title=f"Cross-architecture: {run_dir} ({dataset})")
    write_plot(out_dir, _plot(rows, names))
    return rows


def _plot(rows: list[dict], names: list[str]):
    figure, (axis,) = new_figure(1, width=7.0)
    width = 0.8 / len(rows)
    for offset, row in enumerate(rows):
        positions = [i + offset * width for i in range(len(names))]
        axis.bar(positions, [100 * row[n] for n in names], width,
                 yerr=[100 * row[f"{n}_std"] for n in names], capsize=2, label=row["set"])
    axis.set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(names))], names)
    axis.set_ylabel("test accuracy (%)")
    axis.legend()
    return figure
