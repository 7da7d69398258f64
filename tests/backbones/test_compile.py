"""torch.compile on SAM's prompt + decoder path: no graph breaks, and the same numbers as eager.

`torch._dynamo.explain` counts the graph breaks of each public entry point of the prompt side
(`embed_prompts`, `decode`, `predict`, `predict_points`, `point_masks`) on the random `tiny`
preset and on the shipped `tiny-synth` weights; compiled outputs (backend `eager` for the tracing
alone, `aot_eager` for the autograd graph too) are compared with the eager call. Tolerance: float32
`atol=1e-5, rtol=1e-4` (`tests.conftest.TOLERANCES`); the `eager` backend reruns the same
kernels, so it matches exactly. Inductor (generated kernels, another float32 summation order) is
checked under `slow` with `atol=rtol=1e-4`: it takes minutes to compile here. See
`docs/performance/compile.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from samkit.backbones.sam import SamBackbone, build_sam_backbone
from samkit.modules.aggregation import point_masks
from samkit.types import ImageEmbedding, Prompts
from tests.conftest import TOLERANCES

TOL = TOLERANCES[torch.float32]


PRESETS = ["tiny", "tiny-synth"]
_BUILT: dict[str, tuple[SamBackbone, ImageEmbedding]] = {}


def _sam(preset: str) -> tuple[SamBackbone, ImageEmbedding]:
    """The backbone of a preset (built once per module) and the embedding of two images."""
    if preset not in _BUILT:
        torch.manual_seed(0)
        sam = build_sam_backbone(preset).eval()
        assert isinstance(sam, SamBackbone)
        with torch.no_grad():
            images = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(0))
            _BUILT[preset] = sam, sam.encode(images)
    return _BUILT[preset]


def _points(b: int, k: int, n: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(k)
    points = torch.rand(b, k, n, 2, generator=gen) * 96
    labels = torch.randint(-1, 2, (b, k, n), generator=gen).float()
    return points, labels


def _breaks(fn: Callable[..., Any], *args: Any) -> tuple[int, int, list[str]]:
    torch._dynamo.reset()
    ex = torch._dynamo.explain(fn)(*args)
    return ex.graph_count, ex.graph_break_count, [str(r.reason) for r in ex.break_reasons]


def _predict(sam: SamBackbone, emb: ImageEmbedding) -> tuple[Callable, tuple]:
    """`predict` with every prompt type (points with all labels, boxes, mask inputs), upsampled."""
    points, labels = _points(2, 5, 2)
    boxes = torch.tensor([4.0, 6.0, 60.0, 80.0]).repeat(2, 5, 1)
    h, w = sam.embedding_size
    masks = torch.randn(2, 5, 1, 4 * h, 4 * w, generator=torch.Generator().manual_seed(1))

    def predict(p: Tensor, lab: Tensor, bx: Tensor, m: Tensor) -> tuple[Tensor, ...]:
        out = sam.predict(emb, Prompts(points=p, labels=lab, boxes=bx, masks=m), multimask=True)
        assert out.logits is not None and out.tokens is not None
        return out.low_res_logits, out.iou_scores, out.logits, out.tokens

    return predict, (points, labels, boxes, masks)


def _point_masks(sam: SamBackbone, emb: ImageEmbedding, k: int = 5) -> tuple[Callable, tuple]:
    """SAM-MI's per-point masks: `predict_points` (embed + decode), best candidate, resampling."""
    points = _points(2, k)[0][:, :, 0]
    valid = torch.arange(k) != 2  # one padded point
    valid = valid.expand(2, -1)

    def masks_at_points(p: Tensor, v: Tensor) -> Tensor:
        return point_masks(sam, emb, p, v, size=(48, 64))

    return masks_at_points, (points, valid)


ENTRIES = {"predict": _predict, "point_masks": _point_masks}


def _counting_backend(graphs: list[torch.fx.GraphModule], inner: str = "eager") -> Callable:
    """A backend that records every graph it is given and runs it with `inner`."""
    from torch._dynamo.backends.registry import lookup_backend

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
        graphs.append(gm)
        return lookup_backend(inner)(gm, example_inputs)

    return backend


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("preset", PRESETS)
def test_no_graph_breaks(preset: str, entry: str) -> None:
    fn, args = ENTRIES[entry](*_sam(preset))
    with torch.no_grad():
        graphs, breaks, reasons = _breaks(fn, *args)
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_predict_equals_eager(preset: str) -> None:
    # aot_eager also runs AOTAutograd's functionalisation and decompositions
    fn, args = _predict(*_sam(preset))
    graphs: list[torch.fx.GraphModule] = []
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=_counting_backend(graphs, "aot_eager"), fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), fn(*args), **TOL)
    assert len(graphs) == 1


