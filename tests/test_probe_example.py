"""examples/probe_features.py runs, and reads colour from every frozen backbone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "probe_features.py"


def test_colour_is_linearly_readable_from_frozen_features() -> None:
    spec = importlib.util.spec_from_file_location("probe_features", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["probe_features"] = module
    spec.loader.exec_module(module)
    results = module.main(["--train-scenes", "48", "--val-scenes", "16"])
    assert len(results) == 4
    for name, r in results.items():
        accuracy, chance = r["colour"]
        assert accuracy >= chance + 0.3, (name, r)
