"""The run log: `log.jsonl` (one JSON object per line, appended and flushed) and TensorBoard."""

from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path
from typing import Any, TextIO

from samkit._io import write_atomic

__all__ = ["RunLog"]


def _scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("step", "kind", "stage", "epoch", "time"):
            continue
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, Real) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


class RunLog:
    """Appends rows to `out_dir/log.jsonl` and, when TensorBoard is installed, writes scalars.

    Args:
        out_dir: The run's directory.
        enabled: False on every rank but 0 (nothing is opened or written).
        keep_until: When resuming from step k, rows after step k (written by the interrupted
            run after its last checkpoint) and a torn last line are dropped first; None starts
            a new log.
    """

    def __init__(self, out_dir: Path, *, enabled: bool, keep_until: int | None) -> None:
        self.path = out_dir / "log.jsonl"
        self._file: TextIO | None = None
        self._tb: Any = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if keep_until is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("step", math.inf) <= keep_until:
                    kept.append(line)
        write_atomic(self.path, "".join(f"{line}\n" for line in kept).encode())
        self._file = self.path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (must hold `"step"`), flush it, and mirror numbers to TensorBoard."""
        if self._file is None:
            return
        self._file.write(json.dumps(row, sort_keys=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = "eval/" if row.get("kind") == "eval" else "train/"
            for name, value in _scalars(row).items():
                self._tb.add_scalar(prefix + name, value, row["step"])
            self._tb.flush()

    def close(self) -> None:
        """Close the files."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
