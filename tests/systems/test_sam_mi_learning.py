"""SAM-MI learns on synthetic scenes (slow): the documented CPU run of examples/train_sam_mi.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samkit.engine.checkpoint import latest_checkpoint, list_checkpoints
from tests._examples import load_example


@pytest.mark.slow
def test_tiny_sam_mi_learns(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the documented run; fixes the float summation order
    metrics = load_example("train_sam_mi").main(
        ["--out", str(tmp_path), "--no-progress", "--eval-every", "0", "--seed", "0"]
    )
    # segmentation: at least 0.2 mIoU above predicting the majority class everywhere
    assert metrics["mIoU"] >= metrics["baseline"] + 0.2, metrics
    # TSPP: the target is >= 90% of the ground-truth segments larger than g_p grid cells with
    # a point; the engine run reaches 0.897 (104 of 116; docs/systems/sam-mi.md), so the target
    # is *not* met and what is asserted is what still holds ...
    assert metrics["segment_recall"] >= 0.85, metrics
    # ... with at most 1/10 of the 32 x 32 grid per image on average, the paper's measure of
    # sparsity (its Tables 5 and 6: 41 of 1024 points per image on average on ADE20K) ...
    assert metrics["points_per_image"] <= 0.1 * 32**2, metrics
    # ... and no image far above it: points are Bernoulli draws, so one image of the 24 may pass
    # 1/10 (the run's busiest image has 108 points, 0.105; docs/systems/sam-mi.md)
    assert metrics["max_grid_fraction"] <= 0.125, metrics


def test_example_checkpoint_and_resume(tmp_path: Path) -> None:
    """The example trains both stages through the engine and `--resume` extends the run."""
    ex = load_example("train_sam_mi")
    args = ["--out", str(tmp_path), "--no-progress", "--train-scenes", "8", "--val-scenes", "2"]
    args += ["--size", "64", "--batch-size", "2", "--steps1", "2", "--eval-every", "0"]
    first = ex.main([*args, "--steps2", "1"])
    assert first["stage"] == 2 and first["step"] == 3
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "step_000000003.pt"
    with pytest.raises(FileExistsError, match="resume"):  # never overwrites a run silently
        ex.main([*args, "--steps2", "1"])
    with pytest.warns(UserWarning, match="different configuration"):  # steps2 1 -> 2
        resumed = ex.main([*args, "--steps2", "2", "--resume"])
    assert resumed["stage"] == 2 and resumed["step"] == 4
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_000000004.pt"
    assert {"mIoU", "baseline", "points_per_image", "segment_recall"} <= set(resumed)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final"]["step"] == 4 and [r["step"] for r in saved["history"]] == [3, 4]
