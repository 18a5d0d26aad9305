"""Data-parallel distillation with torch.distributed, launched by torchrun.

    torchrun --nproc_per_node N -m isa_distill distill ...

Every rank holds the same synthetic set, labels, optimiser state and pool models and draws the
same global target batch from the same generators (``isa_distill.distill``); this module
implements the hooks of ``isa_distill.parallel`` where the ranks divide the work:

- Shards: a batch of n rows is cut into N contiguous shards, rank r taking rows
  [r n / N, (r + 1) n / N) (sizes differ by at most one row). A rank runs the network on its
  shard of the target batch only.
- Global semantics (default), equal to the single-process run: the shards' target features are
  all-gathered, so every rank runs the unchanged op on the global batch (discard ranking and
  nearest partners over all B targets). The support rows ([X_S; hflip(X_S)] with the flip
  trick) are sharded too: each rank runs the network on its shard and the features are
  all-gathered by an autograd function whose backward keeps the rank's rows of the upstream
  gradient (every rank computed the same loss from the same gathered tensors, so that gradient
  is the same on every rank). One all_reduce then sums the image gradients (each row's came
  from one rank, the others hold exact zeros) and averages the label gradients (the same on
  every rank), so every rank applies the same update.
- Local semantics (``shard_semantics="local"``), as the official pmap code: each rank's loss is
  the op on its own shard (discard and partners within the shard), support features are
  computed whole on every rank, and the gradients are averaged over the ranks.

Collectives run on the tensors' device: NCCL for CUDA tensors, gloo for CPU tensors and for
the pickled objects (the process group holds both backends where CUDA exists). A collective
that fails or waits longer than the timeout raises ``DistributedError`` naming the rank.
docs/distributed.md has the launch commands and the bytes communicated per step.
"""

from __future__ import annotations

import datetime
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .devices import resolve_device
from .parallel import SHARD_SEMANTICS, SINGLE_PROCESS, SingleProcess, StepHooks, T

DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the other ranks
# Set on an exception that the writing rank raised and sent to the others, which then need not
# report it again.
SHARED_ERROR = "isa_distill_raised_on_rank0"


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped, or did not arrive within the timeout."""


def launched() -> bool:
    """Whether this process is one rank of a torchrun launch (env:// variables are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def shard_sizes(n: int, world_size: int) -> list[int]:
    """Rows per rank of a batch of n rows: contiguous shards, the first n % N one row larger."""
    return [n // world_size + (rank < n % world_size) for rank in range(world_size)]


def shard_bounds(n: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of ``rank``'s contiguous shard of n rows."""
    sizes = shard_sizes(n, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def reported_elsewhere(error: BaseException) -> bool:
    """Whether ``error`` was raised by the writing rank, which reports it."""
    return bool(getattr(error, SHARED_ERROR, False))


@contextmanager
def launch(timeout: float = DEFAULT_TIMEOUT) -> Iterator[SingleProcess]:
    """The processes of this run: under torchrun a process group (NCCL for CUDA tensors, gloo
    for CPU tensors) that is destroyed on exit; otherwise the single process."""
    if not launched():
        yield SINGLE_PROCESS
        return
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)  # rank r of a node uses its GPU r ("cuda" means it)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    try:
        yield Ranks(timeout)
    finally:
        dist.destroy_process_group()


class Ranks(SingleProcess):
    """The ranks of a torchrun launch; rank 0 writes the run directory.

    ``group``: the process group of every rank to talk through (None: the launch's), e.g. one
    created with another timeout; ``timeout`` is its timeout, quoted in errors."""

    def __init__(self, timeout: float, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        self.timeout = timeout

    # ------------------------------------------------------------------ collectives

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as error:  # gloo and NCCL raise RuntimeError subclasses
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed, so another rank stopped "
                f"or did not arrive within the {self.timeout:g} s timeout (--dist-timeout); see "
                f"the other ranks' errors. ({reason})"
            ) from error

    def gather_rows(self, local: Tensor, sizes: list[int], what: str = "features") -> Tensor:
        """The ranks' row blocks (rank r's has sizes[r] rows) concatenated in rank order."""
        width = max(sizes)
        if len(local) < width:  # all_gather_into_tensor needs equal blocks: pad, then trim
            local = torch.cat([local, local.new_zeros((width - len(local), *local.shape[1:]))])
        gathered = local.new_empty((self.world_size * width, *local.shape[1:]))
        with self._collective(f"all_gather of {what}"):
            dist.all_gather_into_tensor(gathered, local.contiguous(), group=self.group)
        if all(size == width for size in sizes):
            return gathered
        return torch.cat([gathered[r * width:r * width + size] for r, size in enumerate(sizes)])

    def all_reduce_sum(self, tensor: Tensor) -> None:
        with self._collective("all_reduce of gradients"):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)

    def stack(self, tensor: Tensor) -> Tensor:
        return self.gather_rows(tensor[None], [1] * self.world_size, "losses and checks")

    def _all_gather_object(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world_size
        with self._collective("all_gather of results"):
            dist.all_gather_object(values, value, group=self.group)
        return values

    # ------------------------------------------------------------------ the loop's hooks

    def step_hooks(self, semantics: str) -> StepHooks:
        return ShardedStep(self, semantics)

    def check(self, config: Any, batch_size: int, support_rows: int) -> None:
        """Raise ValueError, naming the setting, for what a launch of N ranks cannot run."""
        n = self.world_size
        if config.compile:
            raise ValueError(
                "compile is not supported under torchrun: the distributed step's collectives "
                "cannot be traced into one graph; run without --compile"
            )
        device = torch.device(resolve_device(config.device))
        if device.type == "cuda":
            if device.index is not None:
                raise ValueError(
                    f"device {config.device!r} names one GPU, but under torchrun rank r of a "
                    "node uses GPU r (its LOCAL_RANK); pass device 'cuda'"
                )
            if self.local_world_size > torch.cuda.device_count():
                raise ValueError(
                    f"torchrun started {self.local_world_size} processes on a node with "
                    f"{torch.cuda.device_count()} GPU(s); pass --nproc_per_node "
                    f"{torch.cuda.device_count()} or fewer, or device 'cpu'"
                )
        if batch_size < n:
            raise ValueError(f"batch_size {batch_size} is smaller than the {n} ranks: each "
                             "rank needs at least one target row")
        if config.shard_semantics == "local" and batch_size % n:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the {n} ranks with "
                "shard_semantics 'local' (each rank discards and pairs within its own shard, "
                "as the official pmap code, which needs equal shards)"
            )
        if config.shard_semantics == "global" and support_rows < n:
            raise ValueError(f"the support set has {support_rows} rows (ipc x classes, x2 with "
                             f"the flip trick), fewer than the {n} ranks that share them")

    def from_writer(self, read: Callable[[], T]) -> T:
        """``read()`` run on rank 0 alone, its result or its exception sent to every rank."""
        message: list[Any] = [None]
        if self.writes:
            try:
                message[0] = ("value", read())
            except Exception as error:
                message[0] = ("error", _picklable(error))
                self._broadcast(message)
                raise
        self._broadcast(message)
        kind, payload = message[0]
        if kind == "error":
            setattr(payload, SHARED_ERROR, True)
            raise payload
        return payload

    def _broadcast(self, message: list[Any]) -> None:
        with self._collective("broadcast from rank 0"):
            dist.broadcast_object_list(message, src=0, group=self.group)

    def evaluate(self, evaluate: Callable[..., Any], *args: Any, num_models: int,
                 **options: Any) -> Any:
        """Rank r trains networks [r K / N, (r + 1) K / N) of the K (5 on 2 ranks: 3 + 2), each
        with the seeds it has in a single-process evaluation; every rank gets all results."""
        from .evaluate import EvalResult

        start, stop = shard_bounds(num_models, self.world_size, self.rank)
        options["progress"] = options.get("progress", True) and self.writes
        part = ([], [])
        if stop > start:
            result = evaluate(*args, num_models=num_models, networks=range(start, stop),
                              **options)
            part = (result.accuracies, result.krr_accuracies or [])
        parts = self._all_gather_object(part)
        accuracies = [value for rank_part in parts for value in rank_part[0]]
        krr = [value for rank_part in parts for value in rank_part[1]]
        return EvalResult.from_accuracies(accuracies, krr if options.get("krr") else None)


def _picklable(error: Exception) -> Exception:
    """``error`` if it survives pickling, else a RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class _GatherRows(torch.autograd.Function):
    """All-gather of row shards whose backward keeps this rank's rows of the upstream gradient.

    Only valid where every rank computes the same function of the gathered tensor (global
    semantics): the upstream gradient is then the same on every rank, and each rank's rows get
    their gradient without communication (a sum over ranks would count it N times)."""

    @staticmethod
    def forward(ctx, local: Tensor, ranks: Ranks, sizes: list[int]) -> Tensor:
        start = sum(sizes[:ranks.rank])
        ctx.bounds = (start, start + sizes[ranks.rank])
        return ranks.gather_rows(local, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        start, stop = ctx.bounds
        return grad[start:stop], None, None


class ShardedStep(StepHooks):
    """The outer step's hooks on several ranks, for ``semantics`` "global" or "local"."""

    def __init__(self, ranks: Ranks, semantics: str) -> None:
        if semantics not in SHARD_SEMANTICS:
            raise ValueError(
                f"shard_semantics must be one of {SHARD_SEMANTICS}, got {semantics!r}")
        self.ranks = ranks
        self.semantics = semantics

    def _shard(self, rows: int) -> tuple[list[int], slice]:
        sizes = shard_sizes(rows, self.ranks.world_size)
        start = sum(sizes[:self.ranks.rank])
        return sizes, slice(start, start + sizes[self.ranks.rank])

    def target_features(self, model: nn.Module, images: Tensor,
                        labels: Tensor) -> tuple[Tensor, Tensor]:
        sizes, mine = self._shard(len(images))
        local = model.features(images[mine])
        if self.semantics == "local":
            return local, labels[mine]
        return self.ranks.gather_rows(local, sizes), labels

    def support_features(self, model: nn.Module, images: Tensor) -> Tensor:
        if self.semantics == "local":
            return model.features(images)  # each rank's loss needs every support row's gradient
        sizes, mine = self._shard(len(images))
        return _GatherRows.apply(model.features(images[mine]), self.ranks, sizes)

    def reduce_gradients(self, support_images: Tensor, support_labels: Tensor) -> None:
        images, labels = support_images.grad, support_labels.grad
        grads = [grad for grad in (images, labels) if grad is not None]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        self.ranks.all_reduce_sum(flat)  # one collective for both tensors
        offset, world = 0, self.ranks.world_size
        for grad in grads:
            reduced = flat[offset:offset + grad.numel()].view_as(grad)
            offset += grad.numel()
            # Global: the image rows were split over the ranks (a sum), the label gradient
            # is the same everywhere (a mean); local: both are each rank's own (a mean).
            sharded = grad is images and self.semantics == "global"
            grad.copy_(reduced if sharded else reduced / world)
