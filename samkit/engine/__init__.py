"""One training engine for every system: `Trainer`, `evaluate`, checkpoints, `torchrun` DDP.

A system is trained through a `Task` (how a batch becomes losses, predictions and metric
updates); the engine owns the loop, the optimizer and schedule, checkpoints, resume, logging
and distribution. See docs/engine.md.
"""

from samkit.engine import distributed
from samkit.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from samkit.engine.evaluate import evaluate
from samkit.engine.task import Metric, Task
from samkit.engine.trainer import TrainConfig, Trainer, build_scheduler

__all__ = [
    "Metric",
    "Task",
    "TrainConfig",
    "Trainer",
    "build_scheduler",
    "distributed",
    "evaluate",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]