def test_compiled_point_masks_equal_eager() -> None:
    fn, args = _point_masks(*_sam("tiny"))
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    with torch.no_grad():
        got, want = compiled(*args), fn(*args)
    assert got.dtype == torch.bool and got[:, 2].sum() == 0  # the padded point
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_upstream_prompt_encoder_breaks() -> None:
    # why samkit embeds points itself: segment_anything's `_embed_points` indexes with boolean
    # masks (aten.nonzero), which splits the graph; samkit's torch.where version does not
    sam, _ = _sam("tiny")
    points, labels = _points(1, 1, 4)
    upstream = sam.prompt_encoder

    def ours(p: Tensor, lab: Tensor) -> tuple[Tensor, Tensor]:
        return sam.embed_prompts(Prompts(points=p, labels=lab))

    with torch.no_grad():
        _, theirs_breaks, _ = _breaks(
            lambda p, lab: upstream((p[0], lab[0]), None, None), points, labels
        )
        _, our_breaks, _ = _breaks(ours, points, labels)
        want = upstream((points[0], labels[0]), None, None)
        got = ours(points, labels)
    assert theirs_breaks > 0 and our_breaks == 0
    torch.testing.assert_close(got[0][0], want[0], **TOL)


def test_aot_eager_gradients() -> None:
    # SSP-SAM fine-tunes the mask decoder: the compiled backward must give the eager gradients
    sam, embedding = _sam("tiny")
    points, labels = _points(2, 3)
    decoder = list(sam.mask_decoder.parameters())

    def loss(p: Tensor, lab: Tensor) -> Tensor:
        out = sam.predict(embedding, Prompts(points=p, labels=lab), multimask=True)
        return out.low_res_logits.sigmoid().mean() + out.iou_scores.square().mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(loss(points, labels), decoder)
    got = torch.autograd.grad(compiled(points, labels), decoder)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_dynamic_prompt_count(entry: str) -> None:
    # K changes from call to call (TSPP's points): with dynamic=True one graph serves every K
    # (up to predict_points' batch_size, 64)
    sam, embedding = _sam("tiny")
    graphs: list[torch.fx.GraphModule] = []
    torch._dynamo.reset()
    if entry == "predict":

        def fn(p: Tensor, lab: Tensor, bx: Tensor) -> Tensor:
            prompts = Prompts(points=p, labels=lab, boxes=bx)
            return sam.predict(embedding, prompts, multimask=True).low_res_logits
    else:
        fn = _point_masks(sam, embedding)[0]
    compiled = torch.compile(fn, backend=_counting_backend(graphs), fullgraph=True, dynamic=True)
    with torch.no_grad():
        for k in (7, 3, 41):
            points, labels = _points(2, k)
            if entry == "predict":
                # no mask input: its convolutions bound B * K in a guard (torch's conv sizing)
                boxes = torch.tensor([4.0, 6.0, 60.0, 80.0]).repeat(2, k, 1)
                args: tuple = (points, labels, boxes)
            else:
                args = (points[:, :, 0], torch.ones(2, k, dtype=torch.bool))
            torch.testing.assert_close(compiled(*args), fn(*args), **TOL)
    assert len(graphs) == 1


@pytest.mark.slow
def test_inductor_equals_eager() -> None:
    sam, embedding = _sam("tiny-synth")
    points = _points(1, 41)[0][:, :, 0]
    emb = embedding.embeddings[:1]
    one = ImageEmbedding(emb, embedding.input_size, embedding.original_size)

    def predict_points(p: Tensor) -> tuple[Tensor, Tensor]:
        out = sam.predict_points(one, p, multimask=True)
        return out.low_res_logits, out.iou_scores

    torch._dynamo.reset()
    compiled = torch.compile(predict_points, fullgraph=True)
    with torch.no_grad():
        # generated kernels reorder float32 sums: up to 3.4e-5 on logits of magnitude ~1-10
        # in benchmarks/compile.py
        torch.testing.assert_close(compiled(points), predict_points(points), atol=1e-4, rtol=1e-4)
