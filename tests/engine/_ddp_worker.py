"""The per-rank body of the two-process tests (started by torch.multiprocessing.spawn)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from samkit.engine import TrainConfig, Trainer, distributed, evaluate
from tests.engine._toy import ToyData, make_task, params

WORLD = 2


def ddp_config(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        steps=2,
        batch_size=2,
        lr=1e-2,
        warmup_steps=0,
        grad_clip=1.0,
        log_every=1,
        checkpoint_every=1,
        keep_last=None,
        seed=5,
        progress=False,
        device="cpu",  # gloo, also where CUDA is present
    )
    base.update(kw)
    return TrainConfig(**base)


def run(rank: int, tmp: str, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    assert distributed.init_distributed(backend="gloo")
    assert (distributed.rank(), distributed.world_size()) == (rank, WORLD)
    root = Path(tmp)
    out = root / ("run" if rank == 0 else "rank1")  # rank 1 must create nothing there
    results: dict[str, Any] = {}

    # (a) one process per half batch: batch 2 on each rank, and batch 1 x accumulate 2
    task = make_task(0, dropout=0.0, jitter=0.0)
    results["metrics"] = Trainer(
        task, ToyData(10), ddp_config(), out / "a", val_data=ToyData(7, seed=9, augment=False)
    ).fit()
    results["a"] = params(task)
    task = make_task(0, dropout=0.0, jitter=0.0)
    Trainer(task, ToyData(10), ddp_config(batch_size=1, accumulate=2), out / "b").fit()
    results["b"] = params(task)

    # (b) standalone evaluation of an odd number of samples, shards without padding
    results["eval"] = evaluate(
        task, ToyData(7, seed=9, augment=False), batch_size=2, device="cpu", progress=False
    )

    # a trainable parameter that gets no gradient: a clear error on every rank, no hang
    try:
        Trainer(make_task(0, train_unused=True), ToyData(10), ddp_config(), out / "c").fit()
        results["unused"] = ""
    except RuntimeError as err:
        results["unused"] = str(err)

    # an existing run without resume=True: refused on every rank (rank 1 has no files)
    try:
        Trainer(make_task(0), ToyData(10), ddp_config(), out / "a").fit()
        results["exists"] = ""
    except FileExistsError as err:
        results["exists"] = str(err)

    # resume under DDP with dropout and jitter (per-rank RNG streams) is bit-exact too
    config = ddp_config(steps=3)
    task = make_task(0)
    Trainer(task, ToyData(10), config, out / "e").fit()
    results["e"] = params(task)
    if rank == 0:
        shutil.copytree(out / "e", out / "f")
        (out / "f" / "checkpoints" / "step_000000003.pt").unlink()
    dist.barrier()
    task = make_task(1)
    Trainer(task, ToyData(10), config, out / "f").fit(resume=True)
    results["f"] = params(task)

    gathered = distributed.all_gather_object(results)
    if rank == 0:
        torch.save({"ranks": gathered}, root / "results.pt")
    dist.destroy_process_group()
