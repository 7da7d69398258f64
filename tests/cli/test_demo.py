from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from samkit.cli import RANDOM_WEIGHTS_NOTE, build_parser, main


def test_demo_writes_images_and_timings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert (
        main(["demo", "--out", str(out), "--num-scenes", "2", "--size", "64", "--no-progress"]) == 0
    )
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "--sam-checkpoint" in printed
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
    assert RANDOM_WEIGHTS_NOTE in table
    assert "| SAM | encode 2 images |" in table
    for system in ("SSP-SAM", "SAM-CP", "SAM-MI"):
        assert f"| {system} | whole step |" in table


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
