"""The seams where a data-parallel run differs from one process, and what one process does there.

``isa_distill.step`` and ``isa_distill.distill`` reach the other ranks of a run only through
these hooks. The classes here are the one-process behaviour: each hook is the plain code it
replaces (``model.features(images)``, ``read()``), so a single-process run computes exactly
what it computed before the hooks existed. ``isa_distill.distributed`` implements the same
hooks with torch.distributed (docs/distributed.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

T = TypeVar("T")
# "global": discard and partners over the global target batch, equal to one process;
# "local": within each rank's shard, as the official pmap code.
SHARD_SEMANTICS = ("global", "local")


class StepHooks:
    """Where one outer step touches the other ranks; one process: nowhere."""

    def target_features(self, model: nn.Module, images: Tensor,
                        labels: Tensor) -> tuple[Tensor, Tensor]:
        """(F_T, Y_T) the loss sees for the global target batch (images, labels).

        Called under ``torch.no_grad()`` and the step's autocast context."""
        return model.features(images), labels

    def support_features(self, model: nn.Module, images: Tensor) -> Tensor:
        """F_S of the support rows (with the flip trick: of [X_S; hflip(X_S)]), with gradient."""
        return model.features(images)

    def reduce_gradients(self, support_images: Tensor, support_labels: Tensor) -> None:
        """Turn each learned tensor's ``.grad`` into the run's gradient, the same on every rank."""


SINGLE_STEP = StepHooks()


class SingleProcess:
    """The loop's view of the processes of a run: one, which writes the run directory."""

    rank = 0
    world_size = 1

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints, logs, pictures, and shows progress bars."""
        return self.rank == 0

    def step_hooks(self, semantics: str) -> StepHooks:
        return SINGLE_STEP

    def check(self, config: Any, batch_size: int, support_rows: int) -> None:
        """Raise ValueError for settings this way of running cannot do (one process: none)."""

    def from_writer(self, read: Callable[[], T]) -> T:
        """``read()`` run by the writing process, its result (or its exception) on every rank."""
        return read()

    def stack(self, tensor: Tensor) -> Tensor:
        """Every rank's ``tensor``, stacked in rank order: (world_size, *tensor.shape)."""
        return tensor[None]

    def evaluate(self, evaluate: Callable[..., Any], *args: Any, num_models: int,
                 **options: Any) -> Any:
        """``evaluate(*args, num_models=..., **options)`` (an ``isa_distill.evaluate`` function
        returning an EvalResult), its networks trained by the ranks together."""
        return evaluate(*args, num_models=num_models, **options)


SINGLE_PROCESS = SingleProcess()
