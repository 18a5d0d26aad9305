"""The command line: user errors exit 2 with one clear line; a tiny end-to-end run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from isa_distill.cli import main
from isa_distill.runs import CHECKPOINT, DISTILLED, META

TINY = ["--width", "8", "--depth", "2", "--batch-size", "32", "--checkpoint-every", "2",
        "--eval-models", "1", "--eval-steps", "3", "--no-full-data", "--quiet"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("isa-distill: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_unknown_dataset_lists_the_known_ones(capsys, tmp_path):
    assert main(["distill", "--dataset", "imagenet-1k", "--run-dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert "unknown dataset 'imagenet-1k'" in line and "cifar10" in line and "digits" in line
    assert not (tmp_path / "r").exists()


def test_unknown_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_version_flag(capsys):
    import isa_distill

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"isa-distill {isa_distill.__version__}"


@pytest.mark.parametrize("command", ["ablate", "hardness", "diversity"])
def test_variants_help_names_every_variant(capsys, command):
    import re

    from isa_distill.experiments.variants import VARIANTS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(re.sub(r"-\n\s+", "-", capsys.readouterr().out).split())
    assert all(f" {name} " in text for name in VARIANTS)


def test_too_large_ipc(capsys, tmp_path):
    assert main(["distill", "--ipc", "1000", "--run-dir", str(tmp_path / "r")]) == 2
    assert "--ipc=1000 is too large" in error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_missing_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ISA_DISTILL_DATA", str(tmp_path / "nothing-here"))
    assert main(["distill", "--dataset", "cifar10", "--run-dir", str(tmp_path / "r")]) == 2
    assert "dataset 'cifar10' not found" in error_line(capsys)


def test_existing_run_dir_is_left_intact(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.txt").write_text("precious")
    assert main(["distill", "--run-dir", str(run_dir), *TINY, "--steps", "2"]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("isa-distill: error: ") and "already exists" in out.err
    assert len(out.err.strip().splitlines()) == 1
    assert "distilling" not in out.out  # refused before the data is loaded and the plan shown
    assert [p.name for p in run_dir.iterdir()] == ["results.txt"]
    assert (run_dir / "results.txt").read_text() == "precious"


def test_resume_needs_a_run_dir(capsys):
    assert main(["distill", "--resume"]) == 2
    assert "--resume needs --run-dir" in error_line(capsys)


def test_evaluate_and_show_need_a_run(capsys, tmp_path):
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in error_line(capsys)
    assert main(["show", str(tmp_path)]) == 2
    assert "not a run directory" in error_line(capsys)


def test_distill_show_evaluate_resume_end_to_end(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "3", "--run-dir", str(run_dir), *TINY]) == 0
    out = capsys.readouterr().out
    assert "distilled (ISA eps=-1, discard=0.2)" in out and "random subset" in out
    for name in (DISTILLED, META, CHECKPOINT, "log.csv", "images.png", "curves.png"):
        assert (run_dir / name).is_file(), name

    (run_dir / "images.png").unlink()
    assert main(["show", str(run_dir)]) == 0
    assert "3 / 3 steps" in capsys.readouterr().out
    assert (run_dir / "images.png").is_file()

    assert main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "2", "--quiet",
                 "--no-full-data"]) == 0  # fmt: skip
    assert "random subset" in capsys.readouterr().out

    # Resuming a finished run changes nothing and succeeds.
    assert main(["distill", "--resume", "--run-dir", str(run_dir), "--no-eval", "--quiet"]) == 0


def test_eval_batches_and_select_flags_reach_the_evaluation(capsys, tmp_path, monkeypatch):
    from isa_distill import evaluate

    calls = []
    real = evaluate.evaluate_set

    def spy(*args, **options):
        if "batches" in options:  # the evaluation table, not distillation's validation probe
            calls.append({k: options[k] for k in ("batches", "select", "select_every")})
            assert options["select"] != "best-val" or len(options["val"]) > 0
        return real(*args, **options)

    monkeypatch.setattr(evaluate, "evaluate_set", spy)
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), *TINY,
                 "--eval-batches", "class-sorted", "--select", "best-val",
                 "--select-every", "1"]) == 0  # fmt: skip
    assert "class-sorted batches, best-val weights" in capsys.readouterr().out
    # The distilled set and the random subset (which calls evaluate_set too).
    assert calls == [{"batches": "class-sorted", "select": "best-val", "select_every": 1}] * 2

    calls.clear()
    assert main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "2", "--quiet",
                 "--no-full-data"]) == 0  # fmt: skip
    assert "shuffled batches, last weights" in capsys.readouterr().out
    assert calls == [{"batches": "shuffled", "select": "last", "select_every": None}] * 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval-batches", "sorted"], "invalid choice: 'sorted'"),
        (["--select", "best-test"], "invalid choice: 'best-test'"),
        (["--select", "best-val", "--select-every", "0"], "expected a positive integer"),
        (["--eval-models", "99999999999999999999"], "expected at most 1000 networks"),
    ],
)
def test_bad_evaluation_flags_are_argparse_errors(capsys, tmp_path, flags, message):
    for command in (["distill", "--run-dir", str(tmp_path / "r")], ["evaluate", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, *flags])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, message", [
    (["--discard", "1.5"], "--discard must lie in [0, 1), got 1.5"),
    (["--steps", "0"], "--steps must be a positive int, got 0"),
    (["--batch-size", "-3"], "--batch-size must be a positive int, got -3"),
    (["--lr", "-1"], "--lr must be a finite positive number, got -1.0"),
    (["--seed", "-1"], "--seed must be an int in [0, 4294967295], got -1"),
    (["--seed", "4294967296"], "--seed must be an int in [0, 4294967295], got 4294967296"),
])
def test_bad_settings_name_the_flag_not_the_config_field(capsys, tmp_path, flags, message):
    assert main(["distill", *flags, "--run-dir", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"isa-distill: error: {message}"
    assert not (tmp_path / "r").exists()

def test_select_every_without_best_val_is_refused_before_distilling(capsys, tmp_path):
    run_dir = tmp_path / "r"
    assert main(["distill", "--run-dir", str(run_dir), *TINY, "--select-every", "5"]) == 2
    assert "--select-every applies to --select best-val only" in error_line(capsys)
    assert not run_dir.exists()
    assert main(["distill", "--run-dir", str(run_dir), *TINY, "--select", "best-val",
                 "--select-every", "100"]) == 2  # TINY has --eval-steps 3
    assert "--select-every 100 exceeds --eval-steps 3" in error_line(capsys)
    assert not run_dir.exists()


@pytest.mark.parametrize("flag", ["--formation", "--random-models", "--random-width",
                                  "--random-depth"])
@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_source_and_formation_sizes_are_argparse_errors(capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--run-dir", str(tmp_path / "r"), flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected a positive integer, got '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--formation", "3"], "error: --formation 3: formation 3 does not divide the image size 8"),
    (["--formation", "4", "--ipc", "10"], "--ipc=10 is too large with formation 4"),
    (["--krr-loss", "platt", "--epsilon", "-1"], "krr_loss 'platt' needs epsilon in [0, 1]"),
    (["--source", "random", "--random-depth", "4"], "random_depth=4 is too deep for 8x8 images"),
])  # fmt: skip
def test_settings_the_data_cannot_take_are_one_line_errors(capsys, tmp_path, flags, message):
    assert main(["distill", "--run-dir", str(tmp_path / "r"), *TINY, "--steps", "1",
                 *flags]) == 2  # fmt: skip
    assert message in error_line(capsys)


def test_random_source_with_formation_end_to_end(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), *TINY,
                 "--source", "random", "--random-models", "2", "--random-width", "8",
                 "--random-depth", "2", "--formation", "2", "--krr-loss", "platt",
                 "--epsilon", "1", "--no-label-margin"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "2 random ConvNets per step (width 8, depth 2)" in out
    assert "distilled (RFAD + ISA eps=1, discard=0.2, Platt, formation 2x2)" in out
    meta = json.loads((run_dir / META).read_text())
    assert meta["formation"] == 2 and meta["config"]["source"] == "random"
    assert main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "10 images of (1, 8, 8) stored, decoded to 40 (formation 2x2)" in shown
    assert "2 random ConvNets per step" in shown
    # Resuming with another source or formation would change the set: refused by name.
    assert resume(run_dir, "--formation", "1", "--source", "pool") == 2
    line = error_line(capsys)
    assert "--formation 1 (the run has 2)" in line and "--source pool (the run has random)" in line


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "digits" in out


def test_info_explains_the_validation_hold_out(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "holds 10% of the train images out for validation" in out
    assert "digits         found: 1437 train images = 1293 + 144 validation, 360 test" in out


def test_info_lists_every_dataset_when_one_of_them_is_damaged(capsys, tmp_path, monkeypatch):
    damaged = tmp_path / "cifar-10-batches-py"
    damaged.mkdir()
    (damaged / "batches.meta").write_bytes(b"not a pickle")
    monkeypatch.setenv("ISA_DISTILL_DATA", str(tmp_path))
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    [cifar] = [line for line in lines if line.startswith("  cifar10 ")]
    assert "unusable: " in cifar and "batches.meta" in cifar
    assert any(line.startswith("  cifar100 ") for line in lines)  # the listing went on


def test_the_three_evaluation_bars_say_which_set_they_train_on(capsys, tmp_path):
    run_dir = tmp_path / "run"
    flags = [flag for flag in TINY if flag not in ("--quiet", "--no-full-data")]
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), *flags]) == 0
    err = capsys.readouterr().err
    for label in ("evaluate distilled set", "evaluate random subset", "evaluate full train data"):
        assert label in err, label


# ----------------------------------------------------------------------------- resume and damage


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step digits run at IPC 1 with the tiny flags (copied per test by ``run_copy``)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), *TINY,
                 "--no-eval"]) == 0  # fmt: skip
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    capsys.readouterr()
    return copy


def resume(run_dir, *flags) -> int:
    return main(["distill", "--resume", "--run-dir", str(run_dir), "--no-eval", "--quiet", *flags])


def test_resume_refuses_changed_flags_naming_them(capsys, run_copy):
    meta = (run_copy / META).read_bytes()
    assert resume(run_copy, "--dataset", "cifar10", "--epsilon", "0.5", "--width", "16") == 2
    line = error_line(capsys)
    assert "cannot resume" in line
    for flag in ("--dataset cifar10 (the run has digits)", "--epsilon 0.5 (the run has -1.0)",
                 "--width 16 (the run has 8)"):  # fmt: skip
        assert flag in line, flag
    assert "--steps" in line and "meta.json" in line  # what may change, where the settings are
    assert (run_copy / META).read_bytes() == meta

    assert resume(run_copy, "--preset", "paper") == 2
    assert "--preset paper (sets batch_size 1024 where the run has 32" in error_line(capsys)
    assert resume(run_copy, "--flip", "--lr", "0.1") == 2
    line = error_line(capsys)
    assert "--flip (the run has --no-flip, the dataset's default)" in line
    assert "--lr 0.1 (the run has 0.001, the adam default)" in line


def test_resume_accepts_the_original_flags_and_the_ones_that_may_change(capsys, run_copy):
    # The whole original command again, with --resume: nothing changes.
    assert main(["distill", "--resume", "--ipc", "1", "--steps", "2", "--run-dir", str(run_copy),
                 "--dataset", "digits", "--preset", "cpu", "--no-flip", "--no-zca", *TINY,
                 "--no-eval"]) == 0  # fmt: skip
    assert "distilled 2 steps" in capsys.readouterr().out
    assert resume(run_copy, "--steps", "3", "--device", "cpu", "--checkpoint-every", "5",
                  "--eval-steps", "4") == 0  # fmt: skip
    meta = json.loads((run_copy / META).read_text())
    assert meta["steps_done"] == 3
    assert (meta["config"]["steps"], meta["config"]["lr_schedule_steps"]) == (3, 2)
    assert (meta["config"]["checkpoint_every"], meta["config"]["eval_steps"]) == (5, 4)
    assert resume(run_copy, "--steps", "2") == 2
    assert "--steps 2 is fewer than the 3 steps" in error_line(capsys)


def test_resume_of_a_run_without_a_checkpoint_says_so(capsys, run_copy):
    (run_copy / CHECKPOINT).unlink()
    meta = json.loads((run_copy / META).read_text())
    meta.update(sha256={}, sha256_pending={})  # as a run killed before its first checkpoint
    (run_copy / META).write_text(json.dumps(meta))
    assert resume(run_copy) == 2
    line = error_line(capsys)
    assert "no checkpoint.pt" in line and "nothing to resume" in line and "delete" in line
    assert not (run_copy / CHECKPOINT).exists()


def flip_a_byte_of(path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    start = bytes(data).find(tensor.numpy().tobytes())
    assert start >= 0
    data[start + tensor.numel() * tensor.element_size() // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_damaged_files_are_one_line_errors(capsys, run_copy):
    from safetensors.torch import load_file

    flip_a_byte_of(run_copy / DISTILLED, load_file(str(run_copy / DISTILLED))["images"])
    for command in (["evaluate", str(run_copy)], ["show", str(run_copy)]):
        assert main(command) == 2
        assert "distilled.safetensors is damaged" in error_line(capsys)
    checkpoint = torch.load(run_copy / CHECKPOINT, weights_only=True)
    flip_a_byte_of(run_copy / CHECKPOINT, checkpoint["support_images"])
    assert resume(run_copy) == 2
    assert "is damaged" in error_line(capsys)


@pytest.mark.parametrize("meta_text", ["[]", "{}", '{"dataset": "digits"'])
def test_a_broken_meta_json_is_a_one_line_error(capsys, run_copy, meta_text):
    (run_copy / META).write_text(meta_text)
    for command in (["evaluate", str(run_copy)], ["show", str(run_copy)],
                    ["distill", "--resume", "--run-dir", str(run_copy)]):  # fmt: skip
        assert main(command) == 2
        assert "meta.json is damaged" in error_line(capsys)


def test_a_run_dir_under_a_regular_file_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    under = str(tmp_path / "notes.txt" / "run")
    for command in (["distill", "--run-dir", under, *TINY, "--steps", "1"],
                    ["distill", "--resume", "--run-dir", under], ["evaluate", under],
                    ["show", under]):  # fmt: skip
        assert main(command) == 2
        assert "notes.txt is a regular file" in error_line(capsys).replace(", on its path,", "")


def write_image_folder(folder) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(folder / name / f"{i}.png")


def test_the_data_root_is_stored_and_reused(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("ISA_DISTILL_DATA", raising=False)
    pictures, run_dir = tmp_path / "pictures", tmp_path / "run"
    write_image_folder(pictures)
    assert main(["distill", "--dataset", "image-folder", "--data-root", str(pictures), "--ipc",
                 "1", "--steps", "1", "--no-zca", "--run-dir", str(run_dir), *TINY,
                 "--no-eval"]) == 0  # fmt: skip
    assert json.loads((run_dir / META).read_text())["data_root"] == str(pictures.resolve())
    # Resume (extended by a step) and evaluate find the data without --data-root.
    assert resume(run_dir, "--steps", "2") == 0
    evaluate = ["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "2", "--quiet",
                "--no-full-data"]  # fmt: skip
    assert main(evaluate) == 0
    # --data-root overrides the stored root; a stored root that is gone says what to do.
    pictures.rename(tmp_path / "moved")
    assert main(evaluate) == 2
    line = error_line(capsys)
    assert "is the data root stored in the run" in line and "--data-root" in line
    assert main([*evaluate, "--data-root", str(tmp_path / "moved")]) == 0
    assert resume(run_dir, "--steps", "3", "--data-root", str(tmp_path / "moved")) == 0
    stored = json.loads((run_dir / META).read_text())
    assert stored["data_root"] == str((tmp_path / "moved").resolve())
    assert stored["steps_done"] == 3


def test_image_folder_size_and_grayscale_flags(capsys, tmp_path):
    pictures, run_dir = tmp_path / "pictures", tmp_path / "run"
    write_image_folder(pictures)
    assert main(["distill", "--dataset", "image-folder", "--data-root", str(pictures),
                 "--image-size", "12", "--grayscale", "--ipc", "1", "--steps", "1",
                 "--run-dir", str(run_dir), *TINY, "--no-eval"]) == 0  # fmt: skip
    meta = json.loads((run_dir / META).read_text())
    assert (meta["image_size"], meta["channels"]) == (12, 1)
    # evaluate reads the folder at the run's size and channels without being told again
    assert main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "1", "--quiet",
                 "--no-full-data"]) == 0  # fmt: skip
    capsys.readouterr()
    assert resume(run_dir, "--image-size", "16") == 2
    assert "--image-size 16 (the run has 12)" in error_line(capsys)


def test_image_options_apply_to_image_folders_only(capsys, tmp_path):
    assert main(["distill", "--image-size", "16", "--run-dir", str(tmp_path / "r")]) == 2
    assert error_line(capsys) == ("isa-distill: error: --image-size and --grayscale apply to "
                                  "image-folder only, not 'digits'")
    assert not (tmp_path / "r").exists()


def test_data_errors_name_the_flag_not_the_python_argument(capsys, tmp_path, monkeypatch):
    assert main(["distill", "--dataset", "image-folder", "--run-dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert "pass --data-root <folder> holding <class>/<image>" in line and "root=" not in line
    monkeypatch.setenv("ISA_DISTILL_DATA", str(tmp_path / "nothing-here"))
    assert main(["distill", "--dataset", "cifar10", "--run-dir", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert "or set ISA_DISTILL_DATA to the folder holding it, or pass --data-root" in line
    assert "root=" not in line
    assert main(["info"]) == 0
    assert "root=" not in capsys.readouterr().out


def interrupt_in_step(monkeypatch, step: int) -> None:
    """Ctrl-C (KeyboardInterrupt) inside the ``step``-th outer step."""
    from isa_distill import distill as distill_module

    real_step = distill_module.OuterStep.__call__
    calls = {"n": 0}

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(distill_module.OuterStep, "__call__", interrupted_step)


@pytest.mark.parametrize("step, advice", [
    (4, "interrupted; continue with: isa-distill distill --resume --run-dir {run}"),
    (1, "interrupted before the first checkpoint, so there is nothing to resume; delete {run} "
        "and run the same command again"),
])  # fmt: skip
def test_ctrl_c_names_the_run_and_says_how_to_go_on(capsys, tmp_path, monkeypatch, step,
                                                    advice):
    run_dir = tmp_path / "run"
    interrupt_in_step(monkeypatch, step)
    assert main(["distill", "--ipc", "1", "--steps", "6", "--run-dir", str(run_dir), *TINY]) == 130
    assert capsys.readouterr().err.strip() == "isa-distill: " + advice.format(run=run_dir)


def test_a_path_the_system_refuses_is_one_line_not_a_traceback(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), "--no-eval",
                 *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "sub"
    assert main(["export", str(run_dir), "--format", "npz", "--out", str(out)]) == 2
    assert f"--out {out} cannot be made: {tmp_path / 'afile'}, on its path, is a file" in (
        error_line(capsys))
    from isa_distill import export

    def refused(run_dir, format, out):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(export, "export_run", refused)
    assert main(["export", str(run_dir), "--format", "npz", "--out", "/x"]) == 1
    assert error_line(capsys) == "isa-distill: error: Permission denied: /x"


def test_show_still_shows_a_run_whose_pictures_cannot_be_written(capsys, tmp_path):
    run_dir = tmp_path / "run"
    assert main(["distill", "--ipc", "1", "--steps", "2", "--run-dir", str(run_dir), "--no-eval",
                 *TINY]) == 0  # fmt: skip
    (run_dir / "images.png").unlink()
    (run_dir / "images.png").mkdir()  # as a read-only or odd run directory would refuse it
    before = sorted(p.name for p in run_dir.iterdir())
    capsys.readouterr()
    assert main(["show", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "progress   2 / 2 steps" in out
    assert "pictures   not written: " in out and "images.png" in out
    assert sorted(p.name for p in run_dir.iterdir()) == before  # no temporary file left


def test_evaluating_an_unfinished_run_says_so(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_in_step(patch, 4)
        assert main(["distill", "--ipc", "1", "--steps", "6", "--run-dir", str(run_dir),
                     *TINY]) == 130  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--eval-models", "1", "--eval-steps", "3",
                 "--no-full-data", "--quiet"]) == 0  # fmt: skip
    assert (f"note: {run_dir} stopped at step 2 of 6; this evaluates the set as it was then"
            in capsys.readouterr().out)
