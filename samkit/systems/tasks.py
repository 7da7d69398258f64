"""The engine tasks of the three systems, by system name.

    task = build_task("sam_mi", build_sam_mi("tiny"), class_names=data.class_names)
    Trainer(task, data, TrainConfig(steps=(400, 400)), "runs/sam_mi").fit()

Every task implements `samkit.engine.task.Task`. `class_names` and `num_things` are the data
set's vocabulary (contiguous order, things first); the remaining keyword options are the task
class's (loss weights, SAM-CP's patch source...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from samkit.engine.task import Task
from samkit.systems.sam_cp_task import SAMCPTask
from samkit.systems.sam_mi_task import SAMMITask
from samkit.systems.ssp_sam_task import SSPSAMTask

__all__ = [
    "SystemTask",
    "TASKS",
    "build_task",
]

TASKS: dict[str, type] = {"ssp_sam": SSPSAMTask, "sam_cp": SAMCPTask, "sam_mi": SAMMITask}
"""Task class of every system (keys as in `samkit.systems.SYSTEMS`)."""


@runtime_checkable
class SystemTask(Task, Protocol):
    """A `Task` that can also run on images without annotations (what `samkit predict` uses)."""

    def infer(self, images: Tensor, texts: Sequence[str] | None = None) -> list[Any]:
        """One prediction per image (`texts`: one expression per image, referring only)."""


def build_task(
    system: str,
    model: nn.Module,
    *,
    class_names: Sequence[str] | None,
    num_things: int = 0,
    **options: Any,
) -> SystemTask:
    """The engine task of `system` around a built `model`.

    Args:
        system: `"ssp_sam"`, `"sam_cp"` or `"sam_mi"` (`-` is accepted for `_`).
        model: The built system module.
        class_names: The data set's class names, things first (`None`: the task's default,
            e.g. the model's own vocabulary; referring data sets have none).
        num_things: How many of them are things.
        **options: Keyword options of the task class (see `TASKS`).

    Returns:
        The task.

    Raises:
        ValueError: For an unknown system, or a vocabulary the task rejects.
        TypeError: If `model` is not the system's module or an option is unknown.

    Examples:
        >>> from samkit.data.synthetic import CLASS_NAMES
        >>> from samkit.systems.sam_mi import build_sam_mi
        >>> task = build_task("sam-mi", build_sam_mi("tiny"), class_names=CLASS_NAMES)
        >>> type(task).__name__, task.stages
        ('SAMMITask', ('tspp', 'full'))
    """
    key = system.replace("-", "_")
    if key not in TASKS:
        raise ValueError(f"system: expected one of {sorted(TASKS)}, got {system!r}")
    task: SystemTask = TASKS[key](model, class_names=class_names, num_things=num_things, **options)
    return task
