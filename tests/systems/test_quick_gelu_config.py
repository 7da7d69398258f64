"""Every system's `quick_gelu` field reaches its CLIP backbone (issue #11 item 6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import open_clip
import pytest
from torch import nn

from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.ssp_sam import build_ssp_sam

BUILDERS: dict[str, Callable[..., Any]] = {
    "ssp_sam": lambda **kw: build_ssp_sam("tiny", **kw),
    "sam_cp": lambda **kw: build_sam_cp("tiny", build_proposer=False, **kw),
    "sam_mi": lambda **kw: build_sam_mi("tiny", **kw),
}


def _activations(model: Any) -> set[type]:
    """The activation types of every transformer MLP of both CLIP towers."""
    return {type(m.gelu) for name, m in model.clip.model.named_modules() if name.endswith(".mlp")}


@pytest.mark.parametrize("system", sorted(BUILDERS))
@pytest.mark.parametrize("quick", [None, True, False])
def test_quick_gelu_field_reaches_clip(system: str, quick: bool | None) -> None:
    model = BUILDERS[system](quick_gelu=quick)
    assert model.config.quick_gelu is quick
    # random weights carry no evidence, so None means GELU
    expected = open_clip.model.QuickGELU if quick else nn.GELU
    assert _activations(model) == {expected}
