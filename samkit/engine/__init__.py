"""One training engine for every system: `Trainer`, `evaluate`, checkpoints, `torchrun` DDP.

A system is trained through a `Task` (how a batch becomes losses, predictions and metric
updates); the engine owns the loop, the optimizer and schedule, checkpoints, resume, logging
and distribution. See docs/engine.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

# Imported now, not on first use: `evaluate` is also the name of the submodule that defines it,
# and importing that submodule later (trainer.py does) would rebind `samkit.engine.evaluate`
# to the module.
from samkit.engine.evaluate import evaluate

if TYPE_CHECKING:
    from samkit.engine import distributed, numerics
    from samkit.engine.checkpoint import (
        latest_checkpoint,
        list_checkpoints,
        load_checkpoint,
        save_checkpoint,
    )
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
    "numerics",
    "save_checkpoint",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "checkpoint": [
                "latest_checkpoint",
                "list_checkpoints",
                "load_checkpoint",
                "save_checkpoint",
            ],
            "task": [
                "Metric",
                "Task",
            ],
            "trainer": [
                "TrainConfig",
                "Trainer",
                "build_scheduler",
            ],
        },
        submodules=["distributed", "numerics"],
    )
