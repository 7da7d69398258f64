"""examples/probe_features.py runs, and reads colour from every frozen backbone."""

from __future__ import annotations

from tests._examples import load_example


def test_colour_is_linearly_readable_from_frozen_features() -> None:
    args = ["--train-scenes", "48", "--val-scenes", "16", "--finetune-steps", "3"]
    results = load_example("probe_features").main(args)
    assert len(results) == 5  # four frozen backbones and the cell-trained CLIP
    for name, r in results.items():
        accuracy, chance = r["colour"]
        assert accuracy >= chance + 0.3, (name, r)
