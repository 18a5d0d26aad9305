"""Two-rank jobs for test_distributed.py, run by torchrun (one launch for all of them).

    torchrun --standalone --nproc_per_node 2 tests/distributed_job.py OUT_DIR

Rank 0 saves what the tests compare in OUT_DIR/results.pt; the runs' directories are under
OUT_DIR too. The single-process references are computed by the tests themselves.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from isa_distill import distill as distill_module
from isa_distill.data import load_dataset
from isa_distill.distill import DistillConfig, distill, make_optimizer
from isa_distill.distributed import DistributedError, Ranks, ShardedStep, launch
from isa_distill.evaluate import evaluate_set
from isa_distill.functional import isa_krr_loss
from isa_distill.models import build_model
from isa_distill.parallel import SINGLE_STEP, StepHooks

KILLED_AT = 8  # the outer step (1-based) in which the interrupted runs raise


def tiny_digits():
    """test_distill.py's tiny_digits: 200 train / 50 val / 50 test digits."""
    data = load_dataset("digits", val_size=50)
    return dataclasses.replace(
        data, train=data.train.subset(torch.arange(200)), test=data.test.subset(torch.arange(50))
    )


def tiny_config(**overrides) -> DistillConfig:
    values = dict(
        ipc=2, steps=10, batch_size=63, width=8, depth=2, pool_size=3, max_online_updates=2,
        online_batch=12, log_every=1, checkpoint_every=5, val_every=0, val_steps=5,
        flip=True,  # 40 support rows and 63 targets: both split unevenly, 21 / 19 and 32 / 31
    )  # fmt: skip
    return DistillConfig(**{**values, **overrides})


# RFAD's random networks (their ``features`` sharded like a pool model's) with multi-formation,
# and RFAD's ridge: with 80 similar decoded support rows a 1e-6 ridge leaves the kernel so
# ill-conditioned that float rounding between shard sizes grows over the steps.
RANDOM_F2 = dict(source="random", random_models=3, random_width=16, random_depth=2, formation=2,
                 ipc=1, reg=5e-3)


def finished(result) -> dict:
    return {"images": result.images, "labels": result.labels,
            "losses": [row["kernel_loss"] for row in result.history]}


def interrupted(data, config, run_dir, ranks) -> None:
    """The run killed inside step KILLED_AT on every rank (its last checkpoint is at 5)."""
    real_step = distill_module.OuterStep.__call__
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == KILLED_AT:
            raise RuntimeError("simulated kill")
        return real_step(self, *args, **kwargs)

    distill_module.OuterStep.__call__ = dying_step
    try:
        distill(data, config, run_dir=run_dir, progress=False, parallel=ranks)
    except RuntimeError as error:
        assert "simulated kill" in str(error)
    finally:
        distill_module.OuterStep.__call__ = real_step


def float64_steps(ranks, steps: int = 10) -> dict:
    """The distributed layer in float64: ``steps`` LAMB steps of a support set on the ISA loss
    (the flip trick, nearest partners) of fixed float64 Conv features, with the sharded hooks
    (every rank) and the one-process hooks (rank 0 alone). The outer step itself computes its
    loss in float32, so this is where float64 equality is checked."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model("conv", in_channels=1, num_classes=10, image_size=8, width=8,
                            depth=2, norm="batch").double().eval().requires_grad_(False)
    images = torch.randn(20, 1, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.nn.functional.one_hot(torch.arange(20) % 10, 10).double() - 0.1
    targets = torch.randn(steps, 63, 1, 8, 8, generator=generator, dtype=torch.float64)
    target_labels = torch.nn.functional.one_hot(
        torch.randint(10, (steps, 63), generator=generator), 10).double() - 0.1

    def run(hooks: StepHooks) -> dict:
        support = images.clone().requires_grad_(True)
        soft = labels.clone().requires_grad_(True)
        optimizer = make_optimizer([support, soft], DistillConfig(optimizer="lamb"))
        losses = []
        for k in range(steps):
            features, batch_labels = hooks.target_features(model, targets[k], target_labels[k])
            flipped = torch.cat([support, support.flip(-1)])
            loss = isa_krr_loss(hooks.support_features(model, flipped), torch.cat([soft, soft]),
                                features, batch_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            hooks.reduce_gradients(support, soft)
            optimizer.step()
            losses.append(float(loss.detach()))
        return {"images": support.detach(), "labels": soft.detach(), "losses": losses}

    sharded = run(ShardedStep(ranks, "global"))
    return {"sharded": sharded, "single": run(SINGLE_STEP) if ranks.writes else None,
            "initial": images}


def evaluation(data, ranks) -> dict:
    """5 evaluation networks shared by the ranks (3 + 2), and on rank 0 alone."""
    options = dict(test=data.test, width=8, depth=2, num_models=5, steps=20, flip=False,
                   progress=False, num_classes=10)
    images, labels = data.train.images[:20], data.train.labels[:20]
    shared = ranks.evaluate(evaluate_set, images, labels, **options)
    single = evaluate_set(images, labels, **options) if ranks.writes else None
    return {"shared": shared, "single": single}


def timeout_message(ranks) -> dict:
    """Rank 0 waits in a collective that rank 1 never joins, on a group with a 2 s timeout."""
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=2))
    short = Ranks(2.0, group=group)
    message, waited = None, 0.0
    if ranks.writes:
        started = time.perf_counter()
        try:
            short.stack(torch.zeros(1))
        except DistributedError as error:
            message = str(error)
        waited = time.perf_counter() - started
    dist.barrier()  # rank 1 waits here, on the launch's group
    return {"message": message, "waited": waited}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    with launch(timeout=60) as ranks:
        assert isinstance(ranks, Ranks) and ranks.world_size == 2
        data = tiny_digits()
        config = tiny_config()
        results = {"float64": float64_steps(ranks)}
        results["global"] = finished(distill(data, config, run_dir=out / "global",
                                             progress=False, parallel=ranks))
        results["random"] = finished(distill(data, tiny_config(**RANDOM_F2), progress=False,
                                             parallel=ranks))
        local = tiny_config(shard_semantics="local", batch_size=64)
        results["local"] = finished(distill(data, local, run_dir=out / "local", progress=False,
                                            parallel=ranks))
        interrupted(data, config, out / "resumed", ranks)
        results["resumed"] = finished(distill(data, None, run_dir=out / "resumed", resume=True,
                                              progress=False, parallel=ranks))
        interrupted(data, config, out / "interrupted", ranks)  # resumed by the tests, 1 process
        interrupted(data, local, out / "interrupted-local", ranks)
        results["evaluation"] = evaluation(data, ranks)
        results["timeout"] = timeout_message(ranks)
        if ranks.writes:
            torch.save(results, out / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
