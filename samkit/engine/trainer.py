"""The training loop: stages, AdamW + warmup/cosine, accumulation, DDP, checkpoints, resume.

`Trainer(task, train_data, config, out_dir).fit()` trains `task.model` through the `Task`
protocol and writes `out_dir/checkpoints/step_*.pt` and `out_dir/log.jsonl`. `fit(resume=True)`
continues from the newest checkpoint and ends with the parameters the uninterrupted run would
have had, bit for bit (same device and software, see docs/engine.md for what is restored).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import InitVar, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR, LinearLR, LRScheduler, SequentialLR
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from samkit._precision import Precision, autocast, check_precision
from samkit.engine import distributed as dist_utils
from samkit.engine._data import TrainStream, move_to_device
from samkit.engine._log import RunLog
from samkit.engine.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from samkit.engine.evaluate import evaluate
from samkit.engine.numerics import denormals_flushed
from samkit.engine.task import Task

__all__ = ["TrainConfig", "Trainer", "build_scheduler"]

# Fields whose change between a run and its resume breaks bit-exactness (a warning names them).
_EXACTNESS_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "min_lr_ratio",
    "grad_clip",
    "accumulate",
    "precision",
    "seed",
    "augment",
)


@dataclass
class TrainConfig:
    """How to train (the engine's only configuration).

    Attributes:
        steps: Optimizer steps of each task stage: an int for a one-stage task, else one int per
            stage (`task.stages`). A stage with 0 steps is skipped.
        batch_size: Samples per micro-batch and process (the effective batch is
            `batch_size * accumulate * world_size`).
        lr: Base learning rate (param groups without `"lr"` use it).
        weight_decay: AdamW weight decay (param groups without `"weight_decay"` use it).
        warmup_steps: Linear warmup steps at the start of every stage (capped at its steps).
        min_lr_ratio: The cosine ends at `min_lr_ratio` times each group's learning rate.
        grad_clip: Max global gradient norm (`clip_grad_norm_`), None for no clipping.
        accumulate: Micro-batches per optimizer step; each micro-batch loss is divided by it,
            so for mean losses `accumulate=2` with `batch_size=b` equals `batch_size=2b`.
        bf16: Deprecated alias: `bf16=True` is `precision="bf16"` (a `DeprecationWarning`);
            not stored, so `to_dict()` has `precision` only.
        eval_every: Evaluate `val_data` every this many steps (0: only at the end).
        log_every: Write a `log.jsonl` row every this many steps (and at the last step).
        checkpoint_every: Save a checkpoint every this many steps (and at the last step).
        keep_last: How many checkpoints to keep (None keeps all).
        seed: Seed of the data order, per-sample augmentation seeds and the global RNGs
            (rank `r` seeds its global RNGs with `seed + r`).
        num_workers: DataLoader worker processes (results do not depend on it).
        eval_batch_size: Samples per evaluation batch.
        device: Where to train; None picks `cuda:LOCAL_RANK` when CUDA is available, else CPU.
        progress: Show tqdm bars (rank 0 only).
        augment: Name of a batch augmentation preset of `samkit.data.augment` (`"flip"`,
            `"default"`, `"affine"`), applied to every training batch on the training device;
            None for none. The same random geometric transform goes to each sample's image and
            all its masks and label maps (drawn from the global torch RNG, so resume stays
            exact). It augments `ReferringBatch`, `PanopticBatch` and `SemanticBatch`.
        flush_denormal: Flush denormal floats to zero on the CPU while `fit` runs (restored
            after it; see `samkit.engine.numerics.denormals_flushed`): small models trained
            from scratch on CPU otherwise slow down by up to an order of magnitude. Results
            change only below float32's smallest normal number.
        precision: `"fp32"`, or `"bf16"` to run `training_step` and the evaluations under
            `torch.autocast(device_type, dtype=torch.bfloat16)` (weights, gradients and the
            optimizer state stay float32). See `docs/performance/precision.md`.
    """

    steps: int | tuple[int, ...] = 1000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    bf16: InitVar[bool | None] = None  # deprecated alias of precision (kept in its old place)
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int | None = 3
    seed: int = 0
    num_workers: int = 0
    eval_batch_size: int = 1
    device: str | None = None
    progress: bool = True
    augment: str | None = None
    flush_denormal: bool = False
    precision: Precision = "fp32"

    def __post_init__(self, bf16: bool | None) -> None:
        check_precision(self.precision, name="precision")
        if bf16 is not None:
            warnings.warn(
                "TrainConfig(bf16=...) is deprecated; use precision='bf16' (or 'fp32')",
                DeprecationWarning,
                stacklevel=3,
            )
            if bf16 and self.precision == "fp32":
                self.precision = "bf16"
            elif not bf16 and self.precision == "bf16":
                raise ValueError("bf16=False contradicts precision='bf16'; give precision only")
        if isinstance(self.steps, list):
            self.steps = tuple(self.steps)
        steps = self.steps if isinstance(self.steps, tuple) else (self.steps,)
        if not steps or any(not isinstance(s, int) or s < 0 for s in steps):
            raise ValueError(f"steps must be an int >= 0 or a tuple of them, got {self.steps!r}")
        for name in ("batch_size", "accumulate", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "num_workers", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {self.keep_last}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.augment is not None:
            from samkit.data.augment import AUGMENT_PRESETS

            if self.augment not in AUGMENT_PRESETS:
                raise ValueError(
                    f"augment must be None or one of {sorted(AUGMENT_PRESETS)}, "
                    f"got {self.augment!r}"
                )

    def stage_steps(self, stages: tuple[str, ...]) -> tuple[int, ...]:
        """Steps of each stage of a task with stages `stages`."""
        if isinstance(self.steps, int):
            if len(stages) != 1:
                raise ValueError(
                    f"steps={self.steps} is one number but the task has {len(stages)} stages "
                    f"{stages}: give one step count per stage, e.g. steps=(1000, 500)"
                )
            return (self.steps,)
        if len(self.steps) != len(stages):
            raise ValueError(
                f"steps={self.steps} gives {len(self.steps)} stage(s) but the task has "
                f"{len(stages)} stages {stages}"
            )
        return self.steps

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain values (what checkpoints store)."""
        return dataclasses.asdict(self)


def _cosine_factor(step: int, *, total: int, floor: float) -> float:
    """Cosine from 1 at step 0 to `floor` at step `total`."""
    progress = min(step, total) / total
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, steps: int, warmup_steps: int, min_lr_ratio: float
) -> LRScheduler:
    """Linear warmup then cosine decay to `min_lr_ratio` times each group's learning rate.

    The warmup is `LinearLR` from `1 / (warmup + 1)` of the rate; the decay is a `LambdaLR`
    cosine, chained with `SequentialLR`. `CosineAnnealingLR` is not used because its floor
    (`eta_min`) is one absolute rate for all groups, while the systems' groups have their own
    rates (e.g. CLIP at 0.01x) and each must end at `min_lr_ratio` times its own.

    Args:
        optimizer: The optimizer (its groups' `lr` are the peak rates).
        steps: Optimizer steps of the stage.
        warmup_steps: Warmup steps (capped at `steps`).
        min_lr_ratio: Final rate over peak rate.

    Returns:
        A scheduler to `step()` once after every optimizer step.
    """
    warmup = min(warmup_steps, steps)
    cosine = LambdaLR(
        optimizer, partial(_cosine_factor, total=max(steps - warmup, 1), floor=min_lr_ratio)
    )
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


