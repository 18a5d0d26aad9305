"""Datasets, preprocessing and the evaluation augmentation."""

from .errors import DatasetError, DatasetFormatError, DatasetNotFoundError
from .registry import (
    CLI_NAMES,
    KNOWN_DATASETS,
    ArgumentNames,
    allows_flip,
    load_dataset,
    uses_zca_by_default,
)
from .splits import DatasetSplits, Split, class_balanced_subset

__all__ = [
    "CLI_NAMES",
    "KNOWN_DATASETS",
    "ArgumentNames",
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
