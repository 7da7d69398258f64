"""`samkit eval RUN --data DATA [--predictions DIR]`: metrics of a trained run on a data set.

Loads `RUN/model` (`load_pretrained`) and the run's task options, evaluates on the data set with
`samkit.engine.evaluate` (sharded when launched by `torchrun`), prints the metrics table and
writes it to `RUN/metrics.json` (or `--out`). `--predictions DIR` also writes every prediction
in the standard format of the task (see `samkit predict`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from samkit.cli._run import RunInfo, print_table, write_json

__all__ = ["add_parser", "run_eval"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `eval` command to the `samkit` sub-parsers."""
    p = sub.add_parser(
        "eval",
        help="evaluate a trained run on a data set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder written by `samkit train`")
    p.add_argument("--data", type=Path, required=True, help="data file of the evaluation set")
    p.add_argument("--out", type=Path, default=None, help="metrics file (default RUN/metrics.json)")
    p.add_argument(
        "--predictions", type=Path, default=None, help="also write the predictions to this folder"
    )
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default=None,
        help="compute precision of the system (default: the one it was saved with, fp32)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    """Run `samkit eval`; returns the exit code."""
    from samkit.cli.predict import load_run
    from samkit.data import load_data_file
    from samkit.engine import evaluate
    from samkit.engine.distributed import (
        default_device,
        init_distributed,
        is_main_process,
        world_size,
    )
    from samkit.systems.tasks import build_task

    info = RunInfo.read(args.run)
    init_distributed()
    if args.predictions is not None and world_size() > 1:
        raise ValueError("--predictions writes from one process; run it without torchrun")
    data = load_data_file(args.data)
    model = load_run(args.run, info, precision=args.precision)
    class_names = getattr(data, "class_names", None)
    num_things = int(getattr(data, "num_things", 0))
    task = build_task(
        info.system,
        model,
        class_names=list(class_names) if class_names is not None else None,
        num_things=num_things,
        **info.task_options,
    )
    writer = None
    if args.predictions is not None:
        from samkit.cli.predict import prediction_writer

        writer = prediction_writer(info.system, args.predictions, data)
    metrics = evaluate(
        task,
        data,
        batch_size=args.batch_size,
        device=args.device if args.device is not None else default_device(),
        num_workers=args.workers,
        progress=not args.no_progress,
        on_predictions=writer.add if writer is not None else None,
    )
    if is_main_process():
        out = args.out if args.out is not None else args.run / "metrics.json"
        print_table(metrics, title=f"{info.system.replace('_', '-')} on {args.data}")
        write_json(out, metrics)
        written = [out]
        if writer is not None:
            written += writer.close()
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
