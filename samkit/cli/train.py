"""`samkit train SYSTEM --train DATA [--val DATA] --out RUN [--resume] [options]`.

Builds the system (the `tiny` preset unless backbone checkpoints or `--preset` say otherwise)
with the vocabulary of the training data, wraps it in its task and trains it with
`samkit.engine.Trainer`. Rank 0 writes the run folder (see `samkit.cli._run`); under `torchrun`
every process trains its shard of each batch with DDP.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from samkit.cli._run import (
    SYSTEMS,
    RunInfo,
    parse_assignments,
    print_table,
    system_name,
    write_json,
)

__all__ = ["add_parser", "run_train"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `train` command to the `samkit` sub-parsers."""
    p = sub.add_parser(
        "train",
        help="train a system on a data set given by a data file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("system", help=f"one of {', '.join(SYSTEMS)}")
    p.add_argument("--train", type=Path, required=True, help="data file of the training set")
    p.add_argument("--val", type=Path, default=None, help="data file of the validation set")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    model = p.add_argument_group("system")
    model.add_argument(
        "--preset",
        default=None,
        help="builder preset (default: tiny, or the paper setting when a checkpoint is given)",
    )
    model.add_argument("--sam-checkpoint", default=None, help="SAM weights (file path)")
    model.add_argument("--clip-checkpoint", default=None, help="CLIP weights (file path)")
    model.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="system config field (JSON value), repeatable; e.g. --set dim=64",
    )
    model.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="task option (JSON value), repeatable; e.g. --task-option patches=sam",
    )
    eng = p.add_argument_group("training (defaults: samkit.engine.TrainConfig)")
    eng.add_argument("--steps", default=None, help="optimizer steps, comma-separated per stage")
    eng.add_argument("--batch-size", type=int, default=None)
    eng.add_argument("--lr", type=float, default=None, help="base learning rate")
    eng.add_argument("--weight-decay", type=float, default=None)
    eng.add_argument("--warmup-steps", type=int, default=None)
    eng.add_argument("--min-lr-ratio", type=float, default=None, help="cosine floor / base lr")
    eng.add_argument("--grad-clip", type=float, default=None, help="max gradient norm")
    eng.add_argument("--accumulate", type=int, default=None, help="micro-batches per step")
    eng.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="fp32 (default) or bf16: training steps and evaluations under bf16 autocast",
    )
    eng.add_argument(
        "--bf16", action="store_true", default=None, help="deprecated: --precision bf16"
    )
    eng.add_argument(
        "--flush-denormal",
        action="store_true",
        default=None,
        help="flush denormal floats to zero on the CPU while training (faster for small models)",
    )
    eng.add_argument("--eval-every", type=int, default=None, help="steps between evaluations")
    eng.add_argument("--log-every", type=int, default=None)
    eng.add_argument("--checkpoint-every", type=int, default=None)
    eng.add_argument("--keep-last", type=int, default=None, help="checkpoints kept")
    eng.add_argument("--seed", type=int, default=None)
    eng.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    eng.add_argument("--eval-batch-size", type=int, default=None)
    eng.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    eng.add_argument("--no-progress", action="store_true", help="hide progress bars")
    eng.add_argument(
        "--augment",
        default=None,
        metavar="PRESET",
        help="augment training batches: flip, default or affine (samkit.data.augment)",
    )
    p.set_defaults(handler=run_train)
    return p


def _train_config(args: argparse.Namespace) -> dict[str, Any]:
    """`TrainConfig` fields given on the command line."""
    from samkit.engine import TrainConfig

    given: dict[str, Any] = {
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "min_lr_ratio": args.min_lr_ratio,
        "grad_clip": args.grad_clip,
        "accumulate": args.accumulate,
        "precision": "bf16" if args.bf16 and args.precision is None else args.precision,
        "flush_denormal": args.flush_denormal,
        "eval_every": args.eval_every,
        "log_every": args.log_every,
        "checkpoint_every": args.checkpoint_every,
        "keep_last": args.keep_last,
        "seed": args.seed,
        "num_workers": args.workers,
        "eval_batch_size": args.eval_batch_size,
        "device": args.device,
        "augment": args.augment,
    }
    if args.steps is not None:
        try:
            steps = tuple(int(s) for s in str(args.steps).split(","))
        except ValueError as err:
            raise ValueError(
                f"--steps: expected integers separated by commas, got {args.steps!r}"
            ) from err
        given["steps"] = steps[0] if len(steps) == 1 else steps
    if args.no_progress:
        given["progress"] = False
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in given.items() if v is not None and k in names}


