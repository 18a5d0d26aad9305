"""isa-distill: dataset distillation with FRePo's kernel meta-loss plus Infinite Semantic
Augmentation, on a Rust CPU kernel and a PyTorch op.

Only the core API is imported here; the distillation modules (``isa_distill.data``,
``isa_distill.models``, ...) are imported on demand.
"""

from .checks import Status, raise_for_status
from .errors import NotPositiveDefiniteError
from .functional import ISAInfo, isa_krr_loss, krr_predict
from .modules import ISAKRRLoss


def _version() -> str:
    try:
        from ._core import __version__ as native_version
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("isa-distill")
        except PackageNotFoundError:
            return "0+unknown"
    return native_version


__version__ = _version()


def __getattr__(name: str):
    """``isa_distill.load_distilled`` without importing the pipeline at package import."""
    if name == "load_distilled":
        from .runs import load_distilled

        return load_distilled
    raise AttributeError(f"module 'isa_distill' has no attribute {name!r}")

__all__ = [
    "ISAInfo",
    "ISAKRRLoss",
    "NotPositiveDefiniteError",
    "Status",
    "__version__",
    "isa_krr_loss",
    "krr_predict",
    "load_distilled",
    "raise_for_status",
]
