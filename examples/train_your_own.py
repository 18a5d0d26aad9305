"""Train your own network on a distilled set: MSE on its soft labels vs cross-entropy on their
argmax, scored on the real test split passed through the run's preprocessor.

    isa-distill distill --run-dir runs/digits-ipc10 --no-eval
    python examples/train_your_own.py runs/digits-ipc10

A plain training loop (Adam, no augmentation, full batches) as a user would write it, over
several seeds; docs/using-a-distilled-set.md has the numbers it printed.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from isa_distill import load_distilled
from isa_distill.data import load_dataset


class SmallCNN(nn.Module):
    """Any network works; this one fits 8x8 digits and 32x32 images alike."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(64 * 4, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train(images, labels, loss: str, *, seed: int, steps: int, lr: float) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallCNN(images.shape[1], labels.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        outputs = model(images)
        if loss == "mse":  # regression onto the learned soft labels, as they were made for
            value = 0.5 * (outputs - labels).square().sum(1).mean()
        else:  # classification of each image as its label's largest entry
            value = nn.functional.cross_entropy(outputs, labels.argmax(1))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default: 1000)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam lr (default: 1e-3)")
    parser.add_argument("--seeds", type=int, default=5, help="networks per loss (default: 5)")
    args = parser.parse_args()

    run = load_distilled(args.run_dir)
    data = load_dataset(run.meta["dataset"], run.meta.get("data_root"))
    test_images = run.preprocessor.transform(data.test.images)  # the run's standardisation/ZCA
    labels = run.labels if run.labels.ndim == 2 else nn.functional.one_hot(
        run.labels, run.meta["num_classes"]).float()  # a set imported with class indices
    print(f"{args.run_dir}: {len(run.images)} distilled {run.meta['dataset']} images; "
          f"{len(test_images)} test images; {args.steps} Adam steps, {args.seeds} seeds")
    for loss, name in (("mse", "MSE on the soft labels"), ("ce", "cross-entropy on the argmax")):
        scores = [accuracy(train(run.images, labels, loss, seed=seed, steps=args.steps,
                                 lr=args.lr), test_images, data.test.labels)
                  for seed in range(args.seeds)]  # fmt: skip
        spread = statistics.pstdev(scores) if len(scores) > 1 else 0.0
        print(f"  {name:<30} {100 * statistics.mean(scores):5.1f} +- {100 * spread:.1f} % "
              f"({', '.join(f'{100 * s:.1f}' for s in scores)})")


if __name__ == "__main__":
    main()
