"""Training checkpoints: one file per checkpoint, written atomically, rotated safely.

Layout: `RUN/checkpoints/step_000001200.pt`, one `torch.save` file per checkpoint that holds
everything a resume needs (model, optimizer, scheduler, stage, step, data position, RNG states,
configuration). A checkpoint is a single file so that it is always one consistent unit: it is
streamed to a hidden temporary file in the same directory (`.step_000001200.pt.*.tmp`), fsynced,
renamed into place with `os.replace` and the directory fsynced. A process killed at any moment
leaves the previous checkpoints untouched and at most a temporary file, which never matches the
checkpoint name pattern and so is never picked up (the trainer removes stale ones). Rotation
(`keep_last`) deletes old checkpoints only after the new one is in place.

Files are read back with `torch.load(weights_only=True)` through `samkit._io.read_checkpoint`:
checkpoints hold tensors, numbers, strings and plain containers only.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from samkit._io import fsync_dir, read_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "samkit.engine.checkpoint/1"
_KIND = "samkit training checkpoint"
_NAME = re.compile(r"^step_(\d+)\.pt$")
_TMP = re.compile(r"^\.step_\d+\.pt\..*\.tmp$")


def _checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """The file of the checkpoint taken after optimizer step `step` of a run."""
    return _checkpoint_dir(run_dir) / f"step_{step:09d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoints of a run, oldest first (temporary files are never listed)."""
    folder = _checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run, or None when it has none.

    Args:
        run_dir: The run's output directory (the one holding `checkpoints/`).

    Returns:
        The path of the checkpoint with the highest step, or None.
    """
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _save_atomic(obj: Any, path: Path) -> None:
    """`torch.save` streamed to a temporary file next to `path`, fsynced, then renamed over it.

    Streams instead of going through `samkit._io.write_atomic(path, bytes)` so that a large
    state (model + AdamW moments) is not held twice in memory; the protocol is the same.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> int:
    """Delete the temporary files that killed saves left in `run_dir/checkpoints`.

    Call it only when no other process is saving into the run.

    Returns:
        How many files were removed.
    """
    folder = _checkpoint_dir(run_dir)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if _TMP.match(p.name):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def save_checkpoint(
    run_dir: str | os.PathLike[str], state: Mapping[str, Any], *, keep_last: int | None = None
) -> Path:
    """Write one checkpoint atomically, then delete all but the newest `keep_last`.

    Args:
        run_dir: The run's output directory; the file goes to `run_dir/checkpoints/`.
        state: What to store: tensors, numbers, strings, None and plain containers only; must
            hold an int `"step"` (the file is named after it). `"format"` is added.
        keep_last: How many checkpoints to keep (None keeps all). Older ones are deleted only
            after the new one is in place, so a kill never leaves fewer complete checkpoints.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: If `state` has no int `"step"` or `keep_last` is below 1.
    """
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"state['step'] must be an int >= 0, got {step!r}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic({**state, "format": CHECKPOINT_FORMAT}, path)
    if keep_last is not None:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
        fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (`torch.load(weights_only=True)`).

    Args:
        path: The checkpoint file.

    Returns:
        The stored dict.

    Raises:
        FileNotFoundError: If `path` is not a file.
        ValueError: If the file is unreadable, is not a samkit training checkpoint, or holds
            a step other than the one in its name; the message names the file.
    """
    p = Path(path)
    state = read_checkpoint(p, kind=_KIND)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{p}: not a readable {_KIND}: expected a dict with format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}"
        )
    m = _NAME.match(p.name)
    if m and state.get("step") != int(m.group(1)):
        raise ValueError(
            f"{p}: not a readable {_KIND}: its name says step {int(m.group(1))} but it holds "
            f"step {state.get('step')!r}"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state of this process (torch CPU, CUDA when in use, numpy, random).

    Stored as tensors and plain numbers so that `weights_only=True` loads read them.
    """
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]
    py_version, py_state, py_gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to a state from `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