class _TrainingStep(nn.Module):
    """`forward(batch, stage)` is `task.training_step`; what DDP wraps.

    DDP syncs the gradients of the parameters of the module it wraps that take part in its
    forward; holding `task.model` as a submodule and running the whole training step inside
    `forward` lets tasks call any submodule of their model.
    """

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.model = task.model
        self._task = [task]  # a list keeps the task out of module registration

    def forward(self, batch: Any, stage: int) -> Mapping[str, Tensor]:
        return self._task[0].training_step(batch, stage)


@dataclass
class _Stage:
    index: int
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    module: nn.Module  # the DDP wrapper, or the plain step module
    params: list[nn.Parameter]
    group_names: list[str]
    check_grads: bool = True
    names: dict[int, str] = field(default_factory=dict)


class Trainer:
    """Trains `task.model` on `train_data` by `config`, writing into `out_dir`.

    Args:
        task: How to train and evaluate the system (see `samkit.engine.task.Task`).
        train_data: The training data set (samples that `task.collate` batches).
        config: The run's configuration.
        out_dir: The run directory: `checkpoints/`, `log.jsonl` (and `tensorboard/` when
            TensorBoard is installed). Only rank 0 writes.
        val_data: Evaluated every `config.eval_every` steps and at the end.

    Under `torchrun`, the process group is initialised from the environment
    (`init_distributed`), the model runs in `DistributedDataParallel` and every rank reads its
    own share of each epoch.
    """

    def __init__(
        self,
        task: Task,
        train_data: Dataset,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        val_data: Dataset | None = None,
    ) -> None:
        if not isinstance(task, Task):
            raise TypeError(
                f"task must implement samkit.engine.task.Task, got {type(task).__name__}"
            )
        self.task = task
        self.train_data = train_data
        self.val_data = val_data
        self.config = config
        self.out_dir = Path(out_dir)
        self.stage_steps = config.stage_steps(tuple(task.stages))
        self.bounds = [sum(self.stage_steps[: i + 1]) for i in range(len(self.stage_steps))]
        self.total_steps = self.bounds[-1]
        dist_utils.init_distributed()
        self.rank = dist_utils.rank()
        self.world_size = dist_utils.world_size()
        self.main = self.rank == 0
        self.device = torch.device(config.device) if config.device else dist_utils.default_device()
        self.augment: Callable[[Any], Any] | None = None
        if config.augment is not None:
            from samkit.data.augment import BatchAugment

            self.augment = BatchAugment(config.augment)

    # ------------------------------------------------------------------ stages

    def _stage_of(self, step: int) -> int:
        """The stage that runs optimizer step `step` (0-based); `step < total_steps`."""
        return next(i for i, end in enumerate(self.bounds) if step < end)

    def _start_stage(self, index: int) -> _Stage:
        task, config = self.task, self.config
        groups = task.configure_stage(index)
        names = {id(p): n for n, p in task.model.named_parameters()}
        built: list[dict[str, Any]] = []
        group_names: list[str] = []
        params: list[nn.Parameter] = []
        for g, group in enumerate(groups):
            if not isinstance(group, Mapping) or "params" not in group:
                raise TypeError(
                    f"configure_stage({index}) must return a list of param-group dicts with "
                    f"'params'; group {g} is {type(group).__name__}"
                )
            group = dict(group)
            group["params"] = list(group["params"])
            frozen = [names.get(id(p), "?") for p in group["params"] if not p.requires_grad]
            if frozen:
                raise ValueError(
                    f"configure_stage({index}) put parameters with requires_grad=False in "
                    f"group {g}: {', '.join(frozen[:10])}"
                )
            group.setdefault("lr", config.lr)
            group_names.append(str(group.get("name", g)))
            params.extend(group["params"])
            built.append(group)
        if not params:
            raise ValueError(f"configure_stage({index}) returned no parameters to train")
        optimizer = torch.optim.AdamW(built, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = build_scheduler(
            optimizer,
            steps=self.stage_steps[index],
            warmup_steps=config.warmup_steps,
            min_lr_ratio=config.min_lr_ratio,
        )
        module: nn.Module = _TrainingStep(task)
        if self.world_size > 1:
            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        return _Stage(index, optimizer, scheduler, module, params, group_names, names=names)

    def _check_gradients(self, stage: _Stage) -> None:
        """Raise, naming them, if trainable parameters got no gradient (DDP would break)."""
        missing = [
            name
            for name, p in self.task.model.named_parameters()
            if p.requires_grad and p.grad is None
        ]
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise RuntimeError(
                f"stage {stage.index} ({self.task.stages[stage.index]!r}): these parameters "
                f"have requires_grad=True but got no gradient from training_step: {shown}. "
                "Every trainable parameter must take part in the loss (DistributedDataParallel "
                "runs without find_unused_parameters); set requires_grad=False for them in "
                f"configure_stage({stage.index}) or use them in the loss."
            )

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.config.precision, self.device)

    def _optimizer_step(self, stage: _Stage, data: TrainStream) -> dict[str, Tensor]:
        config = self.config
        self.task.model.train()
        stage.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, Tensor] = {}
        for micro in range(config.accumulate):
            batch = move_to_device(next(data), self.device)
            if self.augment is not None:  # draws from the global RNG, which checkpoints keep
                batch = self.augment(batch)
            last = micro == config.accumulate - 1
            sync: AbstractContextManager[Any] = nullcontext()
            if isinstance(stage.module, DistributedDataParallel) and not last:
                sync = stage.module.no_sync()
            with sync:
                with self._autocast():
                    losses = stage.module(batch, stage.index)
                if "loss" not in losses:
                    raise KeyError(
                        f"training_step must return a dict with 'loss', got keys {sorted(losses)}"
                    )
                (losses["loss"] / config.accumulate).backward()
            if stage.check_grads:
                self._check_gradients(stage)
                stage.check_grads = False
            for name, value in losses.items():
                value = value.detach().float() / config.accumulate
                totals[name] = totals[name] + value if name in totals else value
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(stage.params, config.grad_clip)
        stage.optimizer.step()
        stage.scheduler.step()
        return totals

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_state(self, stage: _Stage, step: int, data: TrainStream) -> dict[str, Any]:
        rng = dist_utils.all_gather_object(capture_rng_state())
        return {
            "step": step,
            "stage": stage.index,
            "stage_name": self.task.stages[stage.index],
            "stages": list(self.task.stages),
            "epoch": data.epoch,
            "batch_in_epoch": data.position,
            "world_size": self.world_size,
            "model": self.task.model.state_dict(),
            "optimizer": stage.optimizer.state_dict(),
            "scheduler": stage.scheduler.state_dict(),
            "rng": rng,
            "config": self.config.to_dict(),
        }

    def _save(self, stage: _Stage, step: int, data: TrainStream) -> None:
        state = self._checkpoint_state(stage, step, data)  # collective: every rank takes part
        if self.main:
            save_checkpoint(self.out_dir, state, keep_last=self.config.keep_last)

    def _read_resume_state(self, path: Path) -> tuple[Path, dict[str, Any]]:
        state = load_checkpoint(path)
        missing = [
            k
            for k in ("step", "stage", "stages", "epoch", "batch_in_epoch", "model", "rng")
            if k not in state
        ]
        if missing:
            raise ValueError(f"{path}: not a Trainer checkpoint: missing {missing}")
        if tuple(state["stages"]) != tuple(self.task.stages):
            raise ValueError(
                f"{path}: written for a task with stages {tuple(state['stages'])}, "
                f"this task has {tuple(self.task.stages)}"
            )
        if state["step"] > self.total_steps:
            raise ValueError(
                f"{path}: at step {state['step']}, beyond this run's {self.total_steps} steps"
            )
        saved = _with_precision(state.get("config", {}))
        current = self.config.to_dict()
        changed = [
            f"{k}: {saved[k]!r} -> {current[k]!r}"
            for k in _EXACTNESS_FIELDS
            if k in saved and _normalise(saved[k]) != _normalise(current[k])
        ]
        if state.get("world_size", 1) != self.world_size:
            changed.append(f"world_size: {state.get('world_size')} -> {self.world_size}")
        if changed:
            warnings.warn(
                f"resuming from {path} with a different configuration ({'; '.join(changed)}): "
                "the run will not match an uninterrupted one",
                stacklevel=3,
            )
        return path, state

    # ------------------------------------------------------------------ fit

    def fit(self, *, resume: bool = False) -> dict[str, float]:
        """Train to `config.steps`, evaluating, logging and checkpointing on the way.

        Args:
            resume: Continue from the newest checkpoint in `out_dir/checkpoints` (a fresh
                start when there is none). Without it, an `out_dir` that already holds
                checkpoints is refused.

        Returns:
            The metrics of the last evaluation ({} without `val_data`).

        Raises:
            FileExistsError: If `out_dir` holds checkpoints and `resume` is False.
            FloatingPointError: If a logged loss is not finite.
        """
        with denormals_flushed(self.config.flush_denormal):
            return self._fit(resume=resume)

    def _fit(self, *, resume: bool) -> dict[str, float]:
        """`fit`'s body (run inside the requested floating-point mode)."""
        config, task = self.config, self.task
        # rank 0 looks at the run directory; every rank acts on its answer (no rank may
        # raise or resume alone: the others would wait in a collective forever)
        found: str | None = None
        if self.main:
            latest = latest_checkpoint(self.out_dir)
            found = None if latest is None else str(latest)
            if resume or latest is None:
                remove_stale_temporaries(self.out_dir)
        found = dist_utils.broadcast_object(found)
        if found is not None and not resume:
            raise FileExistsError(
                f"{self.out_dir / 'checkpoints'} already holds checkpoints: pass "
                "resume=True to continue that run, or choose another out_dir"
            )
        loaded = self._read_resume_state(Path(found)) if resume and found else None
        torch.manual_seed(config.seed + self.rank)
        random.seed(config.seed + self.rank)
        np.random.seed((config.seed + self.rank) % 2**32)
        task.model.to(self.device)

        step, epoch, position = 0, 0, 0
        rng_state: dict[str, Any] | None = None
        if loaded is not None:
            _, state = loaded
            task.model.load_state_dict(state["model"])
            step, epoch, position = state["step"], state["epoch"], state["batch_in_epoch"]
            rngs = state["rng"]
            rng_state = rngs[self.rank] if self.rank < len(rngs) else rngs[0]

        data = TrainStream(
            self.train_data,
            task.collate,
            seed=config.seed,
            batch_size=config.batch_size,
            num_workers=config.num_workers,
            rank=self.rank,
            world_size=self.world_size,
            epoch=epoch,
            position=position,
            pin_memory=self.device.type == "cuda",
        )
        stage: _Stage | None = None
        if loaded is not None and step < self.total_steps:
            _, state = loaded
            if self._stage_of(step) == state["stage"]:  # mid-stage: its optimizer goes on
                stage = self._start_stage(state["stage"])
                stage.optimizer.load_state_dict(state["optimizer"])
                stage.scheduler.load_state_dict(state["scheduler"])
                stage.check_grads = False
        if rng_state is not None:
            restore_rng_state(rng_state)  # after anything a resume does that the run did not

        log = RunLog(
            self.out_dir, enabled=self.main, keep_until=step if loaded is not None else None
        )
        bar = tqdm(
            total=self.total_steps,
            initial=step,
            desc="train",
            disable=not (config.progress and self.main),
            dynamic_ncols=True,
        )
        start = time.monotonic()
        metrics: dict[str, float] = {}
        evaluated_at = -1
        try:
            while step < self.total_steps:
                index = self._stage_of(step)
                if stage is None or stage.index != index:
                    stage = None  # release the previous stage's DDP wrapper first
                    stage = self._start_stage(index)
                lrs = [group["lr"] for group in stage.optimizer.param_groups]
                losses = self._optimizer_step(stage, data)
                step += 1
                bar.update(1)
                last = step == self.total_steps
                if step % config.log_every == 0 or last:
                    values = {k: float(v) for k, v in losses.items()}
                    if not all(math.isfinite(v) for v in values.values()):
                        raise FloatingPointError(f"step {step}: non-finite losses {values}")
                    bar.set_postfix(loss=f"{values['loss']:.4g}")
                    log.write(
                        {
                            "kind": "train",
                            "step": step,
                            "stage": index,
                            "stage_name": task.stages[index],
                            "epoch": data.epoch,
                            **values,
                            "lr": dict(zip(stage.group_names, lrs, strict=True)),
                            "time": round(time.monotonic() - start, 3),
                        }
                    )
                if step % config.checkpoint_every == 0 or last:
                    self._save(stage, step, data)
                if (
                    self.val_data is not None
                    and config.eval_every
                    and step % config.eval_every == 0
                ):
                    metrics = self._evaluate(log, step, index)
                    evaluated_at = step
            if self.val_data is not None and evaluated_at != step:
                metrics = self._evaluate(log, step, self._stage_of(max(step - 1, 0)))
        finally:
            data.close()
            bar.close()
            log.close()
        return metrics

    def _evaluate(self, log: RunLog, step: int, stage: int) -> dict[str, float]:
        """Evaluate `val_data` without touching the training RNG streams; log the metrics."""
        assert self.val_data is not None
        rng = capture_rng_state()
        try:
            metrics = evaluate(
                self.task,
                self.val_data,
                batch_size=self.config.eval_batch_size,
                device=self.device,
                num_workers=self.config.num_workers,
                progress=self.config.progress,
                precision=self.config.precision,
            )
        finally:
            restore_rng_state(rng)
        log.write({"kind": "eval", "step": step, "stage": stage, **metrics})
        return metrics


def _with_precision(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with `precision`, read from the `bf16` flag of checkpoints before it."""
    if "precision" in saved or "bf16" not in saved:
        return saved
    return {**saved, "precision": "bf16" if saved["bf16"] else "fp32"}


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value
