"""Every experiment end to end on digits at a tiny budget: files, ranges, pairing, errors."""

from __future__ import annotations

import csv
import json

import pytest

from isa_distill.data import load_dataset
from isa_distill.distill import distill
from isa_distill.experiments import cli
from isa_distill.experiments.ablate import run_ablation
from isa_distill.experiments.continual import run_continual
from isa_distill.experiments.cross_arch import run_cross_arch
from isa_distill.experiments.diversity import run_diversity
from isa_distill.experiments.hardness import run_hardness
from isa_distill.experiments.mia import ATTACKERS, run_mia
from isa_distill.experiments.module import RESULTS, run_module_study
from isa_distill.experiments.pipeline import distill_config
from isa_distill.experiments.settings import experiment_settings

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(**overrides):
    values = dict(steps=3, batch_size=9, eval_models=1, eval_steps=5, seeds=(0, 1), ipc=1)
    values.update(overrides)
    return experiment_settings("cpu", **values)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_outputs(out, *names):
    for name in ("table.md", "table.csv", "plot.png", *names):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_ablation_pairs_variants_and_a_variant_equal_to_the_baseline_matches_it(tmp_path):
    # With a 9-sample batch, discard 0.1 drops floor(0.9) = 0 targets: exactly the baseline.
    rows = run_ablation(tiny(), tmp_path, ["easy10", "isa0.5"])
    assert_outputs(tmp_path)
    by_name = {r["variant"]: r for r in rows}
    assert list(by_name) == ["baseline", "easy10", "isa0.5"]  # baseline first, added when absent
    assert by_name["easy10"]["acc_mean"] == by_name["baseline"]["acc_mean"]
    assert by_name["easy10"]["diff_vs_baseline"] == 0.0
    assert by_name["baseline"]["ci95_low"] == by_name["baseline"]["ci95_high"] == 0.0
    for row in rows:
        assert 0.0 <= row["acc_mean"] <= 1.0 and row["seeds"] == 2
    assert [r["variant"] for r in read_csv(tmp_path / "table.csv")] == list(by_name)


def test_module_study_pairs_the_arms_and_continues_where_it_stopped(tmp_path, monkeypatch):
    settings = tiny()
    arms = ["rfad", "rfad+isa", "frepo+isa", "frepo+isa-f2"]
    rows = run_module_study(settings, tmp_path, arms, overrides=dict(optimizer="adam"))
    assert_outputs(tmp_path, "arms.md", "arms.csv", RESULTS)
    # Only the comparisons whose two arms ran: the module on RFAD, F = 2 on ISA.
    assert [r["comparison"] for r in rows] == ["rfad+isa vs rfad", "frepo+isa-f2 vs frepo+isa"]
    for row in rows:
        assert row["seeds"] == 2 and 0.0 <= row["with_acc"] <= 1.0
        assert row["ci95_low"] <= row["diff"] <= row["ci95_high"]
    by_arm = {r["arm"]: r for r in read_csv(tmp_path / "arms.csv")}
    assert by_arm["frepo+isa-f2"]["training_images_per_class"] == "4"  # IPC 1 x 2^2
    assert by_arm["rfad"]["training_images_per_class"] == "1"

    # Run again: every (arm, seed) is read from results.json, nothing is distilled.
    from isa_distill.experiments import module

    real_distill = module.distill
    monkeypatch.setattr(module, "distill", lambda *a, **k: pytest.fail("distilled again"))
    assert run_module_study(settings, tmp_path, arms, overrides=dict(optimizer="adam")) == rows
    # A file written when the seed list was part of the settings it must match still counts.
    stored = json.loads((tmp_path / RESULTS).read_text())
    stored["key"]["settings"]["seeds"] = [0, 1]
    (tmp_path / RESULTS).write_text(json.dumps(stored))
    assert run_module_study(settings, tmp_path, arms, overrides=dict(optimizer="adam")) == rows
    with pytest.raises(ValueError, match="holds results of other settings"):
        run_module_study(tiny(steps=4), tmp_path, arms, overrides=dict(optimizer="adam"))

    # More seeds later: only the new seed is distilled.
    distilled_seeds = []

    def counting(data, config, **kwargs):
        distilled_seeds.append(config.seed)
        return real_distill(data, config, **kwargs)

    monkeypatch.setattr(module, "distill", counting)
    more = run_module_study(tiny(seeds=(0, 1, 2)), tmp_path, arms[:2],
                            overrides=dict(optimizer="adam"))
    assert distilled_seeds == [2, 2] and more[0]["seeds"] == 3


