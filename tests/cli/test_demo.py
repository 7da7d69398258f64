from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from samkit.cli import RANDOM_WEIGHTS_NOTE, UNTRAINED_HEADS_NOTE, build_parser, main


def test_demo_writes_images_and_timings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--num-scenes", "2", "--size", "64", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    # The default backbones are the shipped pretrained ones: no random-weights warning.
    assert UNTRAINED_HEADS_NOTE in printed and RANDOM_WEIGHTS_NOTE not in printed
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert set(pngs) == {
        "scenes.png",
        "sam_points.png",
        "clip_similarity.png",
        "ssp_sam.png",
        "sam_cp.png",
        "sam_mi.png",
    }
    for name in pngs:
        with Image.open(out / name) as im:
            assert im.mode == "RGB" and im.width > 0 and im.height > 0
    table = (out / "timings.md").read_text()
    assert UNTRAINED_HEADS_NOTE in table and RANDOM_WEIGHTS_NOTE not in table
    assert "| SAM | encode 2 images |" in table
    for system in ("SSP-SAM", "SAM-CP", "SAM-MI"):
        assert f"| {system} | whole step |" in table


def test_random_backbones_are_announced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--num-scenes", "1", "--size", "64", "--no-progress"]
    assert main([*args, "--sam-variant", "tiny", "--clip-model", "tiny"]) == 0
    assert RANDOM_WEIGHTS_NOTE in capsys.readouterr().out
    assert RANDOM_WEIGHTS_NOTE in (out / "timings.md").read_text()


def test_demo_panels_show_what_the_shipped_backbones_see(tmp_path: Path) -> None:
    """The SAM panel's masks match ground-truth objects: the demo shows segmentation, not noise."""
    import argparse

    import torch

    from samkit import _demo
    from samkit.pretrain.quality import centre_points, mask_iou
    from samkit.types import Prompts

    args = argparse.Namespace(
        out=tmp_path,
        sam_checkpoint=None,
        sam_variant=None,
        clip_checkpoint=None,
        clip_model=None,
        num_scenes=3,
        size=128,
        seed=0,
        device="cpu",
        no_progress=True,
    )
    ctx = _demo.DemoContext.create(args, lambda *a: None)
    sam = ctx.sam()
    assert sam.prompt_dim == 128  # tiny-synth
    hits = []
    with torch.no_grad():
        emb = sam.encode(ctx.images)
        for b, scene in enumerate(ctx.scenes):
            masks = scene.instance_masks
            pts = centre_points(masks)[None, :, None]
            pred = sam.predict(
                emb.select(slice(b, b + 1)),
                Prompts(points=pts, labels=torch.ones(1, masks.shape[0], 1)),
                multimask=True,
            )
            assert pred.logits is not None
            best = mask_iou(pred.logits[0] > 0, masks[:, None]).max(-1).values
            hits += best.tolist()
    assert sum(hits) / len(hits) > 0.7


def test_parser_requires_a_command() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_missing_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--out", str(tmp_path), "--num-scenes", "1", "--no-progress"]
    args += ["--sam-checkpoint", str(tmp_path / "nope.pth"), "--sam-variant", "tiny"]
    assert main(args) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_progress_goes_to_stderr_and_results_to_stdout(tmp_path: Path) -> None:
    """Piped stdout holds the results only; the progress bar is on stderr (issue #13)."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "samkit.cli", "demo", "--out", str(out), "--num-scenes", "1"],
        capture_output=True,  # bytes: text mode would turn the bar's carriage returns into "\n"
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=600,
    )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    assert "\r" not in stdout and "it/s" not in stdout and "s/it" not in stdout
    assert "| SSP-SAM | whole step |" in stdout
    assert f"wrote 6 images and timings.md to {out.resolve()}" in stdout
    assert "samkit demo: 100%" in stderr and "\r" in stderr
