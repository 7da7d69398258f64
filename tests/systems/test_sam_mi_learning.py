"""SAM-MI learns on synthetic scenes (slow): the documented CPU run of examples/train_sam_mi.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from samkit.engine.checkpoint import latest_checkpoint, list_checkpoints
from tests._examples import load_example


@pytest.mark.slow
def test_tiny_synth_sam_mi_learns(tmp_path: Path) -> None:
    """SAM-MI's targets on the shipped `tiny-synth` backbones, in a shortened run.

    The documented runs (docs/systems/sam-mi.md) train 400 + 400 steps and meet every target on
    seeds 0 to 3; this check stops stage 2 after 200 steps to fit CI's budget (the rate is
    constant, so these are the documented run's first 600 steps: seed 0 reaches mIoU 0.724,
    48.5 points per image, recall 0.914 = 106 of 116 there).
    """
    torch.set_num_threads(1)  # the documented run; fixes the float summation order
    metrics = load_example("train_sam_mi").main(
        ["--out", str(tmp_path), "--no-progress", "--eval-every", "0", "--seed", "0"]
        + ["--preset", "tiny-synth", "--steps2", "200"]
    )
    # segmentation: at least 0.2 mIoU above predicting the majority class everywhere
    assert metrics["mIoU"] >= metrics["baseline"] + 0.2, metrics
    # TSPP: >= 90% of the ground-truth segments larger than g_p grid cells get a point ...
    assert metrics["segment_recall"] >= 0.9, metrics
    # ... with at most 1/10 of the 32 x 32 grid per image on average, the paper's measure of
    # sparsity (its Tables 5 and 6: 41 of 1024 points per image on average on ADE20K) ...
    assert metrics["points_per_image"] <= 0.1 * 32**2, metrics
    # ... and no image above it (the run's busiest image: 0.068 of the grid)
    assert metrics["max_grid_fraction"] <= 0.1, metrics


def test_example_checkpoint_and_resume(tmp_path: Path) -> None:
    """The example trains both stages through the engine and `--resume` extends the run."""
    ex = load_example("train_sam_mi")
    args = ["--out", str(tmp_path), "--no-progress", "--train-scenes", "8", "--val-scenes", "2"]
    args += ["--size", "64", "--batch-size", "2", "--steps1", "2", "--eval-every", "0"]
    args += ["--preset", "tiny"]
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