def test_ablation_writes_per_seed_results_and_resume_runs_only_the_missing_pairs(tmp_path):
    variants = ["isa-away", "isa-official"]
    first = run_ablation(tiny(seeds=(0,), optimizer="adam"), tmp_path, variants)
    stored = read_csv(tmp_path / "seeds.csv")
    assert [(r["variant"], r["seed"]) for r in stored] == [
        ("baseline", "0"), ("isa-away", "0"), ("isa-official", "0")]
    assert all(float(r["distill_s"]) > 0 and float(r["eval_s"]) > 0 for r in stored)
    assert all(r["distill_s"] > 0 for r in first)
    assert "adam lr 0.001" in (tmp_path / "table.md").read_text()
    # Resuming with a second seed distils only seed 1 and keeps seed 0's results unchanged.
    rows = run_ablation(tiny(seeds=(0, 1), optimizer="adam"), tmp_path, variants, resume=True)
    again = read_csv(tmp_path / "seeds.csv")
    assert again[:3] == stored and [(r["variant"], r["seed"]) for r in again[3:]] == [
        ("baseline", "1"), ("isa-away", "1"), ("isa-official", "1")]
    assert "3 results reused" in (tmp_path / "progress.log").read_text()
    assert all(row["seeds"] == 2 for row in rows)
    # A fresh run of both seeds gives the same table: results do not depend on the run order.
    fresh = run_ablation(tiny(seeds=(0, 1), optimizer="adam"), tmp_path / "fresh", variants)
    assert [r["acc_mean"] for r in fresh] == [r["acc_mean"] for r in rows]
    with pytest.raises(ValueError, match="other settings .*optimizer"):
        run_ablation(tiny(seeds=(0, 1)), tmp_path, variants, resume=True)


def test_diversity_scores_lie_in_the_unit_interval(tmp_path):
    rows = run_diversity(tiny(seeds=(0,), ipc=2), tmp_path, ["baseline", "easy20"], k=3,
                         max_real=60, feature_steps=5)
    assert_outputs(tmp_path)
    for row in rows:
        for metric in ("precision", "recall", "coverage"):
            assert 0.0 <= row[f"{metric}_mean"] <= 1.0


def test_hardness_splits_the_batch_80_20_and_counts_every_target(tmp_path):
    split_rows, pca_rows = run_hardness(tiny(seeds=(0,), batch_size=40, ipc=2), tmp_path,
                                        ["baseline"], batches=2, per_class=10, feature_steps=5)
    assert_outputs(tmp_path, "pca.md", "pca.csv")
    (row,) = split_rows
    assert row["plain_hard_mean"] >= row["plain_easy_mean"]  # the split is by plain loss
    assert row["hard_to_easy_mean"] >= 0 and row["easy_to_hard_mean"] >= 0
    assert sum(r["targets"] for r in pca_rows) == 30
    assert sum(r["discarded"] for r in pca_rows) == 6  # floor(0.2 * 30)
    assert all(r["kept"] + r["discarded"] == r["targets"] for r in pca_rows)


def test_continual_reports_every_step_and_memory_grows(tmp_path):
    rows = run_continual(tiny(seeds=(0,)), tmp_path, num_steps=5, methods=["random", "frepo"])
    assert_outputs(tmp_path)
    assert [(r["method"], r["step"]) for r in rows] == [
        (m, s) for m in ("random", "frepo") for s in range(1, 6)]
    assert [r["memory"] for r in rows[:5]] == [2, 4, 6, 8, 10]
    assert all(0.0 <= r["acc_mean"] <= 1.0 for r in rows)
    with pytest.raises(ValueError, match="num_steps must divide"):
        run_continual(tiny(), tmp_path, num_steps=3)
    with pytest.raises(ValueError, match=">= 2 classes per step"):
        run_continual(tiny(), tmp_path, num_steps=10)


def test_mia_attacks_a_target_that_fits_its_members_and_reports_every_attacker(tmp_path):
    settings = tiny(seeds=(0,), ipc=2)
    rows = run_mia(settings, tmp_path, members=100, budgets=2, target_epochs=400)
    assert_outputs(tmp_path, "curve.md", "curve.csv")
    assert {(r["source"], r["attacker"]) for r in rows} == {
        (s, a) for s in ("real", "random subset", "distilled") for a in ATTACKERS}
    for row in rows:
        assert 0.0 <= row["attack_auc"] <= 1.0 and 0.0 <= row["attack_acc"] <= 1.0
    sizes = {r["source"]: r["members"] for r in rows}
    assert sizes == {"real": 100, "random subset": 20, "distilled": 100}
    real = {r["attacker"]: r for r in rows if r["source"] == "real"}
    assert real["threshold"]["member_acc"] == 1.0
    assert real["threshold"]["attack_auc"] > 0.8  # the old 300 augmented steps gave ~0.5
    curve = read_csv(tmp_path / "curve.csv")
    assert [int(r["epochs"]) for r in curve] == [200, 400] * 3
    assert [int(r["steps"]) for r in curve[:2]] == [200, 400]  # 100 images, batch 100


