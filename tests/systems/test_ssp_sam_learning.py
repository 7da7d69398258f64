from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests._examples import load_example


def test_example_checkpoint_and_resume(tmp_path: Path) -> None:
    main = load_example("train_ssp_sam").main
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


def test_example_trains_the_clip_image_tower(tmp_path: Path) -> None:
    main = load_example("train_ssp_sam").main
    args = ["--out", str(tmp_path), "--no-progress", "--train-scenes", "4", "--val-scenes", "2"]
    args += ["--eval-every", "10", "--batch-size", "2", "--set", 'clip_trainable="visual"']
    main([*args, "--steps", "2"])
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("clip.model.visual.") for k in weights)
    assert not any(k.startswith("clip.model.transformer.") for k in weights)  # text: frozen
    assert main([*args, "--steps", "3", "--resume"])["steps"] == 3
    with pytest.raises(SystemExit, match="caches CLIP text states"):
        main([*args[:-1], 'clip_trainable="all"', "--steps", "1"])
    with pytest.raises(SystemExit, match="quote strings"):
        main([*args[:-1], "sam_variant=small", "--steps", "1"])


@pytest.mark.slow
def test_tiny_ssp_sam_learns_synthetic_gres(tmp_path: Path) -> None:
    """The documented run (docs/systems/ssp-sam.md): example defaults, training capped at 540 s.

    Measured (1500 steps, one thread): gIoU 0.478, cIoU 0.398, N-acc 0.867, T-acc 0.750 vs
    gIoU 0.250 / 0.430 / 0.397 for the always-empty / union / largest-object baselines (cIoU at
    most 0.344). Capped at 540 s on a loaded machine (1119 and 1142 steps, seeds 0 and 1): gIoU
    0.467 / 0.469, N-acc 0.867 both. The issue's gIoU target (best baseline + 0.2) is *not*
    reached.

    The cap cuts the step-based schedule short, so the example's cosine then follows the clock
    (`--time-limit`); before it did, a CI run stopped at step 1031 with the lr still high and the
    no-target decision flipped to "always a target" (N-acc 0.000). N-acc is asserted loosely.
    """
    result = load_example("train_ssp_sam").main(
        ["--out", str(tmp_path), "--no-progress", "--time-limit", "540"]
    )
    metrics, base = result["metrics"], result["baselines"]
    assert metrics["giou"] >= result["best_baseline_giou"] + 0.02, result["table"]
    assert metrics["ciou"] >= max(b["ciou"] for b in base.values()) - 0.02, result["table"]
    assert metrics["t_acc"] >= 0.6, result["table"]
    assert metrics["n_acc"] >= 0.6, result["table"]
    # plural expressions (several referents) are segmented well: masks, not just decisions
    assert result["by_kind"]["plural"]["iou"] >= 0.5, result["by_kind"]
    # unique expressions: the mask finds the referent whenever a target is declared
    unique = result["by_kind"]["unique"]
    assert unique["iou"] >= 0.4 * unique["has_target_rate"], result["by_kind"]
