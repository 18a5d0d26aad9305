"""--tensorboard: the logged scalars beside log.csv, or a clear error without the package."""

from __future__ import annotations

import sys

import pytest

from isa_distill import tensorboard_log
from isa_distill.cli import main
from isa_distill.runs import LOG, read_log

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = ["--ipc", "1", "--width", "8", "--depth", "2", "--batch-size", "32", "--checkpoint-every",
        "2", "--no-eval", "--quiet"]  # fmt: skip


class FakeWriter:
    """Records what a SummaryWriter would write."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir=None, purge_step=None):
        self.log_dir, self.purge_step = log_dir, purge_step
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False
        FakeWriter.made.append(self)

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    def close(self):
        self.closed = True


@pytest.fixture
def fake_writer(monkeypatch):
    FakeWriter.made = []
    monkeypatch.setattr(tensorboard_log, "summary_writer_class", lambda: FakeWriter)
    return FakeWriter


def test_without_the_package_it_is_a_one_line_error_naming_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    run_dir = tmp_path / "run"
    assert main(["distill", "--tensorboard", "--steps", "2", "--run-dir", str(run_dir),
                 *TINY]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "--tensorboard" in err[0] and "pip install tensorboard" in err[0]
    assert not run_dir.exists()


def test_the_logged_rows_become_scalars(fake_writer, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["distill", "--tensorboard", "--steps", "4", "--run-dir", str(run_dir),
                 *TINY]) == 0  # fmt: skip
    (writer,) = fake_writer.made
    assert writer.log_dir == str(run_dir / "tensorboard") and writer.purge_step is None
    assert writer.closed
    rows = read_log(run_dir / LOG)
    for tag, key in (("loss/kernel", "kernel_loss"), ("loss/label_margin", "margin_loss"),
                     ("loss/total", "loss"), ("lr", "lr")):  # fmt: skip
        written = [(step, value) for name, value, step in writer.scalars if name == tag]
        assert written == [(row["step"], pytest.approx(row[key])) for row in rows], tag
    val = [(step, value) for name, value, step in writer.scalars if name == "val_acc"]
    assert val == [(4, pytest.approx(rows[-1]["val_acc"]))]  # measured at the end only

    # Resuming (extended by 2 steps) drops events past the checkpoint and logs the new steps.
    assert main(["distill", "--resume", "--run-dir", str(run_dir), "--steps", "6",
                 "--tensorboard", "--no-eval", "--quiet"]) == 0  # fmt: skip
    resumed = fake_writer.made[-1]
    assert resumed.purge_step == 5
    assert {step for _, _, step in resumed.scalars} == {6}  # logged every 10 steps and at the end
