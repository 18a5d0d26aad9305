"""The distributed layer's parts that need no launch: shards, refusals, shared evaluation."""

from __future__ import annotations

import pytest
from distributed_job import tiny_digits

from isa_distill import cli
from isa_distill.distill import DistillConfig
from isa_distill.distributed import Ranks, shard_bounds, shard_sizes
from isa_distill.evaluate import evaluate_set

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data():
    return tiny_digits()


def test_shards_are_contiguous_and_differ_by_at_most_one_row():
    assert shard_sizes(63, 2) == [32, 31] and shard_sizes(5, 3) == [2, 2, 1]
    assert [shard_bounds(63, 2, rank) for rank in (0, 1)] == [(0, 32), (32, 63)]
    assert [shard_bounds(5, 3, rank) for rank in range(3)] == [(0, 2), (2, 4), (4, 5)]


def fake_ranks(world_size: int) -> Ranks:
    ranks = Ranks.__new__(Ranks)  # the checks need no process group
    ranks.rank, ranks.world_size, ranks.local_world_size = 0, world_size, world_size
    return ranks


@pytest.mark.parametrize(
    ("changes", "batch_size", "support_rows", "message"),
    [(dict(compile=True), 64, 20, "compile is not supported under torchrun"),
     (dict(shard_semantics="local"), 63, 20, "batch_size 63 must be divisible by the 2 ranks"),
     (dict(), 1, 20, "batch_size 1 is smaller than the 2 ranks"),
     (dict(), 64, 1, "the support set has 1 rows"),
     (dict(device="cuda:1"), 64, 20, "device 'cuda:1' names one GPU")],
)  # fmt: skip
def test_what_a_launch_cannot_run_is_refused_by_name(changes, batch_size, support_rows,
                                                     message):
    with pytest.raises(ValueError, match=message):
        fake_ranks(2).check(DistillConfig(**changes), batch_size, support_rows)


def test_bad_shard_semantics_names_the_field():
    with pytest.raises(ValueError, match="shard_semantics must be one of"):
        DistillConfig(shard_semantics="pmap").validate()


def test_an_evaluation_shared_by_networks_has_each_networks_result(data):
    options = dict(test=data.test, width=8, depth=2, num_models=3, steps=5, flip=False,
                   progress=False, num_classes=10)
    images, labels = data.train.images[:20], data.train.labels[:20]
    whole = evaluate_set(images, labels, **options)
    parts = [evaluate_set(images, labels, networks=networks, **options)
             for networks in (range(0, 2), range(2, 3))]
    assert parts[0].accuracies + parts[1].accuracies == whole.accuracies
    with pytest.raises(ValueError, match=r"networks must be non-empty indices in \[0, 3\)"):
        evaluate_set(images, labels, networks=[3], **options)




@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # torchrun's, under pytest
def test_one_process_commands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["info"]) == 2
    assert "info runs in one process; run it without torchrun" in capsys.readouterr().err
