"""The contract between the training engine and a system: the `Task` protocol.

The engine never knows which system it trains. A task wraps one system module and says how a
collated batch becomes a dict of losses, how the system predicts, and how predictions update the
library metrics. SAM-MI's two training stages are data (`stages`), not code paths in the trainer.
This is the shape detectron2 (`model(batch)` returns a loss dict), Lightning (`training_step`)
and mmengine (`train_step`) converge on; to train your own module mix, write one task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["Metric", "Task"]


@runtime_checkable
class Metric(Protocol):
    """A streaming metric: `update` per batch, `sync` once across ranks, then `compute`."""

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Accumulate the statistics of one batch."""

    def compute(self) -> Any:
        """Return the metric over everything accumulated (after `sync`: over all ranks)."""

    def reset(self) -> None:
        """Forget everything accumulated."""

    def sync(self) -> None:
        """Merge the statistics of all ranks of the default process group into every rank.

        Collective: every rank calls it once, after its last `update`. A no-op without an
        initialised process group or with one process.
        """


@runtime_checkable
class Task(Protocol):
    """How the engine trains and evaluates one system.

    Attributes:
        model: The system module. The engine moves it to the device, wraps it for DDP and
            saves its state; the task's methods use `self.model` and never the wrapper.
        stages: Names of the training stages, in order (one stage for most systems; SAM-MI has
            `("tspp", "full")`). The run's configuration gives the steps of each.
    """

    model: nn.Module
    stages: tuple[str, ...]

    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """Prepare training stage `stage` (0-based): set `requires_grad`, return param groups.

        Each group is a `torch.optim` parameter group (`params`, optionally `lr`,
        `weight_decay`, `name`); a group without `lr` uses the run's base learning rate.
        """

    def collate(self, samples: Sequence[Any]) -> Any:
        """Collate dataset samples into one batch (the DataLoader's `collate_fn`)."""

    def training_step(self, batch: Any, stage: int) -> Mapping[str, Tensor]:
        """Losses of one batch with gradients; `"loss"` is the one to minimise.

        Called in training mode under the engine's autocast, with `batch` moved to the
        training device (tensors, containers, dataclasses and objects with `.to(device)`)
        and, with `TrainConfig.augment`, augmented there (`samkit.data.augment`);
        when distributed, inside the forward of the DDP wrapper, so calling `self.model` and
        its submodules here is enough for gradient synchronisation. Every parameter with
        `requires_grad=True` must get a gradient (the engine names those that do not). Random
        draws may use the global RNGs (checkpoints restore them); `collate` should not, since
        it runs in the DataLoader workers.
        """

    def predict(self, batch: Any) -> list[Any]:
        """One prediction per sample of `batch` (called in eval mode under `no_grad`)."""

    def metrics(self) -> dict[str, Metric]:
        """Fresh streaming metrics for one evaluation, by name."""

    def update_metrics(
        self, metrics: Mapping[str, Metric], predictions: Sequence[Any], batch: Any
    ) -> None:
        """Update `metrics` with the predictions of one batch and its ground truth."""

    def summarize(self, metrics: Mapping[str, Metric]) -> dict[str, float]:
        """Flat `name -> float` table of the synced metrics (what logs and `metrics.json` show)."""
