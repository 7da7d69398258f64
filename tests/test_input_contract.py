"""The input contract of every public entry point (issue #11 item 5), swept in one place.

Each entry point is ONE `EntryPoint(...)` line in `ENTRY_POINTS`: how to build valid inputs
(`B = 2` unless stated), how to call it, and which arguments play which role. The sweep then
checks, wherever a role is present:

* `images`: uint8 images give the result of `uint8 / 255`; float images above 1, below 0, NaN or
  Inf are a `ValueError` that starts with the argument's name.
* `floats` (and `images`): float64 / float16 / bfloat16 inputs give the float32 result, to the
  input dtype's precision (`DTYPE_TOL`), never a dtype error from inside torch.
* `batch` (and `images`): `B = 0` (every batched argument sliced to `[:0]`) returns outputs of the
  documented shapes: the `B = 2` shapes with the batch axis 0 (only the rank and the empty batch
  axis for `ragged` outputs, whose other sizes depend on the data); losses (`scalar`) give a
  finite 0; per-image result lists (`listed`) are empty.
* `classes`: one `str` equals a one-element list; no class (`[]`) is a `ValueError` naming it.
* `invalid`: the entry point's own invalid inputs (labels, non-binary masks, grid sizes,
  probabilities, H x W mismatches, `T = 0` tensors, ...) -> `ValueError` matching a pattern.

`pending` marks cases that still fail on this branch because another room owns the code:
`xfail(strict=False)` with the room's name, to be removed once that room's contract is merged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from samkit.types import ImageEmbedding, Prompts, TSPPOutput

Inputs = dict[str, Any]

DTYPE_TOL: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"atol": 1e-4, "rtol": 1e-4},
    torch.float16: {"atol": 3e-2, "rtol": 3e-2},
    torch.bfloat16: {"atol": 1.5e-1, "rtol": 1e-1},
}


@dataclass(frozen=True)
class Invalid:
    """One invalid input: `change` edits valid inputs, the call must raise `ValueError(match)`."""

    id: str
    change: Callable[[Inputs], Inputs]
    match: str


@dataclass(frozen=True)
class EntryPoint:
    """A public entry point and the roles of its arguments (see the module docstring)."""

    name: str
    call: Callable[..., Any]
    inputs: Callable[[], Inputs]
    images: str | None = None
    floats: tuple[str, ...] = ()
    batch: tuple[str, ...] = ()
    classes: str | None = None
    invalid: tuple[Invalid, ...] = ()
    scalar: bool = False
    ragged: bool = False
    listed: bool = False  # the output is a list with one result per image
    batch_axis: int = 0
    tol: float = 1.0  # scales DTYPE_TOL for deep networks with random weights
    pending: Mapping[str, str] = field(default_factory=dict)  # case -> room that owns the fix


def _with(**values: Any) -> Callable[[Inputs], Inputs]:
    """An `Invalid.change` that replaces some inputs."""
    return lambda inputs: {**inputs, **values}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand(*shape: int, seed: int = 0) -> Tensor:
    return torch.rand(*shape, generator=_gen(seed))


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _binary(*shape: int, seed: int = 0) -> Tensor:
    return _rand(*shape, seed=seed) > 0.5


def _labels(*shape: int, num_classes: int, seed: int = 0) -> Tensor:
    return torch.randint(0, num_classes, shape, generator=_gen(seed))


# ---------------------------------------------------------------------- models (built once)


@functools.cache
def _sam() -> Any:
    from samkit.backbones.sam import build_sam_backbone

    torch.manual_seed(0)
    return build_sam_backbone("tiny").eval()


@functools.cache
def _ssp() -> Any:
    from samkit.systems.ssp_sam import build_ssp_sam

    torch.manual_seed(0)
    return build_ssp_sam("tiny").eval()


@functools.cache
def _sammi() -> Any:
    from samkit.systems.sam_mi import build_sam_mi

    torch.manual_seed(0)
    return build_sam_mi("tiny", sampling="deterministic", grid=8).eval()


@functools.cache
def _samcp() -> Any:
    from samkit.systems.sam_cp import build_sam_cp

    torch.manual_seed(0)
    return build_sam_cp("tiny", build_proposer=False).eval()


@functools.cache
def _module(name: str) -> Any:
    """Small random-weight modules, in eval mode (dropout off)."""
    from samkit.modules import (
        cost_aggregation,
        cost_decoder,
        injection,
        language,
        prompting,
        tspp,
        visual_adapter,
    )

    torch.manual_seed(0)
    build: dict[str, Callable[[], Any]] = {
        "tspp": lambda: tspp.TextGuidedSparsePointPrompter(dim=16, num_heads=2, grid=8),
        "fusion": lambda: prompting.TanhFusion(dim=8, out_dim=4),
        "ssp_encoder": lambda: prompting.SemanticSpatialPromptEncoder(
            dim=8, num_prompts=3, num_tokens=4, depth=1, num_heads=2, mlp_dim=16
        ),
        "low": lambda: injection.LowFrequencyInjection(dim=16, num_heads=2),
        "high": lambda: injection.HighFrequencyInjection(dim=8, hidden_dim=4),
        "dmi": lambda: injection.DecoupledMaskInjection(
            low=injection.LowFrequencyInjection(dim=16, num_heads=2),
            high=[injection.HighFrequencyInjection(dim=8, hidden_dim=4)],
        ),
        "vad": lambda: visual_adapter.VisualAttentionAdapter(visual_dim=12, dim=8, num_heads=2),
        "lad": lambda: language.LinguisticAttentionAdapter(text_dim=16, dim=8),
        "cost_embedding": lambda: cost_aggregation.CostEmbedding(dim=16),
        "aggregator": lambda: cost_aggregation.CostAggregator(
            feature_dim=8,
            vision_width=12,
            dim=16,
            num_heads=2,
            window_size=4,
            guidance_dim=8,
            text_guidance_dim=8,
            decoder_dims=(8, 8),
            tap_dims=(8, 8),
            decoder_guidance_dims=(4, 4),
            pad_len=0,
        ),
        "decoder": lambda: cost_decoder.UpsamplingDecoder(
            dim=16, dims=(8, 4), guidance_dims=(4, 2)
        ),
    }
    return build[name]().eval()


# ---------------------------------------------------------------------- calls


def _embedding(embeddings: Tensor) -> ImageEmbedding:
    return ImageEmbedding(embeddings, (128, 96), (128, 96))


def _sam_predict(embeddings: Tensor, points: Tensor, labels: Tensor) -> Any:
    prompts = Prompts(points=points, labels=labels)
    return _sam().predict(_embedding(embeddings), prompts, multimask=True)


def _sam_forward(images: Tensor, points: Tensor, labels: Tensor) -> Any:
    return _sam()(images, Prompts(points=points, labels=labels), multimask=True)


def _point_masks(embeddings: Tensor, points: Tensor, valid: Tensor) -> Tensor:
    from samkit.modules.aggregation import point_masks

    return point_masks(_sam(), _embedding(embeddings), points, valid, size=(24, 20))


def _tspp_loss(prob: Tensor, mask_logits: Tensor, prob_targets: Tensor, labels: Tensor) -> Tensor:
    from samkit.losses.sam_mi import tspp_loss

    out = TSPPOutput(
        prob, mask_logits.new_zeros(prob.shape[0], 2, 4, 4), mask_logits, mask_logits > 0
    )
    return tspp_loss(out, prob_targets, labels)


def _sam_mi_loss(logits: Tensor, prob: Tensor, mask_logits: Tensor, labels: Tensor) -> Tensor:
    from samkit.losses.sam_mi import SAMMILoss
    from samkit.types import SAMMIOutput

    b = logits.shape[0]
    tspp = TSPPOutput(prob, mask_logits.new_zeros(b, 2, 4, 4), mask_logits, mask_logits > 0)
    none = torch.zeros(b, 0, dtype=torch.bool)
    out = SAMMIOutput(
        logits,
        torch.zeros(b, 0, 2),
        none,
        torch.zeros(b, 0, 8, 8, dtype=torch.bool),
        torch.zeros(b, 0, 8, 8, dtype=torch.bool),
        none,
        tspp,
    )
    return SAMMILoss(g_p=1.0)(out, labels, stage=2)


def _samcp_patches(images: Tensor) -> list[Any]:
    from samkit.proposals import patches_from_masks

    b, _, h, w = images.shape
    out = []
    for i in range(b):
        masks = torch.zeros(3 + i, h, w, dtype=torch.bool)
        for k in range(3 + i):
            masks[k, :, k * 8 : k * 8 + 8] = True
        out.append(patches_from_masks(masks))
    return out


def _m(name: str) -> Any:
    """A callable `module(name)` for lambdas (keeps each registry entry on one line)."""
    return _module(name)


# ---------------------------------------------------------------------- the registry

_NAN = float("nan")


def _fn(path: str) -> Callable[..., Any]:
    """`_fn("samkit.modules.tspp:tspp_targets")`: a lazily imported function."""
    module, name = path.split(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


T = "samkit.modules.tspp"
AGG = "samkit.modules.aggregation"
COST = "samkit.modules.cost_aggregation"
INJ = "samkit.modules.injection"
VAD = "samkit.modules.visual_adapter"
SEG = "samkit.losses.segmentation"
BOX = "samkit.losses.box"
REF = "samkit.losses.referring"
SMI = "samkit.losses.sam_mi"

_LABEL_2 = Invalid(
    "label_2",
    _with(labels=torch.full((2, 3, 1), 2.0)),
    r"^prompts\.labels: expected SAM point labels in \{-1, 0, 1\}",
)
_PTS = {"points": _rand(2, 3, 1, 2) * 90, "labels": torch.ones(2, 3, 1)}

ENTRY_POINTS: list[EntryPoint] = [
    # --- SAM backbone
    EntryPoint(
        "SamBackbone.encode",
        lambda images: _sam().encode(images),
        lambda: {"images": _rand(2, 3, 40, 56)},
        images="images",
        tol=3.0,
    ),
    EntryPoint(
        "SamBackbone.preprocess",
        lambda images: _sam().preprocess(images),
        lambda: {"images": _rand(2, 3, 40, 56)},
        images="images",
    ),
    EntryPoint(
        "SamBackbone.forward",
        _sam_forward,
        lambda: {"images": _rand(2, 3, 40, 56), **_PTS},
        images="images",
        floats=("points",),
        batch=("points", "labels"),
        invalid=(_LABEL_2,),
        tol=3.0,
    ),
    EntryPoint(
        "SamBackbone.predict",
        _sam_predict,
        lambda: {"embeddings": _randn(2, 32, 16, 16), **_PTS},
        floats=("embeddings", "points"),
        batch=("embeddings", "points", "labels"),
        invalid=(_LABEL_2,),
        tol=3.0,
    ),
    EntryPoint(
        "SamBackbone.predict_points",
        lambda embeddings, points, labels, batch_size=2: _sam().predict_points(
            _embedding(embeddings), points, labels, batch_size=batch_size
        ),
        lambda: {
            "embeddings": _randn(2, 32, 16, 16),
            "points": _rand(2, 5, 2) * 90,
            "labels": torch.ones(2, 5),
        },
        floats=("embeddings", "points"),
        batch=("embeddings", "points", "labels"),
        invalid=(
            Invalid(
                "label_3",
                _with(labels=torch.full((2, 5), 3)),
                r"^labels: expected SAM point labels",
            ),
            Invalid(
                "batch_size_0", _with(batch_size=0), r"^batch_size: expected an int >= 1, got 0"
            ),
        ),
        tol=3.0,
    ),
    # --- SSP-SAM (one expression per image: B = 1 so that one str is a valid batch)
    EntryPoint(
        "SSPSAM.forward",
        lambda images, expressions: _ssp()(images, expressions, upsample=True),
        lambda: {"images": _rand(1, 3, 96, 128), "expressions": ["the red circle"]},
        images="images",
        batch=("expressions",),
        classes="expressions",
        tol=5.0,
    ),
    EntryPoint(
        "SSPSAM.encode_clip",
        lambda images: _ssp().encode_clip(images),
        lambda: {"images": _rand(2, 3, 96, 128)},
        images="images",
        tol=3.0,
    ),
    # --- SAM-MI
    EntryPoint(
        "SAMMI.forward",
        lambda images, class_names: _sammi()(images, class_names),
        lambda: {"images": _rand(2, 3, 64, 64), "class_names": ["a", "b"]},
        images="images",
        classes="class_names",
        ragged=True,
        tol=5.0,
    ),
    EntryPoint(
        "SAMMI.prompter",
        lambda images, class_names: _sammi().prompter(images, class_names),
        lambda: {"images": _rand(2, 3, 64, 64), "class_names": ["a", "b"]},
        images="images",
        classes="class_names",
        tol=3.0,
    ),
    EntryPoint(
        "SAMMI.encode_text",
        lambda class_names: _sammi().encode_text(class_names),
        lambda: {"class_names": ["a", "b"]},
        classes="class_names",
    ),
    # --- TSPP
    EntryPoint(
        "TextGuidedSparsePointPrompter",
        lambda cost: _m("tspp")(cost),
        lambda: {"cost": _randn(2, 3, 6, 6)},
        floats=("cost",),
        batch=("cost",),
        invalid=(
            Invalid(
                "T_0",
                _with(cost=torch.zeros(2, 0, 6, 6)),
                r"^cost: expected at least one class \(T >= 1\)",
            ),
        ),
    ),
    EntryPoint(
        "tspp_targets",
        lambda gt_masks, grid=8: _fn(f"{T}:tspp_targets")(gt_masks, grid=grid),
        lambda: {"gt_masks": _binary(2, 2, 32, 32).float()},
        floats=("gt_masks",),
        batch=("gt_masks",),
        invalid=(
            Invalid(
                "non_binary",
                _with(gt_masks=torch.full((2, 2, 32, 32), 0.5)),
                r"^gt_masks: expected a binary mask",
            ),
            Invalid("grid_0", _with(grid=0), r"^grid: expected an int >= 1, got 0"),
        ),
    ),
    EntryPoint(
        "sample_points",
        lambda prob: _fn(f"{T}:sample_points")(prob, (64, 64), deterministic=True),
        lambda: {"prob": _rand(2, 4, 4)},
        floats=("prob",),
        batch=("prob",),
        ragged=True,
        invalid=(
            Invalid(
                "prob_1.5",
                _with(prob=torch.full((2, 4, 4), 1.5)),
                r"^prob: expected probabilities in \[0, 1\]",
            ),
            Invalid(
                "prob_nan",
                _with(prob=torch.full((2, 4, 4), _NAN)),
                r"^prob: expected probabilities",
            ),
        ),
    ),
    EntryPoint(
        "expected_points",
        _fn(f"{T}:expected_points"),
        lambda: {"prob": _rand(2, 4, 4)},
        floats=("prob",),
        batch=("prob",),
        invalid=(
            Invalid(
                "prob_-1",
                _with(prob=torch.full((2, 4, 4), -1.0)),
                r"^prob: expected probabilities in \[0, 1\]",
            ),
        ),
    ),
    EntryPoint(
        "grid_points",
        lambda grid=4: _fn(f"{T}:grid_points")(grid, (64, 64)),
        lambda: {},
        invalid=(
            Invalid("grid_0", _with(grid=0), r"^grid: expected an int >= 1, got 0"),
            Invalid("grid_-3", _with(grid=-3), r"^grid: expected an int >= 1, got -3"),
        ),
    ),
    EntryPoint(
        "masks_from_labels",
        lambda labels, num_classes=3: _fn(f"{T}:masks_from_labels")(labels, num_classes),
        lambda: {"labels": _labels(2, 8, 8, num_classes=3)},
        batch=("labels",),
        invalid=(
            Invalid("T_0", _with(num_classes=0), r"^num_classes: expected an int >= 1, got 0"),
        ),
    ),
    # --- SMAgg
    EntryPoint(
        "ShallowMaskAggregator",
        lambda sam_masks, text_masks: _fn(f"{AGG}:ShallowMaskAggregator")()(sam_masks, text_masks),
        lambda: {"sam_masks": _binary(2, 4, 16, 16), "text_masks": _binary(2, 3, 4, 4, seed=1)},
        batch=("sam_masks", "text_masks"),
        ragged=True,
        invalid=(
            Invalid(
                "hw_mismatch",
                _with(text_masks=torch.ones(2, 3, 32, 4, dtype=torch.bool)),
                r"^text_masks: expected a grid no finer than sam_masks'",
            ),
            Invalid(
                "non_binary",
                _with(sam_masks=torch.full((2, 4, 16, 16), 0.5)),
                r"^sam_masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "shallow_mask_aggregation",
        lambda sam_masks, text_masks, alpha=0.5: _fn(f"{AGG}:shallow_mask_aggregation")(
            sam_masks, text_masks, alpha=alpha
        ),
        lambda: {"sam_masks": _binary(4, 16, 16), "text_masks": _binary(3, 4, 4, seed=1)},
        invalid=(
            Invalid("alpha_2", _with(alpha=2.0), r"^alpha: expected a number in \[0, 1\]"),
            Invalid(
                "non_binary_text",
                _with(text_masks=torch.full((3, 4, 4), 0.2)),
                r"^text_masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "pad_masks",
        lambda masks: _fn(f"{AGG}:pad_masks")(masks),
        lambda: {"masks": [_binary(2, 8, 8), _binary(1, 8, 8, seed=1)]},
        invalid=(
            Invalid(
                "hw_mismatch",
                _with(masks=[_binary(2, 8, 8), _binary(1, 8, 6)]),
                r"^masks\[1\]: expected shape \(N, H, W\) with W=8",
            ),
        ),
    ),
    EntryPoint(
        "point_masks",
        _point_masks,
        lambda: {
            "embeddings": _randn(2, 32, 16, 16),
            "points": _rand(2, 3, 2) * 90,
            "valid": torch.ones(2, 3, dtype=torch.bool),
        },
        floats=("embeddings", "points"),
        batch=("embeddings", "points", "valid"),
        tol=3.0,
    ),
    # --- prompting, injection, adapters
    EntryPoint(
        "TanhFusion",
        lambda visual, sentence: _m("fusion")(visual, sentence),
        lambda: {"visual": _randn(2, 9, 8), "sentence": _randn(2, 8, seed=1)},
        floats=("visual", "sentence"),
        batch=("visual", "sentence"),
    ),
    EntryPoint(
        "SemanticSpatialPromptEncoder",
        lambda tokens: _m("ssp_encoder")(tokens),
        lambda: {"tokens": _randn(2, 4, 8)},
        floats=("tokens",),
        batch=("tokens",),
    ),
    EntryPoint(
        "LowFrequencyInjection",
        lambda features, masks: _m("low")(features, masks),
        lambda: {"features": _randn(2, 16, 8, 8), "masks": _binary(2, 3, 32, 32)},
        floats=("features",),
        batch=("features", "masks"),
        invalid=(
            Invalid(
                "non_binary",
                _with(masks=torch.full((2, 3, 32, 32), 0.5)),
                r"^masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "HighFrequencyInjection",
        lambda guidance, masks: _m("high")(guidance, masks),
        lambda: {"guidance": _randn(2, 8, 16, 16), "masks": _binary(2, 3, 32, 32)},
        floats=("guidance",),
        batch=("guidance", "masks"),
        invalid=(
            Invalid(
                "non_binary",
                _with(masks=torch.full((2, 3, 32, 32), 2.0)),
                r"^masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "DecoupledMaskInjection",
        lambda features, guidance, masks: _m("dmi")(features, [guidance], masks),
        lambda: {
            "features": _randn(2, 16, 8, 8),
            "guidance": _randn(2, 8, 16, 16, seed=1),
            "masks": _binary(2, 3, 32, 32),
        },
        floats=("features", "guidance"),
        batch=("features", "guidance", "masks"),
    ),
    EntryPoint(
        "resize_masks",
        lambda masks: _fn(f"{INJ}:resize_masks")(masks, (4, 4)),
        lambda: {"masks": _rand(2, 3, 16, 16)},
        floats=("masks",),
        batch=("masks",),
        invalid=(
            Invalid(
                "above_1",
                _with(masks=torch.full((2, 3, 16, 16), 3.0)),
                r"^masks: expected probabilities in \[0, 1\]",
            ),
        ),
    ),
    EntryPoint(
        "VisualAttentionAdapter",
        lambda patches, similarity, words, padding_mask: _m("vad")(
            patches, similarity, words, padding_mask
        ),
        lambda: {
            "patches": _randn(2, 9, 12),
            "similarity": _rand(2, 9),
            "words": _randn(2, 5, 8, seed=1),
            "padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2]),
        },
        floats=("patches", "similarity", "words"),
        batch=("patches", "similarity", "words", "padding_mask"),
        invalid=(
            Invalid(
                "non_binary",
                _with(padding_mask=torch.full((2, 5), 0.5)),
                r"^padding_mask: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "LinguisticAttentionAdapter",
        lambda word_states, padding_mask: _m("lad")(word_states, padding_mask),
        lambda: {
            "word_states": _randn(2, 6, 16),
            "padding_mask": torch.tensor([[False] * 6, [False] * 4 + [True] * 2]),
        },
        floats=("word_states",),
        batch=("word_states", "padding_mask"),
        invalid=(
            Invalid(
                "non_binary",
                _with(padding_mask=torch.full((2, 6), 3)),
                r"^padding_mask: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "letterbox",
        lambda images, size=32: _fn(f"{VAD}:letterbox")(images, size=size),
        lambda: {"images": _rand(2, 3, 40, 24)},
        images="images",
        invalid=(Invalid("size_0", _with(size=0), r"^size: expected an int >= 1, got 0"),),
    ),
    EntryPoint(
        "clip_patch_tokens",
        lambda features, cls: _fn(f"{VAD}:clip_patch_tokens")(features, cls, axis="token"),
        lambda: {"features": _randn(2, 4, 3, 5), "cls": _randn(2, 4, seed=1)},
        floats=("features", "cls"),
        batch=("features", "cls"),
    ),
    # --- cost aggregation
    EntryPoint(
        "cost_volume",
        _fn(f"{COST}:cost_volume"),
        lambda: {"features": _randn(2, 8, 4, 4), "text": _randn(3, 8, seed=1)},
        floats=("features", "text"),
        batch=("features",),
        invalid=(
            Invalid(
                "T_0",
                _with(text=torch.zeros(0, 8)),
                r"^text: expected at least one class embedding \(T >= 1\)",
            ),
        ),
    ),
    EntryPoint(
        "select_top_classes",
        lambda cost, k=2: _fn(f"{COST}:select_top_classes")(cost, k),
        lambda: {"cost": _randn(2, 4, 3, 3)},
        floats=("cost",),
        batch=("cost",),
        invalid=(
            Invalid("k_0", _with(k=0), r"^k: expected an int >= 1, got 0"),
            Invalid("k_above_T", _with(k=5), r"^k: expected at most T=4"),
        ),
    ),
    EntryPoint(
        "CostEmbedding",
        lambda cost: _m("cost_embedding")(cost),
        lambda: {"cost": _randn(2, 3, 8, 8)},
        floats=("cost",),
        batch=("cost",),
    ),
    EntryPoint(
        "CostAggregator",
        lambda features, text, tap0, tap1: _m("aggregator")(features, text, [tap0, tap1]),
        lambda: {
            "features": _randn(2, 8, 6, 6),
            "text": _randn(3, 8, seed=1),
            "tap0": _randn(2, 12, 6, 6, seed=2),
            "tap1": _randn(2, 12, 6, 6, seed=3),
        },
        floats=("features", "text", "tap0", "tap1"),
        batch=("features", "tap0", "tap1"),
        invalid=(
            Invalid(
                "T_0",
                _with(text=torch.zeros(0, 8)),
                r"^text: expected at least one class embedding",
            ),
        ),
        tol=2.0,
    ),
    EntryPoint(
        "UpsamplingDecoder",
        lambda x, g0, g1: _m("decoder")(x, [g0, g1]),
        lambda: {
            "x": _randn(2, 16, 3, 6, 6),
            "g0": _randn(2, 4, 12, 12, seed=1),
            "g1": _randn(2, 2, 24, 24, seed=2),
        },
        floats=("x", "g0", "g1"),
        batch=("x", "g0", "g1"),
        tol=2.0,
    ),
    EntryPoint(
        "sliding_window_inference",
        lambda images, stride=16: _fn(f"{COST}:sliding_window_inference")(
            lambda x: x[:, :2, ::4, ::4] * 4 - 2, images, window=32, stride=stride, size=64
        ),
        lambda: {"images": _rand(2, 3, 50, 60)},
        images="images",
        invalid=(Invalid("stride_0", _with(stride=0), r"^stride: expected an int >= 1, got 0"),),
    ),
    # --- losses
    EntryPoint(
        "dice_loss",
        _fn(f"{SEG}:dice_loss"),
        lambda: {"logits": _randn(2, 1, 8, 8), "targets": _binary(2, 1, 8, 8).float()},
        floats=("logits",),
        batch=("logits", "targets"),
        scalar=True,
        invalid=(
            Invalid(
                "targets_2",
                _with(targets=torch.full((2, 1, 8, 8), 2.0)),
                r"^targets: expected probabilities in \[0, 1\]",
            ),
        ),
    ),
    EntryPoint(
        "sigmoid_focal_loss",
        _fn(f"{SEG}:sigmoid_focal_loss"),
        lambda: {"logits": _randn(2, 1, 8, 8), "targets": _binary(2, 1, 8, 8).float()},
        floats=("logits",),
        batch=("logits", "targets"),
        scalar=True,
        invalid=(
            Invalid(
                "targets_nan",
                _with(targets=torch.full((2, 1, 8, 8), _NAN)),
                r"^targets: expected probabilities",
            ),
        ),
    ),
    EntryPoint(
        "pairwise_dice_loss",
        _fn(f"{SEG}:pairwise_dice_loss"),
        lambda: {"logits": _randn(2, 16), "targets": _binary(3, 16).float()},
        floats=("logits",),
        batch=("logits",),
        invalid=(
            Invalid(
                "targets_-1",
                _with(targets=torch.full((3, 16), -1.0)),
                r"^targets: expected probabilities",
            ),
        ),
    ),
    EntryPoint(
        "box_l1_loss",
        _fn(f"{BOX}:box_l1_loss"),
        lambda: {"pred": _rand(2, 4), "target": _rand(2, 4, seed=1)},
        floats=("pred", "target"),
        batch=("pred", "target"),
        scalar=True,
    ),
    EntryPoint(
        "giou_loss",
        _fn(f"{BOX}:giou_loss"),
        lambda: {"pred": _rand(2, 4) * 0.5 + 0.25, "target": _rand(2, 4, seed=1) * 0.5 + 0.25},
        floats=("pred", "target"),
        batch=("pred", "target"),
        scalar=True,
    ),
    EntryPoint(
        "referring_loss",
        lambda mask_logits, mask_targets, pred_boxes, target_boxes: (
            _fn(f"{REF}:referring_loss")(mask_logits, mask_targets, pred_boxes, target_boxes).total
        ),
        lambda: {
            "mask_logits": _randn(2, 1, 8, 8),
            "mask_targets": _binary(2, 1, 8, 8),
            "pred_boxes": _rand(2, 4) * 0.5 + 0.25,
            "target_boxes": _rand(2, 4, seed=1) * 0.5 + 0.25,
        },
        floats=("mask_logits", "pred_boxes", "target_boxes"),
        batch=("mask_logits", "mask_targets", "pred_boxes", "target_boxes"),
        scalar=True,
        invalid=(
            Invalid(
                "non_binary",
                _with(mask_targets=torch.full((2, 1, 8, 8), 0.5)),
                r"^mask_targets: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "cost_aggregation_loss",
        _fn(f"{SMI}:cost_aggregation_loss"),
        lambda: {"logits": _randn(2, 3, 4, 4), "labels": _labels(2, 8, 8, num_classes=3)},
        floats=("logits",),
        batch=("logits", "labels"),
        scalar=True,
        invalid=(
            Invalid(
                "T_0",
                _with(logits=torch.zeros(2, 0, 4, 4)),
                r"^logits: expected at least one class \(T >= 1\)",
            ),
        ),
    ),
    EntryPoint(
        "tspp_loss",
        _tspp_loss,
        lambda: {
            "prob": _rand(2, 4, 4),
            "mask_logits": _randn(2, 2, 4, 4),
            "prob_targets": _rand(2, 4, 4, seed=1),
            "labels": _labels(2, 8, 8, num_classes=2),
        },
        floats=("prob", "mask_logits", "prob_targets"),
        batch=("prob", "mask_logits", "prob_targets", "labels"),
        scalar=True,
        invalid=(
            Invalid(
                "targets_2",
                _with(prob_targets=torch.full((2, 4, 4), 2.0)),
                r"^prob_targets: expected probabilities in \[0, 1\]",
            ),
        ),
    ),
    EntryPoint(
        "SAMMILoss",
        _sam_mi_loss,
        lambda: {
            "logits": _randn(2, 2, 8, 8),
            "prob": _rand(2, 4, 4),
            "mask_logits": _randn(2, 2, 4, 4, seed=1),
            "labels": _labels(2, 16, 16, num_classes=2),
        },
        floats=("logits", "prob", "mask_logits"),
        batch=("logits", "prob", "mask_logits", "labels"),
        scalar=True,
    ),
    # --- other rooms (CLIP, SAM-CP, metrics): xfail marks are removed when their contract lands
    EntryPoint(
        "ClipBackbone.encode_image",
        lambda images: _sammi().clip.encode_image(images),
        lambda: {"images": _rand(2, 3, 64, 64)},
        images="images",
        tol=3.0,
    ),
    EntryPoint(
        "ClipBackbone.encode_dense",
        lambda images: _sammi().clip.encode_dense(images, mode="value"),
        lambda: {"images": _rand(2, 3, 64, 64)},
        images="images",
        tol=3.0,
    ),
    EntryPoint(
        "ClipBackbone.encode_text",
        lambda texts: _sammi().clip.encode_text(texts),
        lambda: {"texts": ["a", "b"]},
        classes="texts",
    ),
    EntryPoint(
        "SAMCP.forward",
        lambda images: _samcp()(images, _samcp_patches(images)),
        lambda: {"images": _rand(2, 3, 64, 64)},
        images="images",
        ragged=True,
        batch_axis=1,
        tol=5.0,
    ),
    EntryPoint(
        "SAMCP.predict",
        lambda images: _samcp().predict(images, _samcp_patches(images)),
        lambda: {"images": _rand(2, 3, 64, 64)},
        images="images",
        ragged=True,
        listed=True,
        tol=5.0,
    ),
    EntryPoint(
        "patches_from_masks",
        lambda masks: _fn("samkit.proposals:patches_from_masks")(masks),
        lambda: {"masks": _binary(3, 8, 8)},
        invalid=(
            Invalid(
                "non_binary",
                _with(masks=torch.full((3, 8, 8), 0.5)),
                r"^masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "mean_iou",
        lambda preds, targets, num_classes=3: _fn("samkit.metrics.semantic:mean_iou")(
            preds, targets, num_classes=num_classes
        ),
        lambda: {
            "preds": _labels(2, 8, 8, num_classes=3),
            "targets": _labels(2, 8, 8, num_classes=3, seed=1),
        },
        invalid=(
            Invalid("T_0", _with(num_classes=0), r"^num_classes: expected an int >= 1, got 0"),
        ),
    ),
    EntryPoint(
        "referring_iou",
        lambda preds, targets: _fn("samkit.metrics.referring:referring_iou")(preds, targets),
        lambda: {"preds": _binary(2, 8, 8), "targets": _binary(2, 8, 8, seed=1)},
        batch=("preds", "targets"),
        invalid=(
            Invalid(
                "soft_targets",
                _with(targets=torch.full((2, 8, 8), 0.5)),
                r"^targets: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "ClipBackbone.dense_features",
        lambda images: _sammi().clip.dense_features(images),
        lambda: {"images": _rand(2, 3, 64, 64)},
        images="images",
        tol=3.0,
    ),
    EntryPoint(
        "SemanticIoU.update",
        lambda preds, targets: _fn("samkit.metrics.semantic:SemanticIoU")(num_classes=3).update(
            preds, targets
        ),
        lambda: {
            "preds": _labels(2, 8, 8, num_classes=3),
            "targets": _labels(2, 8, 8, num_classes=3, seed=1),
        },
        invalid=(
            Invalid("label_7", _with(targets=torch.full((2, 8, 8), 7)), r"^targets: expected"),
            Invalid("HW", _with(targets=torch.zeros(2, 8, 9, dtype=torch.long)), r"^preds|^targ"),
        ),
    ),
    EntryPoint(
        "ReferringMetrics.update",
        lambda preds, targets: _fn("samkit.metrics.referring:ReferringMetrics")().update(
            preds, targets
        ),
        lambda: {"preds": _binary(2, 8, 8), "targets": _binary(2, 8, 8, seed=1)},
        invalid=(
            Invalid(
                "soft_targets",
                _with(targets=torch.full((2, 8, 8), 0.5)),
                r"^targets: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "MaskAP.update",
        lambda pred_masks: _fn("samkit.metrics.instance:MaskAP")().update(
            pred_masks,
            torch.ones(len(pred_masks)),
            torch.zeros(len(pred_masks), dtype=torch.long),
            _binary(1, 8, 8, seed=1),
            torch.zeros(1, dtype=torch.long),
        ),
        lambda: {"pred_masks": _binary(2, 8, 8)},
        invalid=(
            Invalid(
                "soft_masks",
                _with(pred_masks=torch.full((2, 8, 8), 0.5)),
                r"^pred_masks: expected a binary mask",
            ),
        ),
    ),
    EntryPoint(
        "PanopticQuality.update",
        lambda category: _fn("samkit.metrics.panoptic:PanopticQuality")(
            things=[0], stuff=[1]
        ).update(
            torch.ones(4, 4, dtype=torch.long),
            [{"id": 1, "category_id": category}],
            torch.ones(4, 4, dtype=torch.long),
            [{"id": 1, "category_id": 0}],
        ),
        lambda: {"category": 0},
        invalid=(Invalid("unknown_category", _with(category=5), r"category"),),
    ),
]


# ---------------------------------------------------------------------- the sweep


def _tensors(out: Any, prefix: str = "out") -> dict[str, Tensor]:
    """Every tensor in an output (tensor, tuple/list, dataclass), by path."""
    if isinstance(out, Tensor):
        return {prefix: out}
    found: dict[str, Tensor] = {}
    if isinstance(out, (tuple, list)):
        for i, item in enumerate(out):
            found.update(_tensors(item, f"{prefix}[{i}]"))
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        for f in dataclasses.fields(out):
            found.update(_tensors(getattr(out, f.name), f"{prefix}.{f.name}"))
    return found


_REFERENCES: dict[str, dict[str, Tensor]] = {}


def _reference(ep: EntryPoint) -> dict[str, Tensor]:
    """The output tensors on the valid (float32, `B = 2`) inputs, computed once per entry."""
    if ep.name not in _REFERENCES:
        with torch.no_grad():
            _REFERENCES[ep.name] = _tensors(ep.call(**ep.inputs()))
    return _REFERENCES[ep.name]


def _params(role: str) -> list[Any]:
    """`pytest.param`s of the entry points that have a role, xfail where the case is pending."""
    has = {
        "uint8": lambda ep: ep.images is not None,
        "out_of_range": lambda ep: ep.images is not None,
        "nan": lambda ep: ep.images is not None,
        "float_dtypes": lambda ep: ep.images is not None or bool(ep.floats),
        "empty_batch": lambda ep: ep.images is not None or bool(ep.batch),
        "one_str_class": lambda ep: ep.classes is not None,
        "zero_classes": lambda ep: ep.classes is not None,
    }[role]
    return [_param(ep, role) for ep in ENTRY_POINTS if has(ep)]


def _param(ep: EntryPoint, case: str, *values: Any, id: str | None = None) -> Any:
    marks = []
    if case in ep.pending:
        marks.append(
            pytest.mark.xfail(reason=f"contract pending in {ep.pending[case]}", strict=False)
        )
    return pytest.param(ep, *values, id=id or ep.name, marks=marks)


def test_registry_names_are_unique() -> None:
    names = [ep.name for ep in ENTRY_POINTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("ep", _params("uint8"))
def test_uint8_images_equal_float_over_255(ep: EntryPoint) -> None:
    assert ep.images is not None
    inputs = ep.inputs()
    u8 = (inputs[ep.images] * 255).round().to(torch.uint8)
    with torch.no_grad():
        got = _tensors(ep.call(**{**inputs, ep.images: u8}))
        want = _tensors(ep.call(**{**inputs, ep.images: u8.float() / 255}))
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6, msg=key)


@pytest.mark.parametrize("value", [255.0, 1.01, -0.01, -1.0])
@pytest.mark.parametrize("ep", _params("out_of_range"))
def test_float_images_outside_unit_interval(ep: EntryPoint, value: float) -> None:
    assert ep.images is not None
    inputs = ep.inputs()
    images = inputs[ep.images].clone()
    images.view(-1)[images.numel() // 2] = value
    with pytest.raises(ValueError, match=rf"^{ep.images}: expected float values in \[0, 1\]"):
        ep.call(**{**inputs, ep.images: images})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("ep", _params("nan"))
def test_non_finite_images(ep: EntryPoint, value: float) -> None:
    assert ep.images is not None
    inputs = ep.inputs()
    images = inputs[ep.images].clone()
    images.view(-1)[0] = value
    with pytest.raises(ValueError, match=rf"^{ep.images}: expected finite pixel values"):
        ep.call(**{**inputs, ep.images: images})


@pytest.mark.parametrize("dtype", list(DTYPE_TOL), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("ep", _params("float_dtypes"))
def test_float_dtypes_give_the_float32_result(ep: EntryPoint, dtype: torch.dtype) -> None:
    inputs = ep.inputs()
    names = ([ep.images] if ep.images else []) + list(ep.floats)
    want = _reference(ep)
    with torch.no_grad():
        got = _tensors(ep.call(**{**inputs, **{n: inputs[n].to(dtype) for n in names}}))
    assert got.keys() == want.keys() and got
    tol = {k: v * ep.tol for k, v in DTYPE_TOL[dtype].items()}
    for key, w in want.items():
        g = got[key]
        assert g.shape == w.shape, key
        if w.is_floating_point():
            # float32 (or wider) out: low-precision inputs are computed in float32
            assert torch.finfo(g.dtype).bits >= 32, f"{key}: {g.dtype}"
            torch.testing.assert_close(g.float(), w.float(), **tol, msg=key)


@pytest.mark.parametrize("ep", _params("empty_batch"))
def test_empty_batch(ep: EntryPoint) -> None:
    inputs = ep.inputs()
    names = ([ep.images] if ep.images else []) + list(ep.batch)
    full = _reference(ep)
    with torch.no_grad():
        out = ep.call(**{**inputs, **{n: inputs[n][:0] for n in names}})
    if ep.listed:
        assert isinstance(out, list) and out == [], out
        return
    empty = _tensors(out)
    assert empty.keys() == full.keys()
    for key, f in full.items():
        e = empty[key]
        if ep.scalar:
            assert e.shape == f.shape == () and float(e) == 0.0, key
            continue
        assert e.dim() == f.dim() and e.shape[ep.batch_axis] == 0, (key, e.shape)
        if not ep.ragged:
            want = list(f.shape)
            want[ep.batch_axis] = 0
            assert list(e.shape) == want, (key, e.shape)


@pytest.mark.parametrize("ep", _params("one_str_class"))
def test_one_str_is_one_class(ep: EntryPoint) -> None:
    assert ep.classes is not None
    inputs = ep.inputs()
    with torch.no_grad():
        got = _tensors(ep.call(**{**inputs, ep.classes: "cat"}))
        want = _tensors(ep.call(**{**inputs, ep.classes: ["cat"]}))
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("ep", _params("zero_classes"))
def test_zero_classes(ep: EntryPoint) -> None:
    assert ep.classes is not None
    with pytest.raises(ValueError, match=rf"^{ep.classes}: expected"):
        ep.call(**{**ep.inputs(), ep.classes: []})


@pytest.mark.parametrize(
    ("ep", "case"),
    [
        _param(ep, "invalid", case, id=f"{ep.name}-{case.id}")
        for ep in ENTRY_POINTS
        for case in ep.invalid
    ],
)
def test_invalid_inputs(ep: EntryPoint, case: Invalid) -> None:
    with pytest.raises(ValueError, match=case.match):
        ep.call(**case.change(ep.inputs()))


@pytest.mark.parametrize("ep", [pytest.param(ep, id=ep.name) for ep in ENTRY_POINTS])
def test_valid_inputs_run(ep: EntryPoint) -> None:
    assert isinstance(_reference(ep), dict)
