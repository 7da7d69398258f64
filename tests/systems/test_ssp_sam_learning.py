from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_ssp_sam.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_ssp_sam", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_ssp_sam"] = module
    spec.loader.exec_module(module)
    return module


def test_example_checkpoint_and_resume(tmp_path: Path) -> None:
    main = _example().main
    args = ["--out", str(tmp_path), "--no-progress", "--train-scenes", "4", "--val-scenes", "2"]
    first = main([*args, "--steps", "2", "--eval-every", "2", "--batch-size", "2"])
    assert first["steps"] == 2 and len(first["history"]) == 1
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("sam.mask_decoder.") for k in weights)
    assert any(k.startswith("prompt_encoder.") for k in weights)
    assert not any(k.startswith(("clip.", "sam.image_encoder.")) for k in weights)
    second = main([*args, "--steps", "3", "--eval-every", "10", "--batch-size", "2", "--resume"])
    assert second["steps"] == 3
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["baselines"]) == {"empty", "union", "largest"}
    assert "ssp-sam" in saved["table"]


@pytest.mark.slow
def test_tiny_ssp_sam_learns_synthetic_gres(tmp_path: Path) -> None:
    """The documented run (docs/systems/ssp-sam.md): example defaults, training capped at 540 s.

    Measured (1500 steps, one thread): gIoU 0.478, cIoU 0.398, N-acc 0.867, T-acc 0.750 vs
    gIoU 0.250 / 0.430 / 0.397 for the always-empty / union / largest-object baselines (cIoU at
    most 0.344). The issue's gIoU target (best baseline + 0.2) is *not* reached; its N-acc target
    (>= 0.8) is. The assertions sit below the spread of the runs we made (final gIoU 0.42-0.48,
    N-acc 0.62-0.87; this test on one thread of a loaded machine, cut by the cap at step 1042:
    gIoU 0.414, cIoU 0.382, N-acc 0.617, T-acc 0.772, plural IoU 0.669) so that a learning
    regression fails while thread count and the time cap on a slower machine do not.
    """
    result = _example().main(["--out", str(tmp_path), "--no-progress", "--time-limit", "540"])
    metrics, base = result["metrics"], result["baselines"]
    assert metrics["giou"] >= base["empty"]["giou"] + 0.13, result["table"]
    assert metrics["ciou"] >= max(b["ciou"] for b in base.values()) - 0.02, result["table"]
    assert metrics["n_acc"] >= 0.5, result["table"]
    assert metrics["t_acc"] >= 0.6, result["table"]
    # plural expressions (several referents) are segmented well: masks, not just decisions
    assert result["by_kind"]["plural"]["iou"] >= 0.5, result["by_kind"]
