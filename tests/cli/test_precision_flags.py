"""`--precision` reaches `TrainConfig.precision` (train) and the system's config (eval, predict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from samkit.cli import build_parser
from samkit.cli._run import RunInfo
from samkit.cli.predict import load_run
from samkit.cli.train import _train_config
from samkit.engine import TrainConfig
from samkit.systems import build_ssp_sam


def _config(*extra: str) -> TrainConfig:
    args = build_parser().parse_args(
        ["train", "sam-mi", "--train", "t.yaml", "--out", "run", *extra]
    )
    return TrainConfig(**_train_config(args))


def test_train_precision_flag_and_its_deprecated_alias() -> None:
    assert _config().precision == "fp32"
    assert _config("--precision", "bf16").precision == "bf16"
    assert _config("--bf16").precision == "bf16"
    assert _config("--bf16", "--precision", "fp32").precision == "fp32"  # the new flag wins
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["train", "sam-mi", "--train", "t", "--out", "r", "--precision", "fp16"]
        )


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_parse_precision(command: str) -> None:
    extra = ["--data", "d.yaml"] if command == "eval" else ["x.png", "--out", "o"]
    args = build_parser().parse_args([command, "run", *extra, "--precision", "bf16"])
    assert args.precision == "bf16"
    assert build_parser().parse_args([command, "run", *extra]).precision is None


def test_load_run_sets_the_system_precision(tmp_path: Path) -> None:
    build_ssp_sam("tiny").save_pretrained(tmp_path / "model")
    info = RunInfo(system="ssp_sam")
    assert load_run(tmp_path, info).config.precision == "fp32"  # as saved
    assert load_run(tmp_path, info, precision="bf16").config.precision == "bf16"
    with pytest.raises(ValueError, match="--precision: expected one of"):
        load_run(tmp_path, info, precision="fp16")
