"""torch.compile on SSP-SAM's forward, given pre-tokenised expressions.

The tokenizer is Python string code and stays outside the compiled function
(`model.tokenize(expressions)` eagerly, then `compiled(images, tokens=tokens)`). The linguistic
adapter's BiGRU needs `torch._dynamo.config.allow_rnn = True` (dynamo refuses RNN modules
otherwise). Tolerance: float32 `atol=1e-5, rtol=1e-4` (`tests.conftest.TOLERANCES`). See
`docs/performance/compile.md`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from samkit.systems.ssp_sam import REFERENCE_QUIRKS, SSPSAM, build_ssp_sam
from tests.conftest import TOLERANCES

TOL = TOLERANCES[torch.float32]
TEXTS = ["the red circle", "all squares on the left"]


def _model(**overrides: Any) -> SSPSAM:
    torch.manual_seed(0)
    return build_ssp_sam("tiny", **overrides).eval()


def _inputs(model: SSPSAM) -> tuple[Tensor, Tensor]:
    images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    return images, model.tokenize(TEXTS)


def _outputs(model: SSPSAM, images: Tensor, tokens: Tensor) -> tuple[Tensor, ...]:
    out = model(images, tokens=tokens, upsample=True)
    assert out.logits is not None
    return out.low_res_logits, out.iou_scores, out.boxes, out.has_target, out.prompts, out.logits


def test_forward_no_graph_breaks() -> None:
    model = _model()
    images, tokens = _inputs(model)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=True):
        ex = torch._dynamo.explain(lambda i, t: _outputs(model, i, t))(images, tokens)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), ex.break_reasons


@pytest.mark.parametrize(
    ("overrides", "backend"),
    [
        # AOTAutograd's functionalisation and decompositions take minutes to trace here
        pytest.param({}, "aot_eager", marks=pytest.mark.slow),
        ({**REFERENCE_QUIRKS, "target_head": True}, "eager"),
    ],
    ids=["default-aot_eager", "reference_quirks-target_head-eager"],
)
def test_compiled_forward_equals_eager(overrides: dict[str, Any], backend: str) -> None:
    model = _model(**overrides)
    images, tokens = _inputs(model)
    torch._dynamo.reset()
    with torch.no_grad(), torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(
            lambda i, t: _outputs(model, i, t), backend=backend, fullgraph=True
        )
        got = compiled(images, tokens)
        want = _outputs(model, images, tokens)
    torch.testing.assert_close(got, want, **TOL)


def test_compiled_text_encoding_skips_decoding() -> None:
    # decoding tokens back to strings reads their values: skipped while tracing, kept in eager
    model = _model()
    tokens = model.tokenize(TEXTS)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: model.encode_text(tokens=t), backend="eager", fullgraph=True)
    with torch.no_grad():
        got, want = compiled(tokens), model.encode_text(tokens=tokens)
    assert got.texts == ["", ""]
    assert [t.rstrip(" .") for t in want.texts] == TEXTS
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=0, rtol=0)
    torch.testing.assert_close(got.token_states, want.token_states, atol=0, rtol=0)