def _vocabulary(data: Any, path: Path) -> tuple[list[str] | None, int]:
    names = getattr(data, "class_names", None)
    if names is None:
        return None, 0
    return [str(n) for n in names], int(getattr(data, "num_things", 0))


def build_model(
    system: str,
    *,
    preset: str | None,
    sam_checkpoint: str | None,
    clip_checkpoint: str | None,
    overrides: dict[str, Any],
    class_names: list[str] | None,
    num_things: int,
) -> Any:
    """Build `system` for a vocabulary, with checkpoints and config overrides."""
    from samkit.systems import build_system

    over = dict(overrides)
    if sam_checkpoint is not None:
        over.setdefault("sam_checkpoint", sam_checkpoint)
    if clip_checkpoint is not None:
        over.setdefault("clip_checkpoint", clip_checkpoint)
    if preset is None:
        preset = "tiny" if sam_checkpoint is None and clip_checkpoint is None else None
    if system == "sam_cp" and class_names is not None:
        over.setdefault("thing_classes", tuple(class_names[:num_things]))
        over.setdefault("stuff_classes", tuple(class_names[num_things:]))
    return build_system(system, preset, **over)


def run_train(args: argparse.Namespace) -> int:
    """Run `samkit train`; returns the exit code."""
    from samkit.data import load_data_file
    from samkit.engine import TrainConfig, Trainer
    from samkit.engine.distributed import init_distributed, is_main_process
    from samkit.systems.tasks import build_task

    system = system_name(args.system)
    run: Path = args.out
    if args.resume:
        info = RunInfo.read(run)
        if info.system != system:
            raise ValueError(
                f"{run / 'run.json'}: this run trains {info.system.replace('_', '-')}, "
                f"not {args.system}"
            )
    elif (run / "run.json").exists():
        raise FileExistsError(
            f"{run} already holds a run; pass --resume to continue it or choose another --out"
        )
    init_distributed()
    train_data = load_data_file(args.train)
    val_data = load_data_file(args.val) if args.val is not None else None
    class_names, num_things = _vocabulary(train_data, args.train)
    task_options = parse_assignments(args.task_option, option="--task-option")
    config = TrainConfig(**_train_config(args))
    import torch

    torch.manual_seed(config.seed)  # --seed also fixes the initial weights of the new heads
    model = build_model(
        system,
        preset=args.preset,
        sam_checkpoint=args.sam_checkpoint,
        clip_checkpoint=args.clip_checkpoint,
        overrides=parse_assignments(args.set, option="--set"),
        class_names=class_names,
        num_things=num_things,
    )
    task = build_task(system, model, class_names=class_names, num_things=num_things, **task_options)
    info = RunInfo(
        system=system,
        train_data=str(args.train.resolve()),
        val_data=str(args.val.resolve()) if args.val is not None else None,
        class_names=class_names,
        num_things=num_things,
        task_options=task_options,
        train_config=asdict(config),
    )
    main = is_main_process()
    if main:
        run.mkdir(parents=True, exist_ok=True)
        info.write(run)
    metrics = Trainer(task, train_data, config, run, val_data=val_data).fit(resume=args.resume)
    if main:
        model.save_pretrained(run / "model")
        info.finished = True
        info.write(run)
        written = [run / "run.json", run / "model", run / "checkpoints", run / "log.jsonl"]
        if metrics:
            write_json(run / "metrics.json", metrics)
            written.append(run / "metrics.json")
            print_table(metrics, title=f"validation ({args.val})")
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
