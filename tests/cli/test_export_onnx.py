"""`samkit export-onnx`: writes the graphs and `onnx.json`, checks them, rejects bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samkit.cli import main


@pytest.mark.slow
def test_export_onnx_sam_writes_checked_graphs(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    assert main(["export-onnx", "sam", "--variant", "tiny", "--no-encoder", "--out", str(out)]) == 0
    report = json.loads((out / "onnx.json").read_text())
    assert report["opset"] == 18
    graph = report["graphs"]["sam_decoder"]
    assert (out / graph["file"]).is_file()
    assert graph["max_abs_diff"] <= 1e-4
    assert graph["inputs"][1] == ["point_coords", ["B", "K", "N", 2], "tensor(float)"]
    assert [o[0] for o in graph["outputs"]] == ["low_res_logits", "iou_scores"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ssp-sam"], "exactly one of --run RUN and --preset NAME"),
        (["ssp-sam", "--preset", "tiny", "--boxes"], "are for sam"),
        (["sam", "--preset", "tiny"], "--run and --preset are for ssp-sam"),
    ],
)
def test_export_onnx_rejects_mixed_options(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-onnx", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samkit export-onnx: error:") and message in err
    assert not (tmp_path / "x").exists()
