"""SAM-CP learns to merge oracle-split ground-truth patches back into panoptic segments."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_sam_cp.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_sam_cp", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_sam_cp"] = module
    spec.loader.exec_module(module)
    return module


def test_save_and_resume(tmp_path: Path) -> None:
    train = _example()
    common = ["--eval-scenes", "2", "--size", "64", "--no-progress", "--out", str(tmp_path)]
    train.main(["--steps", "2", "--eval-every", "0", *common])
    assert (tmp_path / "last.safetensors").exists() and (tmp_path / "last_state.pt").exists()
    out = train.main(["--steps", "3", "--eval-every", "0", "--resume", *common])
    history = json.loads((tmp_path / "metrics.json").read_text())
    assert history[-1]["step"] == 3 and 0.0 <= out["pq"] <= 1.0
    with pytest.raises(FileNotFoundError, match="resume"):
        train.main(["--steps", "1", "--resume", "--no-progress"])


def test_sam_patch_mode_trains_and_evaluates() -> None:
    train = _example()
    out = train.main(
        ["--patches", "sam", "--steps", "2", "--eval-every", "0", "--eval-scenes", "2",
         "--size", "64", "--no-progress"]
    )  # fmt: skip
    assert 0.0 <= out["pq"] <= 1.0 and 0.0 <= out["miou"] <= 1.0
    assert "baseline_pq" not in out  # the unmerged baseline needs oracle parts


@pytest.mark.slow
def test_tiny_sam_cp_merges_oracle_patches() -> None:
    train = _example()
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
