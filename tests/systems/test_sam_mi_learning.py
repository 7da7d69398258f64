"""SAM-MI learns on synthetic scenes (slow): the documented CPU run of examples/train_sam_mi.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._examples import load_example


@pytest.mark.slow
def test_tiny_sam_mi_learns(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the documented run; fixes the float summation order
    metrics = load_example("train_sam_mi").main(
        ["--out", str(tmp_path), "--no-progress", "--eval-every", "0", "--seed", "0"]
    )
    # segmentation: at least 0.2 mIoU above predicting the majority class everywhere
    assert metrics["miou"] >= metrics["baseline"] + 0.2, metrics
    # TSPP: >= 90% of the ground-truth segments larger than g_p grid cells get a point ...
    assert metrics["segment_recall"] >= 0.9, metrics
    # ... with at most 1/10 of the 32 x 32 grid per image
    assert metrics["max_grid_fraction"] <= 0.1, metrics


def test_example_checkpoint_and_resume(tmp_path: Path) -> None:
    ex = load_example("train_sam_mi")
    args = [
        "--out",
        str(tmp_path),
        "--no-progress",
        "--train-scenes",
        "8",
        "--val-scenes",
        "2",
        "--batch-size",
        "2",
        "--steps1",
        "2",
        "--steps2",
        "1",
        "--eval-every",
        "0",
    ]
    first = ex.main(args)
    assert (tmp_path / "last.safetensors").exists() and (tmp_path / "last_optim.pt").exists()
    assert first["stage"] == 2 and first["step"] == 1
    resumed = ex.main([*args[:-4], "--steps2", "2", "--eval-every", "0", "--resume"])
    assert resumed["stage"] == 2 and resumed["step"] == 2
    assert {"miou", "baseline", "points_per_image", "segment_recall"} <= set(resumed)
