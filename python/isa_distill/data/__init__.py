"""Datasets, preprocessing and the evaluation augmentation."""

from .errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from .registry import KNOWN_DATASETS, allows_flip, load_dataset, uses_zca_by_default
from .splits import DatasetSplits, Split, class_balanced_subset

__all__ = [
    "KNOWN_DATASETS",
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetSplits",
    "Split",
    "allows_flip",
    "class_balanced_subset",
    "load_dataset",
    "uses_zca_by_default",
]
