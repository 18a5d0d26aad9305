"""isa-distill: dataset distillation with FRePo's kernel meta-loss plus Infinite Semantic
Augmentation, on a Rust CPU kernel and a PyTorch op.

The op (``isa_krr_loss``, ``krr_predict``, ``ISAKRRLoss``), reading a run's distilled set
(``load_distilled``) and distilling tensors in memory (``distill_tensors``) are imported here;
the rest lives in its modules (``isa_distill.distill``, ``isa_distill.evaluate``, ...).
"""

from .checks import Status, raise_for_status
from .errors import NotPositiveDefiniteError
from .functional import ISAInfo, isa_krr_loss, krr_predict
from .in_memory import distill_tensors
from .modules import ISAKRRLoss
from .runs import Distilled, load_distilled


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


__all__ = [
    "Distilled",
    "ISAInfo",
    "ISAKRRLoss",
    "NotPositiveDefiniteError",
    "Status",
    "__version__",
    "distill_tensors",
    "isa_krr_loss",
    "krr_predict",
    "load_distilled",
    "raise_for_status",
]
