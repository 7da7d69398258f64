"""Checkpoint files: atomic writes, rotation, clear errors, RNG round trips, SIGKILL safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from samkit.engine import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from samkit.engine.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    remove_stale_temporaries,
    restore_rng_state,
)

SHAPES = {"a": (256, 256), "b": (512, 128), "c": (64,)}


def _state(step: int) -> dict[str, object]:
    """A model- and optimizer-like state whose every tensor is derived from `step`."""
    model = {k: torch.full(s, float(step)) for k, s in SHAPES.items()}
    moments = {k: torch.full(s, float(-step)) for k, s in SHAPES.items()}
    return {"step": step, "model": model, "optimizer": {"state": moments}, "epoch": step // 7}


def _consistent(state: dict[str, object]) -> bool:
    step = state["step"]
    assert isinstance(step, int)
    model = state["model"]
    moments = state["optimizer"]["state"]  # type: ignore[index]
    return (
        all(torch.equal(model[k], torch.full(s, float(step))) for k, s in SHAPES.items())  # type: ignore[index]
        and all(torch.equal(moments[k], torch.full(s, float(-step))) for k, s in SHAPES.items())
        and state["epoch"] == step // 7
    )


def test_round_trip_latest_and_rotation(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 10, 11):
        path = save_checkpoint(tmp_path, _state(step), keep_last=3)
        assert path == checkpoint_path(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step_000000002.pt",
        "step_000000010.pt",
        "step_000000011.pt",
    ]  # numeric order, and the oldest went
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and _consistent(load_checkpoint(latest))
    assert load_checkpoint(latest)["step"] == 11


def test_temporary_files_are_never_picked_up(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    folder = tmp_path / "checkpoints"
    (folder / ".step_000000002.pt.abc.tmp").write_bytes(b"half a checkpoint")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)
    assert remove_stale_temporaries(tmp_path) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["step_000000001.pt"]


@pytest.mark.parametrize("payload", [b"", b"garbage", None])
def test_unreadable_checkpoint_names_the_file(tmp_path: Path, payload: bytes | None) -> None:
    path = save_checkpoint(tmp_path, _state(3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if payload is None else payload)
    with pytest.raises(ValueError, match=rf"{path}: not a readable samkit training checkpoint"):
        load_checkpoint(path)


def test_foreign_or_renamed_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"model": {}}, folder / "step_000000001.pt")
    with pytest.raises(ValueError, match="expected a dict with format"):
        load_checkpoint(folder / "step_000000001.pt")
    path = save_checkpoint(tmp_path, _state(5))
    os.replace(path, folder / "step_000000006.pt")
    with pytest.raises(ValueError, match="its name says step 6 but it holds step 5"):
        load_checkpoint(folder / "step_000000006.pt")


def test_state_must_name_its_step(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"state\['step'\] must be an int"):
        save_checkpoint(tmp_path, {"model": {}})


def test_rng_state_round_trips_through_a_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path, {"step": 0, "rng": capture_rng_state()})
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    restore_rng_state(load_checkpoint(checkpoint_path(tmp_path, 0))["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def _save_forever(run_dir: str, start: int, ready: mp.synchronize.Event) -> None:
    torch.set_num_threads(1)
    step = start
    while True:
        save_checkpoint(run_dir, _state(step), keep_last=2)
        ready.set()
        step += 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and fork are POSIX")
def test_sigkill_during_saves_always_leaves_a_consistent_latest_checkpoint(
    tmp_path: Path,
) -> None:
    """A saver is SIGKILLed at random moments 25 times; every time the newest checkpoint loads,
    is one unit (all tensors from one save), and saving resumes after it."""
    ctx = mp.get_context("fork")
    rng = random.Random(0)
    kills, torn, last_step = 25, 0, -1
    for _ in range(kills):
        latest = latest_checkpoint(tmp_path)
        start = 0 if latest is None else load_checkpoint(latest)["step"] + 1
        ready = ctx.Event()
        proc = ctx.Process(target=_save_forever, args=(str(tmp_path), start, ready), daemon=True)
        proc.start()
        assert ready.wait(30), "the saver wrote no checkpoint"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        folder = tmp_path / "checkpoints"
        torn += any(p.name.endswith(".tmp") for p in folder.iterdir())
        latest = latest_checkpoint(tmp_path)
        assert latest is not None
        state = load_checkpoint(latest)
        assert _consistent(state), f"mixed checkpoint at step {state['step']}"
        assert state["step"] >= last_step  # never falls back behind a complete save
        last_step = state["step"]
        remove_stale_temporaries(tmp_path)
        assert 1 <= len(list_checkpoints(tmp_path)) <= 3
    assert torn > 0, "no kill landed inside a save: the test would not catch a torn write"
