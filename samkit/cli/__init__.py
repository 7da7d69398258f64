"""The `samkit` command line: `demo`, `train`, `eval`, `predict`, `pretrain`, `export-onnx`.

Each command is a thin layer over the library (`samkit.data` readers and data files,
`samkit.engine` training and evaluation, `save_pretrained` / `load_pretrained`), lives in its own
module here, shows progress, prints what it wrote, and turns bad input into a one-line error
(`--debug` shows the traceback instead). Multi-process training is `torchrun`:

    torchrun --nproc_per_node 2 -m samkit.cli train sam-cp --train train.yaml --out runs/cp
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from samkit.cli import demo, evaluate, export_onnx, predict, pretrain, train
from samkit.cli.demo import RANDOM_WEIGHTS_NOTE, UNTRAINED_HEADS_NOTE, run_demo

__all__ = ["RANDOM_WEIGHTS_NOTE", "UNTRAINED_HEADS_NOTE", "build_parser", "main", "run_demo"]

# Errors that bad input produces (missing or unreadable files, invalid values, wrong run).
# RuntimeError covers torch's own reports (e.g. a state dict that does not fit); `--debug`
# shows the traceback of any of them.
USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `samkit` command."""
    parser = argparse.ArgumentParser(
        prog="samkit",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, train, evaluate, predict, pretrain, export_onnx):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `samkit` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("SAMKIT_DEBUG", "") not in ("", "0")
    try:
        return int(args.handler(args))
    except USER_ERRORS as err:
        if debug:
            raise
        message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        print(f"samkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"samkit {args.command}: interrupted", file=sys.stderr)
        return 130
