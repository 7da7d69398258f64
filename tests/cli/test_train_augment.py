"""`samkit train --augment PRESET` reaches `TrainConfig.augment`."""

from __future__ import annotations

import pytest

from samkit.cli import build_parser
from samkit.cli.train import _train_config
from samkit.engine import TrainConfig


def _config(*extra: str) -> TrainConfig:
    args = build_parser().parse_args(
        ["train", "sam-mi", "--train", "t.yaml", "--out", "run", *extra]
    )
    return TrainConfig(**_train_config(args))


def test_augment_flag_sets_the_preset() -> None:
    assert _config().augment is None
    assert _config("--augment", "affine").augment == "affine"
    with pytest.raises(ValueError, match="augment must be None or one of"):
        _config("--augment", "rotate")
