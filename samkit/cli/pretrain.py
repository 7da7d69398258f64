"""`samkit pretrain sam|clip --out RUN [--preset tiny-synth] [--steps N] [--seed S] [--resume]`.

Trains a tiny backbone from scratch on generated scenes with the recipe of the shipped
`tiny-synth` weights (`samkit.pretrain.run.RECIPES`), through `samkit.engine.Trainer`, and
writes into RUN the engine's run files, `weights.safetensors` (float16), `recipe.json` and
`quality.json` (the figures on held-out scenes, also printed). The same command with the same
seed reproduces the shipped weights' figures. Under `torchrun` each process trains an equal
share of every batch (DDP) and rank 0 writes:

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m samkit.cli pretrain sam --out runs/sam
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run_pretrain"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `pretrain` command to the `samkit` sub-parsers."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a tiny SAM or CLIP on generated scenes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=("sam", "clip"), help="which backbone")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--preset", default="tiny-synth", help="recipe (default: tiny-synth)")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--eval-scenes", type=int, default=200, help="held-out scenes measured at the end"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_pretrain)
    return p


def run_pretrain(args: argparse.Namespace) -> int:
    """Run `samkit pretrain`; print the quality report and what was written."""
    from samkit.pretrain.run import pretrain

    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected >= 1, got {args.steps}")
    if args.eval_scenes < 1:
        raise ValueError(f"--eval-scenes: expected >= 1, got {args.eval_scenes}")
    report = pretrain(
        args.kind,
        args.out,
        preset=args.preset,
        steps=args.steps,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        evaluate_scenes=args.eval_scenes,
    )
    from samkit.engine.distributed import is_main_process

    if is_main_process():  # under torchrun, rank 0 wrote the files and reports them
        print(json.dumps(report, indent=2, sort_keys=True))
        print(f"wrote {args.out / 'weights.safetensors'} and {args.out / 'quality.json'}")
    return 0
