"""SAM-CP learns to merge oracle-split ground-truth patches back into panoptic segments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._examples import load_example


def test_save_and_resume(tmp_path: Path) -> None:
    train = load_example("train_sam_cp")
    common = ["--eval-scenes", "2", "--size", "64", "--no-progress", "--out", str(tmp_path)]
    train.main(["--steps", "2", "--eval-every", "0", *common])
    assert (tmp_path / "last.safetensors").exists() and (tmp_path / "last_state.pt").exists()
    out = train.main(["--steps", "3", "--eval-every", "0", "--resume", *common])
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history[-1]["step"] == 3 and 0.0 <= out["pq"] <= 1.0
    with pytest.raises(FileNotFoundError, match="resume"):
        train.main(["--steps", "1", "--resume", "--no-progress"])


def test_sam_patch_mode_trains_and_evaluates() -> None:
    train = load_example("train_sam_cp")
    out = train.main(
        ["--patches", "sam", "--steps", "2", "--eval-every", "0", "--eval-scenes", "2",
         "--size", "64", "--no-progress"]
    )  # fmt: skip
    assert 0.0 <= out["pq"] <= 1.0 and 0.0 <= out["miou"] <= 1.0
    assert "baseline_pq" not in out  # the unmerged baseline needs oracle parts


@pytest.mark.slow
def test_tiny_sam_cp_merges_oracle_patches() -> None:
    train = load_example("train_sam_cp")
    metrics = train.main(
        [
            "--steps", "1500",
            "--eval-every", "0",
            "--eval-scenes", "32",
            "--seed", "0",
            "--threads", "1",
            "--no-progress",
        ]
    )  # fmt: skip
    assert metrics["pq"] >= 0.5
    assert metrics["pq"] > metrics["baseline_pq"] + 0.15
    assert metrics["miou"] > 0.4
