"""Run directories: atomic files, the distilled-set round trip, the CSV log."""

from __future__ import annotations

import json
import os
from pathlib import Path
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
    RunDamagedError,
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


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_run_files_get_the_mode_the_umask_gives_new_files(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run, *_ = written_run(tmp_path, zca=False)
        run.save_checkpoint({"step": 1})
        run.append_log({"step": 1, "loss": 0.5, "lr": 1e-3, "elapsed": 1.0})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.path.iterdir()}
    assert modes == {name: mode for name in (CHECKPOINT, DISTILLED, META, LOG)}


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
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT, META]


@pytest.mark.parametrize("save", ["checkpoint", "distilled"])
def test_a_full_disk_is_an_os_error_naming_the_file_and_keeps_the_previous_one(
    tmp_path, monkeypatch, save
):
    import errno

    run = Run.create(tmp_path / "run")
    preprocessor = Preprocessor.fit(torch.rand(20, 1, 4, 4), zca=False)
    run.save_checkpoint({"step": 1})
    run.write_distilled(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2), preprocessor)
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    real_write_bytes = Path.write_bytes

    def full_disk(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    name = CHECKPOINT if save == "checkpoint" else DISTILLED
    with pytest.raises(OSError, match=f"cannot write {run.path / name}: No space left on device"):
        if save == "checkpoint":
            run.save_checkpoint({"step": 2})
        else:
            run.write_distilled(torch.ones(2, 1, 4, 4), torch.ones(2, 2), preprocessor)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before  # no temporary left


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


def test_log_lines_that_are_not_utf8_are_skipped_like_torn_ones(tmp_path):
    run = Run.create(tmp_path / "run")
    run.append_log({"step": 1, "loss": 0.5, "lr": 1e-3, "val_acc": None, "elapsed": 1.0})
    with open(tmp_path / "run" / LOG, "ab") as handle:
        handle.write(b"2,\xb7\xff\xfe,0.001,,3.0\n")  # a damaged sector, say
    run.append_log({"step": 3, "loss": 0.25, "lr": 1e-3, "val_acc": None, "elapsed": 3.0})
    assert [row["step"] for row in read_log(tmp_path / "run" / LOG)] == [1, 3]


def test_load_distilled_reports_what_is_missing(tmp_path):
    with pytest.raises(RunNotFoundError, match="not a run directory"):
        load_distilled(tmp_path)
    run, *_ = written_run(tmp_path, zca=False)
    (run.path / DISTILLED).unlink()  # recorded in meta.json, so its absence is damage
    with pytest.raises(RunDamagedError, match="distilled.safetensors is missing"):
        load_distilled(run.path)
    (run.path / DISTILLED).mkdir()
    with pytest.raises(RunDamagedError, match="distilled.safetensors is not a regular file"):
        load_distilled(run.path)
    (run.path / DISTILLED).rmdir()
    run.meta.update(sha256={}, sha256_pending={})
    run.update_meta(steps_done=0, elapsed=0.0)  # as before the first checkpoint
    with pytest.raises(RunNotFoundError, match="no distilled.safetensors yet"):
        load_distilled(run.path)


def test_load_distilled_is_public_at_the_package_top_level():
    import isa_distill

    assert isa_distill.load_distilled is load_distilled
    assert "load_distilled" in isa_distill.__all__


# ----------------------------------------------------------------------------- damage is noticed

PATTERN = torch.arange(4096, dtype=torch.float32)  # a tensor whose bytes are easy to find


def flip_byte_inside(path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s stored bytes in ``path``."""
    data = bytearray(path.read_bytes())
    start = bytes(data).find(tensor.numpy().tobytes())
    assert start >= 0, "the tensor's bytes are not stored contiguously"
    data[start + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_inside_a_checkpoint_tensor_is_reported(tmp_path):
    run, *_ = written_run(tmp_path, zca=False)
    run.save_checkpoint({"step": 3, "pool": PATTERN.clone()})
    flip_byte_inside(run.path / CHECKPOINT, PATTERN)
    # torch reads the damaged file without complaint: only the recorded sha256 notices.
    assert not torch.equal(torch.load(run.path / CHECKPOINT, weights_only=True)["pool"], PATTERN)
    with pytest.raises(RunDamagedError, match=r"checkpoint\.pt is damaged.*restore it"):
        Run.open(run.path).load_checkpoint()


def test_a_flipped_byte_inside_the_distilled_images_is_reported(tmp_path):
    run, images, labels, preprocessor = written_run(tmp_path, zca=False)
    run.write_distilled(PATTERN.reshape(64, 1, 8, 8), labels, preprocessor)
    flip_byte_inside(run.path / DISTILLED, PATTERN)
    with pytest.raises(RunDamagedError, match=r"distilled\.safetensors is damaged"):
        load_distilled(run.path)


def test_runs_written_before_hashes_load_unchecked(tmp_path):
    run, images, *_ = written_run(tmp_path, zca=False)
    run.save_checkpoint({"step": 3})
    meta = json.loads((run.path / META).read_text())
    del meta["sha256"], meta["sha256_pending"]
    (run.path / META).write_text(json.dumps(meta))
    assert torch.equal(load_distilled(run.path).images, images)
    assert Run.open(run.path).load_checkpoint()["step"] == 3


def saved_twice(tmp_path, monkeypatch, kill) -> Run:
    """A run with checkpoint step 1 and distilled set A, then a save of step 2 and set B that
    ``kill(monkeypatch)`` interrupts."""
    run, _, labels, preprocessor = written_run(tmp_path, zca=False)
    run.save_checkpoint({"step": 1})
    with monkeypatch.context() as patch:
        kill(patch)
        with pytest.raises(KeyboardInterrupt):
            run.save_checkpoint({"step": 2})
    return run


def kill_before_the_move(patch):
    patch.setattr(runs.StagedFile, "move_into_place", raising(KeyboardInterrupt))


def kill_after_the_move(patch):
    patch.setattr(Run, "_record_written", raising(KeyboardInterrupt))


def raising(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(("kill", "step_on_disk"),
                         [(kill_before_the_move, 1), (kill_after_the_move, 2)])
def test_a_kill_between_file_and_meta_leaves_a_run_that_loads_and_saves_on(
    tmp_path, monkeypatch, kill, step_on_disk
):
    run = saved_twice(tmp_path, monkeypatch, kill)
    meta = json.loads((run.path / META).read_text())
    assert CHECKPOINT in meta["sha256_pending"]  # meta.json and the file were between writes
    reopened = Run.open(run.path)
    assert reopened.load_checkpoint()["step"] == step_on_disk
    # The version found is now the recorded one: a later interrupted save still leaves a
    # loadable run (had the stale record stayed, the file would match nothing).
    with monkeypatch.context() as patch:
        kill_before_the_move(patch)
        with pytest.raises(KeyboardInterrupt):
            reopened.save_checkpoint({"step": 3})
    assert Run.open(run.path).load_checkpoint()["step"] == step_on_disk
    reopened.save_checkpoint({"step": 4})
    assert Run.open(run.path).load_checkpoint()["step"] == 4
    assert json.loads((run.path / META).read_text())["sha256_pending"] == {}


def test_a_kill_after_any_file_move_of_a_save_leaves_a_consistent_run(tmp_path, monkeypatch):
    """Kill a whole save (checkpoint, distilled set, meta) after each of its file moves."""
    run, images, labels, preprocessor = written_run(tmp_path, zca=False)
    run.save_checkpoint({"step": 1})
    moves, kill_at = 0, None
    real_replace = os.replace

    def counting_replace(*args):
        nonlocal moves
        real_replace(*args)
        moves += 1
        if moves == kill_at:
            raise KeyboardInterrupt

    def save(step, new_images):
        run.save_checkpoint({"step": step})
        run.write_distilled(new_images, labels, preprocessor)
        run.update_meta(steps_done=step, elapsed=1.0)

    monkeypatch.setattr(runs.os, "replace", counting_replace)
    save(1, images)
    moves_per_save, seen = moves, set()
    for kill in range(1, moves_per_save + 1):
        kill_at = None
        save(1, images)  # the state before the interrupted save
        moves, kill_at = 0, kill
        with pytest.raises(KeyboardInterrupt):
            save(2, images + 1)
        step = Run.open(run.path).load_checkpoint()["step"]
        loaded = load_distilled(run.path).images
        assert step in (1, 2) and (torch.equal(loaded, images) or torch.equal(loaded, images + 1))
        seen.add((step, torch.equal(loaded, images + 1)))
    assert seen == {(1, False), (2, False), (2, True)}  # every state a kill can leave


def test_a_run_without_a_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    run, *_ = written_run(tmp_path, zca=False)
    with pytest.raises(RunNotFoundError, match=r"no checkpoint\.pt.*nothing to resume.*delete"):
        run.load_checkpoint()
    run.save_checkpoint({"step": 2})
    (run.path / CHECKPOINT).unlink()  # recorded, then lost: damage
    with pytest.raises(RunDamagedError, match=r"checkpoint\.pt is missing"):
        Run.open(run.path).load_checkpoint()


# ----------------------------------------------------------------------------- meta.json checks


def break_meta(path, change) -> None:
    meta = json.loads((path / META).read_text())
    (path / META).write_text(json.dumps(change(meta)) if callable(change) else change)


def without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def with_config(**values):
    return lambda meta: {**meta, "config": {**meta["config"], **values}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ('"run"', "not a JSON object"),
        ('{"dataset": ', "not valid JSON"),
        (without("config"), "lacks 'config'"),
        (without("dataset"), "lacks 'dataset'"),
        (lambda meta: {**meta, "config": [1]}, "'config' must be an object"),
        (lambda meta: {**meta, "ipc": "ten"}, "'ipc' must be an integer"),
        (lambda meta: {**meta, "flip": 1}, "'flip' must be true or false"),
        (lambda meta: {**meta, "data_root": 3}, "'data_root' must be a string or null"),
        (with_config(epsilon="big"), "config.epsilon must be a number"),
        (with_config(steps=True), "config.steps must be an integer"),
        (with_config(discard=1.5), "discard must lie in"),
        (with_config(colour="red"), "unknown DistillConfig fields"),
        (lambda meta: {**meta, "sha256": {"checkpoint.pt": "00"}}, "sha256 hex digest"),
        (lambda meta: {**meta, "sha256": {"notes.txt": "0" * 64}}, "unknown file 'notes.txt'"),
    ],
)  # fmt: skip
def test_a_broken_meta_json_is_a_clear_error(tmp_path, change, message):
    run, *_ = written_run(tmp_path, zca=False)
    break_meta(run.path, change)
    for load in (Run.open, load_distilled):
        with pytest.raises(RunDamagedError, match=r"meta\.json is damaged: .*" + message):
            load(run.path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda meta: {**meta, "num_classes": 0}, "num_classes 0 and ipc 2 must be positive"),
    (lambda meta: {**meta, "ipc": -1}, "must be positive"),
    (lambda meta: {**meta, "num_classes": 11}, r"num_classes 11 x ipc 2 != the 4 stored images"),
    (lambda meta: {**meta, "num_classes": 4, "ipc": 1, "class_names": list("abcd")},
     r"the stored labels are \(4, 2\), not \(4, num_classes 4\)"),
    (lambda meta: {**meta, "class_names": ["a"]}, "1 class_names for num_classes 2"),
    (lambda meta: {**meta, "image_size": 32}, r"describe images of \(3, 32, 32\), the stored "
     r"ones are \(3, 4, 4\)"),
])  # fmt: skip
def test_meta_json_that_disagrees_with_the_stored_set_is_a_clear_error(tmp_path, change,
                                                                        message):
    run, *_ = written_run(tmp_path, zca=False)
    break_meta(run.path, change)
    with pytest.raises(RunDamagedError, match=r"meta\.json is damaged: .*" + message):
        load_distilled(run.path)


def test_config_fields_missing_from_an_older_run_get_their_defaults(tmp_path):
    run, *_ = written_run(tmp_path, zca=False)
    break_meta(run.path, lambda meta: {**meta, "config": {"ipc": 2, "steps": 5}})
    config = Run.open(run.path).meta["config"]
    assert config["steps"] == 5 and config["epsilon"] == DistillConfig().epsilon


def test_a_run_directory_under_a_regular_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunNotFoundError, match=r"notes\.txt is a regular file"):
        Run.open(tmp_path / "notes.txt" / "run")
    with pytest.raises(RunNotFoundError, match="it is a regular file"):
        load_distilled(tmp_path / "notes.txt")
    with pytest.raises(RunNotFoundError, match="does not exist"):
        Run.open(tmp_path / "elsewhere")
    with pytest.raises(RunExistsError, match=r"notes\.txt, on its path, is a regular file"):
        Run.create(tmp_path / "notes.txt" / "run")
    with pytest.raises(RunExistsError, match=r"notes\.txt is a regular file"):
        Run.create(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "x"
