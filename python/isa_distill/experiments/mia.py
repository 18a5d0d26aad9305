"""Membership inference: does a model trained on a set leak which real samples were used?

Members are ``members`` real train images (class-balanced draw), non-members an equal number
of other train images. Three target models are trained from scratch with the evaluation
protocol: on the members themselves ("real"), on a random class-balanced subset of them of the
distilled set's size ("random subset"), and on the set distilled from the members with ISA
("distilled"). Each member / non-member gives the attack features

    (loss, prediction vector, one-hot label),  loss = 1/2 ||f(x) - y||^2, y centred one-hot

split 50/50 into attacker train and test (stratified, balanced). Attackers: a loss threshold
(lower loss = member; threshold chosen on attacker-train), logistic regression, an MLP, a
random forest and k-NN (scikit-learn). Reported: attack accuracy and ROC AUC on attacker-test,
and the target model's test accuracy. The curve repeats the threshold attack for target models
trained with growing step budgets (each a fresh protocol run).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..data import DatasetSplits, Split, allows_flip
from ..data.splits import class_balanced_subset
from ..evaluate import centred_one_hot, protocol_steps, test_accuracy, train_network
from .output import new_figure, write_plot, write_table
from .pipeline import distill_variant, eval_network, load_data, preprocessed, real_preprocessor
from .settings import ExperimentSettings
from .variants import VARIANTS

ATTACKERS = ("threshold", "logistic", "mlp", "forest", "knn")
SOURCES = ("real", "random subset", "distilled")
COLUMNS = ("source", "attacker", "attack_acc", "attack_auc", "model_test_acc")


def _attacker(name: str, seed: int):
    models = {
        "logistic": lambda: LogisticRegression(max_iter=1000),
        "mlp": lambda: MLPClassifier((64, 64), max_iter=500, random_state=seed),
        "forest": lambda: RandomForestClassifier(100, random_state=seed),
        "knn": lambda: KNeighborsClassifier(5),
    }
    return make_pipeline(StandardScaler(), models[name]())


def attack(features: np.ndarray, member: np.ndarray, seed: int = 0) -> dict[str, tuple]:
    """(accuracy, AUC) on a held-out half for every attacker; column 0 of features is the loss."""
    train_x, test_x, train_y, test_y = train_test_split(
        features, member, test_size=0.5, stratify=member, random_state=seed)
    results = {}
    # Threshold: score = -loss; the cut maximising attacker-train accuracy is applied to test.
    train_score, test_score = -train_x[:, 0], -test_x[:, 0]
    cuts = np.unique(train_score)
    best = max(cuts, key=lambda c: np.mean((train_score >= c) == train_y))
    results["threshold"] = (accuracy_score(test_y, test_score >= best),
                            roc_auc_score(test_y, test_score))
    for name in ATTACKERS[1:]:
        model = _attacker(name, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget
            model.fit(train_x, train_y)
        results[name] = (accuracy_score(test_y, model.predict(test_x)),
                         roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]))
    return {name: (float(a), float(b)) for name, (a, b) in results.items()}


@torch.no_grad()
def attack_features(model: nn.Module, split: Split, num_classes: int, device: str) -> np.ndarray:
    model.eval()
    outputs = model(split.images.to(device)).float().cpu()
    targets = centred_one_hot(split.labels, num_classes)
    loss = 0.5 * (outputs - targets).square().sum(1, keepdim=True)
    return torch.cat([loss, outputs, targets], dim=1).numpy()


def _split_members(data: DatasetSplits, members: int) -> tuple[Split, Split]:
    """Class-balanced members (members // C per class) and as many other train images."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 2 * data.num_classes:
        raise ValueError(f"members must be an int >= 2 * classes = {2 * data.num_classes}, "
                         f"got {members!r}")
    per_class = members // data.num_classes
    generator = torch.Generator().manual_seed(0)
    member_rows = []
    for label in range(data.num_classes):
        rows = torch.nonzero(data.train.labels == label).flatten()
        member_rows.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    member_rows = torch.cat(member_rows)
    is_member = torch.zeros(len(data.train), dtype=torch.bool)
    is_member[member_rows] = True
    others = torch.nonzero(~is_member).flatten()
    if len(others) < len(member_rows):
        raise ValueError(f"members={members} leaves only {len(others)} non-members in the train "
                         f"split of {len(data.train)}; choose members <= {len(data.train) // 2}")
    others = others[torch.randperm(len(others), generator=generator)[: len(member_rows)]]
    return data.train.subset(member_rows), data.train.subset(others)


def _train(images, labels, num_classes, steps, settings, dataset, seed) -> nn.Module:
    """A Conv-NN trained from scratch with the evaluation protocol's recipe."""
    network = eval_network(settings)
    targets = labels if labels.is_floating_point() else centred_one_hot(labels, num_classes)
    return train_network(
        images, targets, arch=network.arch, norm=network.norm, width=network.width,
        depth=network.depth, steps=steps, lr=3e-4, warmup=max(1, min(500, steps // 2)),
        batch_size=min(len(images), 500), augment=True, flip=allows_flip(dataset),
        init_seed=seed, data_seed=seed + 1, device=torch.device(settings.device),
    )


def _training_sets(data, members, settings, seed):
    """source -> (images, labels, preprocessor) of what each target model is trained on."""
    prep = real_preprocessor(data, settings)
    subset = class_balanced_subset(members, settings.ipc, torch.Generator().manual_seed(seed))
    member_data = DatasetSplits(data.name, members, data.val, data.test, data.class_names)
    distilled = distill_variant(member_data, settings, VARIANTS["isa+easy20"], seed)
    return {
        "real": (prep.transform(members.images), members.labels, prep),
        "random subset": (prep.transform(subset.images), subset.labels, prep),
        "distilled": (distilled.images, distilled.labels, distilled.preprocessor),
    }


def run_mia(
    settings: ExperimentSettings, out_dir: str | Path, *, members: int = 500,
    budgets: int = 4,
) -> list[dict]:
    """Attack table (table.md/csv), AUC vs training budget (curve.md/csv, plot.png)."""
    settings.validate()
    if isinstance(budgets, bool) or not isinstance(budgets, int) or budgets < 1:
        raise ValueError(f"budgets must be a positive int, got {budgets!r}")
    data = load_data(settings)
    member_split, non_member_split = _split_members(data, members)
    is_member = np.r_[np.ones(len(member_split)), np.zeros(len(non_member_split))]
    seed = settings.seeds[0]
    sets = _training_sets(data, member_split, settings, seed)
    rows, curve = [], []
    for source, (images, labels, prep) in sets.items():
        steps = settings.eval_steps or protocol_steps(len(images))
        candidates = Split(torch.cat([prep.transform(member_split.images),
                                      prep.transform(non_member_split.images)]),
                           torch.cat([member_split.labels, non_member_split.labels]))
        test = preprocessed(data.test, prep)
        for fraction in [2.0 ** -i for i in reversed(range(budgets))]:
            budget = max(1, int(steps * fraction))
            model = _train(images, labels, data.num_classes, budget, settings, data.name, seed)
            results = attack(attack_features(model, candidates, data.num_classes,
                                             settings.device), is_member, seed)
            curve.append({"source": source, "steps": budget,
                          **{f"{name}_auc": auc for name, (_, auc) in results.items()}})
        accuracy = test_accuracy(model, test, device=settings.device)
        for name, (acc, auc) in results.items():
            rows.append({"source": source, "attacker": name, "attack_acc": acc,
                         "attack_auc": auc, "model_test_acc": accuracy})
    out_dir = Path(out_dir)
    write_table(out_dir, rows, COLUMNS, title=f"Membership inference: {settings.dataset}, "
                f"{len(member_split)} members / {len(non_member_split)} non-members")
    write_table(out_dir, curve, ["source", "steps", *[f"{a}_auc" for a in ATTACKERS]],
                name="curve", title="Attack AUC vs training steps of the target model")
    write_plot(out_dir, _plot(curve))
    return rows


def _plot(curve: list[dict]):
    figure, axes = new_figure(2, width=5.5)
    for axis, attacker in zip(axes, ("threshold", "logistic")):
        for source in SOURCES:
            points = [r for r in curve if r["source"] == source]
            axis.plot([r["steps"] for r in points], [r[f"{attacker}_auc"] for r in points],
                      marker="o", label=source)
        axis.set_xscale("log")
        axis.set_ylim(0.4, 1.02)
        axis.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
        axis.set_xlabel("training steps of the target model")
        axis.set_ylabel(f"{attacker} attack AUC")
        axis.legend()
    return figure
