"""The command line: user errors exit 2 with one clear line; a tiny end-to-end run."""

from __future__ import annotations

import pytest

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


def test_too_large_ipc(capsys, tmp_path):
    assert main(["distill", "--ipc", "1000", "--run-dir", str(tmp_path / "r")]) == 2
    assert "ipc=1000 is too large" in error_line(capsys)
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
    assert "already exists" in error_line(capsys)
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
    assert "distilled (ISA eps=1, discard=0.2)" in out and "random subset" in out
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
    ],
)
def test_bad_evaluation_flags_are_argparse_errors(capsys, tmp_path, flags, message):
    for command in (["distill", "--run-dir", str(tmp_path / "r")], ["evaluate", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, *flags])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_select_every_without_best_val_is_refused_before_distilling(capsys, tmp_path):
    run_dir = tmp_path / "r"
    assert main(["distill", "--run-dir", str(run_dir), *TINY, "--select-every", "5"]) == 2
    assert "--select-every applies to --select best-val only" in error_line(capsys)
    assert not run_dir.exists()


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "digits" in out
