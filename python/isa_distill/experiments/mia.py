"""Membership inference: does a model trained on a set leak which real samples were used?

Candidates. For every class, ``2 * (members // C)`` train images are drawn in one seeded
permutation and cut in two: the first half are members, the second non-members. Both halves
come from the same split by the same draw, so they are exchangeable and balanced in number and
class; validation and test images are never candidates.

Target models, each a fresh evaluation Conv (see ``train_target``):

* "real": trained on the members; attacked on the members vs the non-members.
* "random subset": trained on ``ipc`` members per class; attacked on those images vs as many
  non-members per class.
* "distilled": trained on the ISA set distilled from the members (they are its sources);
  attacked on the members vs the non-members.

All three see inputs preprocessed by the preprocessor the distillation fits on the members, so
no part of any pipeline has seen a non-member. Each candidate gives the attack features

    (loss, prediction vector, centred one-hot label),  loss = 1/2 ||f(x) - y||^2

Attacker train / test: every (class, membership) cell is halved (``attacker_split``), so both
halves hold as many members as non-members of each class and the label alone tells nothing.
Attackers: a loss threshold (lower loss = member; cut chosen on attacker-train), logistic
regression, an MLP, a random forest and k-NN (scikit-learn). Reported: attack accuracy and
ROC AUC on attacker-test, and the target's accuracy on its members, its non-members and the
test split. The curve repeats the attacks for targets trained with halving epoch budgets.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..data import DatasetSplits, Split, allows_flip
from ..data.splits import class_balanced_subset
from ..evaluate import centred_one_hot, test_accuracy, train_network
from .output import new_figure, write_plot, write_table
from .pipeline import distill_variant, eval_network, load_data, preprocessed
from .settings import ExperimentSettings
from .variants import VARIANTS

ATTACKERS = ("threshold", "logistic", "mlp", "forest", "knn")
SOURCES = ("real", "random subset", "distilled")
COLUMNS = ("source", "members", "attacker", "attack_acc", "attack_auc", "member_acc",
           "non_member_acc", "test_acc")
# Target-model recipe. The evaluation protocol (lr 3e-4, augmentation) is built to generalise:
# on 500 digits members (batch 100) it reached threshold AUC 0.83 after 3000 epochs, 0.99
# without augmentation. lr 1e-3 without augmentation reaches 0.98 in 1000 epochs (measured).
TARGET_LR = 1e-3
TARGET_BATCH = 100
TARGET_EPOCHS = 1000
WARMUP_FRACTION = 0.1


def _attacker(name: str, seed: int):
    models = {
        "logistic": lambda: LogisticRegression(max_iter=1000),
        "mlp": lambda: MLPClassifier((64, 64), max_iter=500, random_state=seed),
        "forest": lambda: RandomForestClassifier(100, random_state=seed),
        "knn": lambda: KNeighborsClassifier(5),
    }
    return make_pipeline(StandardScaler(), models[name]())


def attacker_split(member: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Row indices (train, test): every (class, membership) cell shuffled and halved, an odd
    row going to test. Stratifying on membership alone lets a class's member share on one side
    mirror the other's (fixed totals), and attackers that read the label then score below 0.5
    on a model that leaks nothing."""
    rng = np.random.default_rng(seed)
    cells = member.astype(np.int64) * (int(labels.max()) + 1) + labels
    train, test = [], []
    for cell in np.unique(cells):
        rows = rng.permutation(np.flatnonzero(cells == cell))
        train.append(rows[: len(rows) // 2])
        test.append(rows[len(rows) // 2:])
    return np.concatenate(train), np.concatenate(test)


def _check_attack_inputs(features: np.ndarray, member: np.ndarray, labels: np.ndarray) -> None:
    if features.ndim != 2 or len(features) != len(member) or len(labels) != len(member):
        raise ValueError(f"features must be (n, d) with n = len(member) = len(labels), got "
                         f"{features.shape}, {len(member)} and {len(labels)}")
    if not np.isin(member, (0, 1)).all():
        raise ValueError("member must hold only 0 (non-member) and 1 (member)")
    if min((member == 1).sum(), (member == 0).sum()) < 2:
        raise ValueError("member must mark at least 2 members and 2 non-members")


def attack(features: np.ndarray, member: np.ndarray, labels: np.ndarray,
           seed: int = 0) -> dict[str, tuple[float, float]]:
    """(accuracy, AUC) on attacker-test for every attacker; column 0 of features is the loss,
    ``labels`` the candidates' classes (they stratify the attacker split)."""
    member, labels = np.asarray(member), np.asarray(labels, dtype=np.int64)
    _check_attack_inputs(features, member, labels)
    train, test = attacker_split(member, labels, seed)
    if len(np.unique(member[train])) < 2:
        raise ValueError("attacker-train holds only one group: every class needs at least 2 "
                         "members and 2 non-members")
    train_x, test_x, train_y, test_y = features[train], features[test], member[train], member[test]
    results = {}
    # Threshold: score = -loss (a member was fitted, so its loss is lower); the cut maximising
    # attacker-train accuracy is applied to test.
    train_score, test_score = -train_x[:, 0], -test_x[:, 0]
    best = max(np.unique(train_score), key=lambda c: np.mean((train_score >= c) == train_y))
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


def draw_candidates(train: Split, members: int, num_classes: int,
                    seed: int = 0) -> tuple[Split, Split]:
    """(members, non-members): ``members // C`` of each class from ``train`` and as many
    others of the same class, cut from one permutation per class so the two are exchangeable
    and disjoint."""
    if isinstance(members, bool) or not isinstance(members, int) or members < 2 * num_classes:
        raise ValueError(f"members must be an int >= 2 * classes = {2 * num_classes}, "
                         f"got {members!r}")
    per_class = members // num_classes
    counts = torch.bincount(train.labels, minlength=num_classes)
    if int(counts.min()) < 2 * per_class:
        limit = num_classes * (int(counts.min()) // 2)
        raise ValueError(f"members={members} needs {per_class} members and as many non-members "
                         f"of every class, but class {int(counts.argmin())} has "
                         f"{int(counts.min())} train images; choose members <= {limit}")
    generator = torch.Generator().manual_seed(seed)
    member_rows, other_rows = [], []
    for label in range(num_classes):
        rows = torch.nonzero(train.labels == label).flatten()
        drawn = rows[torch.randperm(len(rows), generator=generator)[: 2 * per_class]]
        member_rows.append(drawn[:per_class])
        other_rows.append(drawn[per_class:])
    return train.subset(torch.cat(member_rows)), train.subset(torch.cat(other_rows))


def target_steps(set_size: int, epochs: int) -> int:
    """Optimiser steps for ``epochs`` passes over a set of ``set_size`` at the target batch."""
    return max(1, math.ceil(epochs * set_size / min(set_size, TARGET_BATCH)))


def train_target(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int,
                 settings: ExperimentSettings, seed: int, *, augment: bool) -> nn.Module:
    """The evaluation Conv trained from scratch for ``epochs`` passes over (images, labels):
    Adam ``TARGET_LR``, linear warm-up over 10% of the steps, cosine decay, batch 100."""
    network = eval_network(settings)
    targets = labels if labels.is_floating_point() else centred_one_hot(labels, num_classes)
    steps = target_steps(len(images), epochs)
    return train_network(
        images, targets, arch=network.arch, norm=network.norm, width=network.width,
        depth=network.depth, steps=steps, lr=TARGET_LR,
        warmup=max(1, int(WARMUP_FRACTION * steps)), batch_size=min(len(images), TARGET_BATCH),
        augment=augment, flip=allows_flip(settings.dataset), init_seed=seed,
        data_seed=seed + 1, device=torch.device(settings.device),
    )


class Target(NamedTuple):
    """What one target model trains on, and whom its attack tells apart."""

    images: torch.Tensor  # preprocessed training images
    labels: torch.Tensor  # int classes, or the distilled set's learned soft labels
    members: Split
    non_members: Split


def _targets(data: DatasetSplits, members: Split, non_members: Split,
             settings: ExperimentSettings, seed: int) -> tuple[dict[str, Target], Split]:
    """source -> Target, and the preprocessed test split; all inputs preprocessed alike."""
    member_data = DatasetSplits(data.name, members, data.val, data.test, data.class_names)
    distilled = distill_variant(member_data, settings, VARIANTS["isa+easy20"], seed)
    # The preprocessor the distillation fitted on the members: the same inputs for all three
    # targets, and no non-member enters any fit.
    prep = distilled.preprocessor
    members, non_members = preprocessed(members, prep), preprocessed(non_members, prep)
    subset = class_balanced_subset(members, settings.ipc, torch.Generator().manual_seed(seed))
    subset_others = class_balanced_subset(non_members, settings.ipc,
                                          torch.Generator().manual_seed(seed))
    return {
        "real": Target(*members, members, non_members),
        "random subset": Target(*subset, subset, subset_others),
        "distilled": Target(distilled.images, distilled.labels, members, non_members),
    }, preprocessed(data.test, prep)


def _check_run_args(budgets: int, target_epochs: int) -> None:
    for name, value in (("budgets", budgets), ("target_epochs", target_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    distinct = target_epochs.bit_length()  # halvings of target_epochs before 1 epoch
    if budgets > distinct:
        raise ValueError(f"budgets must be at most {distinct}: halving {target_epochs} target "
                         f"epochs gives {distinct} distinct budgets, got {budgets}")


def _check_ipc(ipc: int, members: Split, num_classes: int) -> None:
    # The random subset is drawn from the members, and its attack halves every class.
    per_class = len(members) // num_classes
    if not 2 <= ipc <= per_class:
        raise ValueError(f"ipc must lie in [2, members // classes = {per_class}] for mia, "
                         f"got {ipc}")


def attack_target(target: Target, num_classes: int, epochs: int, settings: ExperimentSettings,
                  seed: int, *, augment: bool) -> tuple[nn.Module, dict[str, tuple]]:
    """Train one target for ``epochs`` and attack it: (model, attacker -> (acc, AUC))."""
    model = train_target(target.images, target.labels, num_classes, epochs, settings, seed,
                         augment=augment)
    candidates = Split(torch.cat([target.members.images, target.non_members.images]),
                       torch.cat([target.members.labels, target.non_members.labels]))
    is_member = np.r_[np.ones(len(target.members)), np.zeros(len(target.non_members))]
    features = attack_features(model, candidates, num_classes, settings.device)
    return model, attack(features, is_member, candidates.labels.numpy(), seed)


def run_mia(
    settings: ExperimentSettings, out_dir: str | Path, *, members: int = 500,
    budgets: int = 4, target_epochs: int = TARGET_EPOCHS, target_augment: bool = False,
) -> list[dict]:
    """Attack table (table.md/csv), AUC vs training epochs (curve.md/csv, plot.png).

    Targets train for ``target_epochs`` passes over their own set (the curve halves it
    ``budgets - 1`` times), with the protocol's augmentation if ``target_augment``. ``settings.eval_steps`` / ``eval_models`` do not
    apply; ``settings.seeds[0]`` seeds the distillation, the subset and the targets."""
    settings.validate()
    _check_run_args(budgets, target_epochs)
    data = load_data(settings)
    member_split, non_member_split = draw_candidates(data.train, members, data.num_classes)
    _check_ipc(settings.ipc, member_split, data.num_classes)
    seed = settings.seeds[0]
    targets, test = _targets(data, member_split, non_member_split, settings, seed)
    rows, curve = [], []
    for source, target in targets.items():
        for fraction in [2.0 ** -i for i in reversed(range(budgets))]:
            budget = max(1, int(target_epochs * fraction))
            model, results = attack_target(target, data.num_classes, budget, settings, seed,
                                           augment=target_augment)
            curve.append({"source": source, "epochs": budget,
                          "steps": target_steps(len(target.images), budget),
                          **{f"{name}_auc": auc for name, (_, auc) in results.items()}})
        # The table reports the full budget: the last model of the curve.
        accuracies = {name: test_accuracy(model, split, device=settings.device) for name, split
                      in (("member_acc", target.members), ("non_member_acc", target.non_members),
                          ("test_acc", test))}
        rows += [{"source": source, "members": len(target.members), "attacker": name,
                  "attack_acc": acc, "attack_auc": auc, **accuracies}
                 for name, (acc, auc) in results.items()]
    _write(Path(out_dir), rows, curve, settings, len(member_split), target_epochs)
    return rows


def _write(out_dir: Path, rows, curve, settings, members: int, epochs: int) -> None:
    write_table(out_dir, rows, COLUMNS, title=f"Membership inference: {settings.dataset}, "
                f"{members} members / {members} non-members, targets trained {epochs} epochs")
    write_table(out_dir, curve, ["source", "epochs", "steps", *[f"{a}_auc" for a in ATTACKERS]],
                name="curve", title="Attack AUC vs training epochs of the target model")
    write_plot(out_dir, _plot(curve))


def _plot(curve: list[dict]):
    figure, axes = new_figure(2, width=5.5)
    lowest = min(r[f"{a}_auc"] for r in curve for a in ("threshold", "logistic"))
    for axis, attacker in zip(axes, ("threshold", "logistic")):
        for source in SOURCES:
            points = [r for r in curve if r["source"] == source]
            axis.plot([r["epochs"] for r in points], [r[f"{attacker}_auc"] for r in points],
                      marker="o", label=source)
        axis.set_xscale("log")
        epochs = sorted({r["epochs"] for r in curve})
        axis.set_xticks(epochs, [str(e) for e in epochs])
        axis.minorticks_off()  # the default log minor labels overlap between the budgets
        axis.set_ylim(min(0.4, lowest - 0.02), 1.02)
        axis.axhline(0.5, color="gray", linewidth=0.8, linestyle="--")
        axis.set_xlabel("training epochs of the target model")
        axis.set_ylabel(f"{attacker} attack AUC")
        axis.legend()
    return figure
