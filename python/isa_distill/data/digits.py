"""scikit-learn's bundled 8x8 handwritten digits (1797 images, 16 grey levels)."""

from __future__ import annotations

import torch

from .splits import Split

DIGITS_MAX_LEVEL = 16.0


def load_digits_split() -> tuple[Split, list[str]]:
    from sklearn.datasets import load_digits  # scikit-learn takes seconds to import: on use

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / DIGITS_MAX_LEVEL).float().unsqueeze(1)
    labels = torch.from_numpy(bunch.target).long()
    return Split(images, labels), [str(int(name)) for name in bunch.target_names]