@pytest.mark.parametrize("overrides, kwargs, message", [
    ({}, dict(members=1200), "non-members of every class"),
    ({"ipc": 1}, {}, "ipc must lie in"),
    ({}, dict(target_epochs=0), "target_epochs must be a positive int"),
])
def test_mia_rejects_bad_arguments_by_name(overrides, kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        run_mia(tiny(seeds=(0,), **{"ipc": 2, **overrides}), tmp_path, **kwargs)


def test_cross_arch_evaluates_a_run_dir_on_the_chosen_architectures(tmp_path):
    settings = tiny(seeds=(0,))
    run_dir = tmp_path / "run"
    distill(load_dataset("digits"), distill_config(settings, 0), run_dir=run_dir, progress=False)
    out = tmp_path / "out"
    rows = run_cross_arch(run_dir, settings, out, ["Conv-NN", "AlexNet"])
    assert_outputs(out)
    assert [r["set"] for r in rows] == ["distilled", "random subset"]
    assert all(0.0 <= r[name] <= 1.0 for r in rows for name in ("Conv-NN", "AlexNet"))
    for wrong in (["LeNet"], ["AlexNet", "AlexNet"]):
        with pytest.raises(ValueError, match="architectures must be distinct names among"):
            run_cross_arch(run_dir, settings, out, wrong)


@pytest.mark.parametrize("argv, message", [
    (["ablate", "--variants", "nope"], "unknown variants"),
    (["ablate", "--seeds", "1", "1"], "seeds must be distinct"),
    (["ablate", "--seeds", "0", "-1"], "every seed in seeds must be an int in [0, 4294967295]"),
    (["ablate", "--dataset", "mnist-nope"], "dataset"),
    (["ablate", "--lr", "-0.001"], "lr must be a finite positive number"),
    (["continual", "--num-steps", "3"], "num_steps must divide"),
    (["cross-arch", "does-not-exist"], "not a run directory"),
    (["module", "--arms", "rfad", "idc"], "unknown arms ['idc']"),
    (["module", "--lr", "-1"], "lr must be a finite positive number"),
    (["mia", "--threads", "0"], "--threads must lie in [1, "),
    (["ablate", "--threads", "100000"], "--threads must lie in [1, "),
    (["ablate", "--eval-models", "99999999999999999999"], "eval_models must be at most 1000"),
    (["continual", "--methods", "random", "random"], "methods must be distinct names"),
    (["mia", "--budgets", "30", "--target-epochs", "4"], "budgets must be at most 3"),
    (["diversity", "--ipc", "1", "--k", "10"], "k must be smaller than the 10 synthetic images"),
    (["diversity", "--k", "0"], "k must be a positive int"),
    (["ablate", "--device", "mps"], "device must be auto, cpu, cuda or cuda:N, got 'mps'"),
    (["mia", "--target-epochs", "0"], "target_epochs must be a positive int"),
])
def test_cli_turns_bad_arguments_into_one_line_and_status_2(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_ctrl_c_and_a_refused_out_folder_are_one_line(capsys, tmp_path, monkeypatch):
    from isa_distill.experiments import ablate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablate, "run_ablation", interrupted)
    assert cli.main(["ablate", "--out", str(tmp_path / "out"), "--quiet"]) == 130
    assert capsys.readouterr().err == (
        "isa-distill ablate: interrupted (add --resume to continue where it stopped)\n")

    def refused(settings, out, *args, **kwargs):
        raise NotADirectoryError(20, "Not a directory", str(out))

    monkeypatch.setattr(ablate, "run_ablation", refused)
    assert cli.main(["ablate", "--out", str(tmp_path / "file" / "out"), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"isa-distill ablate: error: Not a directory: {tmp_path / 'file' / 'out'}\n")


def test_an_ablation_refuses_an_earlier_ones_folder_without_resume_and_a_busy_one(tmp_path):
    from isa_distill.runs import RunInUseError, directory_lock

    settings = experiment_settings("cpu", ipc=1, steps=2, batch_size=32, seeds=[0],
                                   eval_models=1, eval_steps=2, progress=False)
    out = tmp_path / "out"
    out.mkdir()
    with directory_lock(out, "another ablation is writing it"):  # as a second process would
        with pytest.raises(RunInUseError, match="another ablation is writing it"):
            run_ablation(settings, out, ["baseline"])
    (out / "seeds.csv").write_text("variant,seed\n")
    with pytest.raises(ValueError, match="holds the results of an earlier ablation"):
        run_ablation(settings, out, ["baseline"])
