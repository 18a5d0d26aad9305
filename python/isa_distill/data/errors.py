"""Errors raised when a dataset cannot be found or read."""


class DatasetError(Exception):
    """Base class: a dataset could not be loaded."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset files are not where we looked."""


class DatasetFormatError(DatasetError, ValueError):
    """The dataset files exist but are not in the expected format (truncated, corrupt, ...)."""
