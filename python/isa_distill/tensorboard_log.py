"""TensorBoard scalars of a distillation run, beside its log.csv (``--tensorboard``).

Written to ``<run>/tensorboard/`` with ``torch.utils.tensorboard.SummaryWriter``, which needs
the ``tensorboard`` package (``pip install tensorboard``; not a dependency of isa-distill).
Per logged step: ``loss/kernel`` (the ISA KRR loss), ``loss/label_margin``, ``loss/total``,
``lr`` and, when measured, ``val_acc``. A resumed run drops the events past its checkpoint
(``purge_step``), as log.csv drops its rows. View with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
SCALARS = {"kernel_loss": "loss/kernel", "margin_loss": "loss/label_margin",
           "loss": "loss/total", "lr": "lr", "val_acc": "val_acc"}  # fmt: skip


class TensorBoardMissingError(ImportError):
    """The ``tensorboard`` package is not installed."""


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or ``TensorBoardMissingError`` saying what to
    install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise TensorBoardMissingError(
            "TensorBoard logging (--tensorboard) needs the tensorboard package, which is not "
            "installed: run `pip install tensorboard`, or leave --tensorboard out (log.csv has "
            "the same values)"
        ) from error
    return SummaryWriter


class TensorBoardLog:
    """``on_log`` for ``distill``: writes each logged row as scalars at its step.

    The writer (and its folder) is created at the first row, so a run directory is still empty
    when ``distill`` checks it; the package is looked up at once.
    """

    def __init__(self, run_dir: str | Path, *, purge_step: int | None = None) -> None:
        self._writer_class = summary_writer_class()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._purge_step = purge_step
        self._writer: Any = None

    def __call__(self, row: dict[str, Any]) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.log_dir),
                                              purge_step=self._purge_step)
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self._writer.add_scalar(tag, float(row[key]), global_step=int(row["step"]))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
