"""`samkit demo [--out DIR] [...]`: every runnable part of samkit on generated scenes.

The demo runs every part of samkit that has a runnable path on generated scenes: SAM point
prompting, CLIP dense similarity and each system. Without arguments it uses the `tiny`
random-weight backbones (seconds on a CPU); real checkpoints are passed by path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RANDOM_WEIGHTS_NOTE", "UNTRAINED_HEADS_NOTE", "add_parser", "run_demo"]

RANDOM_WEIGHTS_NOTE = (
    "note: a backbone has RANDOM weights (--sam-variant tiny or --clip-model tiny), so its masks "
    "and scores are meaningless; the default backbones are samkit's shipped tiny-synth ones."
)

UNTRAINED_HEADS_NOTE = (
    "note: SAM and CLIP are samkit's shipped tiny-synth backbones (pretrained on generated "
    "scenes; see docs/pretrained.md) unless checkpoints are given. The system heads of SSP-SAM, "
    "SAM-CP and SAM-MI are UNTRAINED here, so their panels show the plumbing, not quality; "
    "train them with `samkit train` (see each system's docs page)."
)


@dataclass
class _Timings:
    rows: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, part: str, what: str, seconds: float) -> None:
        self.rows.append((part, what, seconds))

    def markdown(self) -> str:
        lines = ["| part | step | time (ms) |", "|---|---|---|"]
        lines += [f"| {p} | {w} | {s * 1000:.1f} |" for p, w, s in self.rows]
        return "\n".join(lines) + "\n"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `demo` command to the `samkit` sub-parsers."""
    demo = sub.add_parser("demo", help="run samkit on generated scenes and write PNG overlays")
    demo.add_argument("--out", type=Path, default=Path("samkit-demo"), help="output folder")
    demo.add_argument("--sam-checkpoint", type=Path, default=None, help="official SAM weights")
    demo.add_argument(
        "--sam-variant",
        default=None,
        choices=["tiny-synth", "tiny", "small", "vit_b", "vit_l", "vit_h"],
        help="SAM architecture (default: tiny-synth, or vit_h when a checkpoint is given)",
    )
    demo.add_argument("--clip-checkpoint", type=Path, default=None, help="local CLIP weights")
    demo.add_argument(
        "--clip-model",
        default=None,
        help="open_clip model name (default: tiny-synth, or ViT-B-16 when a checkpoint is given)",
    )
    demo.add_argument("--num-scenes", type=int, default=4, help="generated scenes to run on")
    demo.add_argument("--size", type=int, default=128, help="scene size in pixels")
    demo.add_argument("--seed", type=int, default=0, help="scene and weight seed")
    demo.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=run_demo)
    return demo


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo described by parsed `samkit demo` arguments; returns an exit code."""
    import torch
    from tqdm.auto import tqdm

    from samkit import _demo
    from samkit._io import write_atomic

    torch.manual_seed(args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    random_weights = (args.sam_variant in ("tiny", "small") and args.sam_checkpoint is None) or (
        args.clip_model == "tiny" and args.clip_checkpoint is None
    )
    notes = ([RANDOM_WEIGHTS_NOTE] if random_weights else []) + [UNTRAINED_HEADS_NOTE]
    for note in notes:
        print(note)
    timings = _Timings()
    steps: list[tuple[str, Callable[[_demo.DemoContext], list[Path]]]] = _demo.STEPS
    ctx = _demo.DemoContext.create(args, timings.add)
    written: list[Path] = []
    # The bar goes to stderr (tqdm's default), so piped stdout holds only the results.
    bar = tqdm(steps, desc="samkit demo", disable=args.no_progress)
    for name, step in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        written += step(ctx)
        timings.add(name, "whole step", time.perf_counter() - t0)
    table = timings.markdown()
    write_atomic(
        out / "timings.md",
        (
            "# samkit demo timings\n\n"
            + "".join(f"_{note}_\n\n" for note in notes)
            + f"device: {ctx.device}, scenes: {args.num_scenes} x {args.size} px\n\n"
            + table
        ).encode(),
    )
    print(table)
    print(f"wrote {len(written)} images and timings.md to {out.resolve()}")
    return 0
