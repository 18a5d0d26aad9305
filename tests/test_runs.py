"""Run directories: atomic files, the distilled-set round trip, the CSV log."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from isa_distill import runs
from isa_distill.data.preprocess import Preprocessor
from isa_distill.distill import DistillConfig
from isa_distill.runs import (
    CHECKPOINT,
    DISTILLED,
    LOG,
    META,
    Run,
    RunExistsError,
    RunNotFoundError,
    atomic_write,
    load_distilled,
    read_log,
)


def fake_data(channels: int = 3, size: int = 4) -> SimpleNamespace:
    return SimpleNamespace(name="cifar10", num_classes=2, class_names=["cat", "dog"],
                           channels=channels, image_size=size)  # fmt: skip


def written_run(tmp_path, *, zca: bool) -> tuple[Run, torch.Tensor, torch.Tensor, Preprocessor]:
    gen = torch.Generator().manual_seed(0)
    preprocessor = Preprocessor.fit(torch.rand(40, 3, 4, 4, generator=gen), zca=zca)
    images = torch.randn(4, 3, 4, 4, generator=gen)
    labels = torch.randn(4, 2, generator=gen)
    run = Run.create(tmp_path / "run")
    run.write_meta(fake_data(), DistillConfig(ipc=2), preprocessor, flip=True, steps_done=0)
    run.write_distilled(images, labels, preprocessor)
    return run, images, labels, preprocessor


@pytest.mark.parametrize("zca", [False, True])
def test_load_distilled_round_trip(tmp_path, zca):
    run, images, labels, preprocessor = written_run(tmp_path, zca=zca)
    run.update_meta(steps_done=7, elapsed=1.5)
    loaded = load_distilled(tmp_path / "run")
    assert torch.equal(loaded.images, images)
    assert torch.equal(loaded.labels, labels)
    assert loaded.meta["dataset"] == "cifar10"
    assert loaded.meta["steps_done"] == 7
    assert loaded.meta["config"]["ipc"] == 2
    assert loaded.meta["preprocessing"]["zca"] is zca
    assert loaded.preprocessor.zca is zca
    real = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.preprocessor.transform(real), preprocessor.transform(real))
    # The file path works as well as the folder.
    assert torch.equal(load_distilled(tmp_path / "run" / DISTILLED).images, images)


def test_block_zca_is_stored_and_restored_like_the_full_one(tmp_path):
    gen = torch.Generator().manual_seed(0)
    preprocessor = Preprocessor.fit(torch.rand(40, 3, 4, 4, generator=gen), zca=True, zca_block=2)
    images = torch.randn(4, 3, 4, 4, generator=gen)
    run = Run.create(tmp_path / "run")
    run.write_meta(fake_data(), DistillConfig(ipc=2), preprocessor, flip=True, steps_done=0)
    run.write_distilled(images, torch.randn(4, 2, generator=gen), preprocessor)
    loaded = load_distilled(tmp_path / "run")
    assert loaded.meta["preprocessing"]["zca_block"] == 2
    assert loaded.preprocessor.zca_block == 2
    real = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.preprocessor.transform(real), preprocessor.transform(real))
    assert torch.equal(loaded.pixel_images, preprocessor.inverse(images))


def test_meta_is_plain_json_with_the_essentials(tmp_path):
    written_run(tmp_path, zca=True)
    meta = json.loads((tmp_path / "run" / META).read_text())
    for key in ("dataset", "ipc", "class_names", "preprocessing", "label_encoding", "config",
                "seed", "steps_done", "version"):  # fmt: skip
        assert key in meta, key


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def half_write(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_checkpoint_interrupted_mid_save_leaves_the_previous_one(tmp_path, monkeypatch):
    run = Run.create(tmp_path / "run")
    run.save_checkpoint({"step": 1, "x": torch.ones(3)})
    real_save = torch.save

    def dying_save(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt  # killed after the bytes were written, before the rename

    monkeypatch.setattr(runs.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"step": 2, "x": torch.zeros(3)})
    monkeypatch.undo()
    assert run.load_checkpoint()["step"] == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT]


def test_create_refuses_a_non_empty_directory_and_accepts_an_empty_one(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("1")
    with pytest.raises(RunExistsError, match="already exists"):
        Run.create(tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "1"
    (tmp_path / "empty").mkdir()
    assert Run.create(tmp_path / "empty").path == tmp_path / "empty"
    assert Run.create(tmp_path / "new" / "nested").path.is_dir()


def test_log_skips_a_torn_line_and_truncates_on_resume(tmp_path):
    run = Run.create(tmp_path / "run")
    for step in (1, 2, 3):
        run.append_log({"step": step, "loss": 0.5 / step, "lr": 1e-3,
                        "val_acc": 0.5 if step == 2 else None, "elapsed": float(step)})  # fmt: skip
    with open(tmp_path / "run" / LOG, "a") as handle:
        handle.write("4,0.1")  # a kill in the middle of a row
    rows = read_log(tmp_path / "run" / LOG)
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert [row["val_acc"] for row in rows] == [None, 0.5, None]
    assert [row["step"] for row in run.read_log(upto_step=2)] == [1, 2]
    assert [row["step"] for row in read_log(tmp_path / "run" / LOG)] == [1, 2]


def test_load_distilled_reports_what_is_missing(tmp_path):
    with pytest.raises(RunNotFoundError, match="not a run directory"):
        load_distilled(tmp_path)
    run, *_ = written_run(tmp_path, zca=False)
    (run.path / DISTILLED).unlink()
    with pytest.raises(RunNotFoundError, match="no distilled.safetensors"):
        load_distilled(run.path)


def test_load_distilled_is_public_at_the_package_top_level():
    import isa_distill

    assert isa_distill.load_distilled is load_distilled
    assert "load_distilled" in isa_distill.__all__
