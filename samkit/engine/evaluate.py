"""Evaluation of a task's model over a data set, sharded across ranks without padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from samkit._precision import Precision, autocast, check_precision
from samkit.engine._data import eval_shard, move_to_device
from samkit.engine.distributed import is_main_process, rank, world_size
from samkit.engine.task import Task

__all__ = ["evaluate"]


def evaluate(
    task: Task,
    data: Dataset,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    on_predictions: Callable[[Sequence[Any], Any], None] | None = None,
    precision: Precision = "fp32",
) -> dict[str, float]:
    """Run `task.predict` over `data`, update fresh metrics, sync them, summarize.

    When a process group is initialised, rank `r` of `W` evaluates samples `r, r + W, ...`
    (no padding, so no sample is counted twice) and every metric's `sync()` merges the ranks;
    every rank must call this function and gets the same result.

    Args:
        task: The task; `task.model` is moved to `device` and run in eval mode under `no_grad`
            (its training mode is restored afterwards).
        data: The evaluation data set (samples that `task.collate` batches).
        batch_size: Samples per batch.
        device: Where the model runs; batches are moved there.
        num_workers: DataLoader worker processes.
        progress: Show a tqdm bar (rank 0 only).
        on_predictions: Called as `on_predictions(predictions, batch)` after every batch
            (e.g. to write the predictions to files); each rank sees its own shard.
        precision: `"bf16"` runs `task.predict` under bfloat16 autocast on `device`; `"fp32"`
            adds none (a system built with `precision="bf16"` still uses its own).

    Returns:
        `task.summarize(metrics)`: metric name -> value over the whole data set.

    Raises:
        ValueError: If `batch_size < 1` or `precision` is not `"fp32"` or `"bf16"`.
    """
    check_precision(precision, name="precision")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    model = task.model.to(device)
    shard = eval_shard(len(data), rank(), world_size())  # type: ignore[arg-type]
    loader = DataLoader(
        Subset(data, shard),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=task.collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),  # draws nothing from the global RNG
    )
    metrics = task.metrics()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            bar = tqdm(loader, desc="eval", disable=not (progress and is_main_process()))
            for batch in bar:
                batch = move_to_device(batch, device)
                with autocast(precision, device):
                    predictions = task.predict(batch)
                task.update_metrics(metrics, predictions, batch)
                if on_predictions is not None:
                    on_predictions(predictions, batch)
    finally:
        model.train(was_training)
    for metric in metrics.values():
        metric.sync()
    return task.summarize(metrics)
