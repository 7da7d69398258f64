"""Shared pieces of the benchmark scripts: machine description, source tree, child processes.

Each script times its work in fresh child processes (`run_child`) so that one measurement's
allocations, caches and thread pools do not leak into the next, and records the machine
(`machine`) and source tree (`commit`) next to its figures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine(threads: int) -> dict[str, Any]:
    """CPU (`lscpu`'s first lines), torch and Python versions, torch threads, load average."""
    import torch

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = platform.processor()
    return {
        "lscpu": "\n".join(lscpu.splitlines()[:12]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "load_average": list(os.getloadavg()),
    }


def commit(src: Path = ROOT) -> str:
    """`path @ commit` of a source tree (`+dirty` when it has uncommitted changes)."""
    git = ["git", "-C", str(src)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True)
    return f"{src} @ {head.stdout.strip() or '?'}{'+dirty' if dirty.stdout.strip() else ''}"


def run_child(
    code: str, args: list[str], *, src: Path = ROOT, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `code` in a fresh one-thread interpreter on the samkit of `src`.

    The child prints one line `RESULT<json>`; its dict is returned, or `{"error": last line of
    stderr}` when the child fails.
    """
    child_env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env,
        capture_output=True,
        text=True,
        check=False,
        cwd=src,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return dict(json.loads(line[len("RESULT") :]))
