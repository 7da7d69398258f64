"""Typed values that cross module boundaries, and the one shape legend of samkit.

Axis legend (used in every docstring, `check_shape` pattern and einops expression):

| letter | meaning |
|---|---|
| `B` | images in a batch |
| `K` | prompts or queries per image |
| `N` | tokens or points |
| `T` | classes or texts |
| `M` | masks (per prompt, or per image) |
| `D` | channels |
| `H, W` | image pixels |
| `h, w` | feature (embedding) grid |
| `L` | layers, or text length in tokens where it is stated |

Coordinate frames:

* **Original frame**: pixels of the image the user passed, `(H, W)`, `(x, y)` order for points and
  `(x0, y0, x1, y1)` for boxes.
* **SAM input frame**: the image resized so its long side is `img_size` (1024 for the official
  models), then padded bottom/right to a square. Point and box prompts handed to SAM's prompt
  encoder are in this frame. `ImageEmbedding.input_size` is the size of the resized, unpadded
  image inside the square.

Images are tensors `(B, 3, H, W)` of RGB values: float in `[0, 1]` (any float dtype), or uint8 in
`0..255`, divided by 255 at every entry point (`samkit._checks.as_image`); each backbone applies
its own normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

__all__ = [
    "AffinityDecoderOutput",
    "ClipDenseOutput",
    "ImageEmbedding",
    "InjectedGuidance",
    "LinguisticFeatures",
    "MaskPrediction",
    "PanopticResult",
    "PatchTargets",
    "Patches",
    "Prompts",
    "ReferringLossTerms",
    "ReferringOutput",
    "SAMCPOutput",
    "SAMMIOutput",
    "SemanticSpatialPrompts",
    "TSPPOutput",
    "TextEmbedding",
]


def _map_tensors(obj: object, fn: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            value = fn(value)  # type: ignore[operator]
        elif isinstance(value, list) and value and all(isinstance(v, Tensor) for v in value):
            value = [fn(v) for v in value]  # type: ignore[operator]
        out[f.name] = value
    return out


class _TensorFieldsMixin:
    """Adds `to(...)` and `detach()` to dataclasses whose fields are tensors."""

    def to(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        """Return a copy with every tensor field moved/cast by `Tensor.to(*args, **kwargs)`."""
        return type(self)(**_map_tensors(self, lambda t: t.to(*args, **kwargs)))  # type: ignore[call-arg]

    def detach(self):  # type: ignore[no-untyped-def]
        """Return a copy whose tensor fields are detached from the autograd graph."""
        return type(self)(**_map_tensors(self, lambda t: t.detach()))  # type: ignore[call-arg]


@dataclass
class Prompts(_TensorFieldsMixin):
    """Prompts for `K` prompt slots per image, in SAM's input frame.

    Every field is optional; the ones given must agree on `B` and `K`. Within one prompt slot all
    parts are combined, as SAM's prompt encoder does (points, then the two box corners, then any
    raw sparse embeddings).

    Attributes:
        points: Point coordinates `(B, K, N, 2)` as `(x, y)` pixels in the SAM input frame.
        labels: Point labels `(B, K, N)`: 1 foreground, 0 background, -1 padding.
        boxes: Boxes `(B, K, 4)` as `(x0, y0, x1, y1)` in the SAM input frame.
        masks: Mask-input logits `(B, K, 1, 4h, 4w)` (256x256 for the official SAM).
        sparse_embeddings: Raw sparse prompt embeddings `(B, K, N, D)` appended after the
            encoded points and boxes (SSP-SAM's semantic-spatial prompts enter this way).
        dense_embeddings: Raw dense prompt embeddings `(B, K, D, h, w)` that replace the mask
            embedding (or SAM's `no_mask_embed`) when given.

    Examples:
        >>> p = Prompts(points=torch.zeros(2, 3, 1, 2), labels=torch.ones(2, 3, 1))
        >>> p.batch_shape
        (2, 3)
    """

    points: Tensor | None = None
    labels: Tensor | None = None
    boxes: Tensor | None = None
    masks: Tensor | None = None
    sparse_embeddings: Tensor | None = None
    dense_embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.labels is None):
            raise ValueError("Prompts: points and labels must be given together")
        shapes = self._leading_shapes()
        # compared pairwise, not through a set: hashing symbolic sizes would fix `K` under
        # `torch.compile(dynamic=True)`
        first = next(iter(shapes.values()), None)
        if any(v != first for v in shapes.values()):
            got = ", ".join(f"{k}={v}" for k, v in shapes.items())
            raise ValueError(f"Prompts: all fields must share (B, K); got {got}")
        if self.points is not None and self.labels is not None:
            if self.points.dim() != 4 or self.points.shape[-1] != 2:
                raise ValueError(
                    f"Prompts.points: expected (B, K, N, 2), got {tuple(self.points.shape)}"
                )
            if tuple(self.labels.shape) != tuple(self.points.shape[:3]):
                raise ValueError(
                    f"Prompts.labels: expected (B, K, N) = {tuple(self.points.shape[:3])}, "
                    f"got {tuple(self.labels.shape)}"
                )
        if self.boxes is not None and (self.boxes.dim() != 3 or self.boxes.shape[-1] != 4):
            raise ValueError(f"Prompts.boxes: expected (B, K, 4), got {tuple(self.boxes.shape)}")
        if self.masks is not None and (self.masks.dim() != 5 or self.masks.shape[2] != 1):
            raise ValueError(
                f"Prompts.masks: expected (B, K, 1, 4h, 4w), got {tuple(self.masks.shape)}"
            )
        if self.sparse_embeddings is not None and self.sparse_embeddings.dim() != 4:
            raise ValueError(
                "Prompts.sparse_embeddings: expected (B, K, N, D), got "
                f"{tuple(self.sparse_embeddings.shape)}"
            )
        if self.dense_embeddings is not None and self.dense_embeddings.dim() != 5:
            raise ValueError(
                "Prompts.dense_embeddings: expected (B, K, D, h, w), got "
                f"{tuple(self.dense_embeddings.shape)}"
            )

    def _leading_shapes(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                if value.dim() < 2:
                    raise ValueError(
                        f"Prompts.{f.name}: expected leading (B, K) axes, got {tuple(value.shape)}"
                    )
                # symbolic under torch.export and torch.compile (int() would specialise B, K)
                out[f.name] = (value.shape[0], value.shape[1])
        return out

    @property
    def batch_shape(self) -> tuple[int, int] | None:
        """`(B, K)` shared by the given fields, or `None` when no field is set."""
        shapes = list(self._leading_shapes().values())
        return shapes[0] if shapes else None

    @property
    def is_empty(self) -> bool:
        """True when no field is set."""
        return self.batch_shape is None


@dataclass
class MaskPrediction(_TensorFieldsMixin):
    """Masks predicted for `K` prompts on each of `B` images, `M` candidates per prompt.

    Attributes:
        low_res_logits: Mask logits at the decoder's resolution `(B, K, M, 4h, 4w)` (256x256 for
            the official SAM), in the padded SAM input frame.
        iou_scores: Predicted mask quality `(B, K, M)`.
        logits: Mask logits at the original image size `(B, K, M, H, W)`, or `None` when the
            producer skipped upsampling (e.g. to save memory with many prompts).
        mask_threshold: The logit threshold that separates foreground from background.
        tokens: Optional decoder output tokens `(B, K, M, D)` for heads that need them.

    Examples:
        >>> pred = MaskPrediction(low_res_logits=torch.randn(1, 2, 3, 8, 8),
        ...                       iou_scores=torch.rand(1, 2, 3))
        >>> pred.binary().shape
        torch.Size([1, 2, 3, 8, 8])
    """

    low_res_logits: Tensor
    iou_scores: Tensor
    logits: Tensor | None = None
    mask_threshold: float = 0.0
    tokens: Tensor | None = None

    def binary(self, threshold: float | None = None) -> Tensor:
        """Boolean masks, at original size when `logits` is set, else at low resolution.

        Args:
            threshold: Logit threshold; defaults to `mask_threshold`.

        Returns:
            A bool tensor shaped like `logits` (or `low_res_logits`).
        """
        t = self.mask_threshold if threshold is None else threshold
        src = self.logits if self.logits is not None else self.low_res_logits
        return src > t

    def best(self) -> MaskPrediction:
        """Keep, for every prompt, the candidate with the highest predicted IoU (`M` becomes 1)."""
        idx = self.iou_scores.argmax(dim=-1, keepdim=True)  # (B, K, 1)

        def pick(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            gather_idx = idx.reshape(*idx.shape, *([1] * (x.dim() - 3))).expand(
                *idx.shape, *x.shape[3:]
            )
            return torch.gather(x, 2, gather_idx)

        low = pick(self.low_res_logits)
        assert low is not None
        return MaskPrediction(
            low_res_logits=low,
            iou_scores=torch.gather(self.iou_scores, 2, idx),
            logits=pick(self.logits),
            mask_threshold=self.mask_threshold,
            tokens=pick(self.tokens),
        )


@dataclass
class ImageEmbedding(_TensorFieldsMixin):
    """SAM image embeddings of a batch of equally sized images.

    Attributes:
        embeddings: Image embeddings `(B, D, h, w)` (256x64x64 for the official SAM).
        input_size: `(h_in, w_in)`: size of the resized image inside SAM's padded square.
        original_size: `(H, W)`: size of the images before preprocessing.
        intermediates: Optional encoder intermediate features (HQ-SAM style), each `(B, ...)`.

    Examples:
        >>> emb = ImageEmbedding(torch.zeros(2, 256, 64, 64), (1024, 768), (480, 360))
        >>> emb.batch_size
        2
    """

    embeddings: Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]
    intermediates: list[Tensor] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """Number of images `B`."""
        return self.embeddings.shape[0]  # no int(): stays symbolic under torch.export

    def select(self, index: int | slice | Tensor) -> ImageEmbedding:
        """Return the embedding of a subset of the batch (the sizes are shared)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ImageEmbedding(
            embeddings=self.embeddings[index],
            input_size=self.input_size,
            original_size=self.original_size,
            intermediates=[t[index] for t in self.intermediates],
        )


@dataclass
class TextEmbedding(_TensorFieldsMixin):
    """L2-normalised text embeddings of `T` class names or sentences.

    Attributes:
        embeddings: Normalised joint-space embeddings `(T, D)`; one row per input text (after
            template ensembling when templates were used).
        texts: The input texts, in row order.
        token_states: Optional per-token states `(T, L, D_t)` of the text transformer (after the
            final LayerNorm, not projected), for word-level heads.
        padding_mask: Optional `(T, L)` bool, True where `token_states` is padding.
        tokens: Optional token ids `(T, L)` that produced `token_states`.

    Examples:
        >>> te = TextEmbedding(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1),
        ...                    ["cat", "dog", "sky"])
        >>> te.num_texts
        3
    """

    embeddings: Tensor
    texts: list[str]
    token_states: Tensor | None = None
    padding_mask: Tensor | None = None
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2:
            raise ValueError(
                f"TextEmbedding.embeddings: expected (T, D), got {tuple(self.embeddings.shape)}"
            )
        if len(self.texts) != self.embeddings.shape[0]:
            raise ValueError(
                f"TextEmbedding: {len(self.texts)} texts but {self.embeddings.shape[0]} embeddings"
            )
        if (self.token_states is None) != (self.padding_mask is None):
            raise ValueError("TextEmbedding: token_states and padding_mask must be given together")

    @property
    def num_texts(self) -> int:
        """Number of texts `T`."""
        return int(self.embeddings.shape[0])


# --- SSP-SAM (issue 3) -------------------------------------------------------------------------


@dataclass
class LinguisticFeatures(_TensorFieldsMixin):
    """Word- and sentence-level features of a linguistic attention adapter (SSP-SAM's LAD).

    Attributes:
        words: Projected word features `(B, L, D)` (`L` text tokens).
        sentence: Phrase-attention pooled sentence vector `(B, D)`.
        weights: Phrase-attention weights `(B, L)`; zero at padding, summing to one per text.

    Examples:
        >>> f = LinguisticFeatures(torch.zeros(2, 5, 8), torch.zeros(2, 8), torch.full((2, 5), .2))
        >>> f.sentence.shape
        torch.Size([2, 8])
    """

    words: Tensor
    sentence: Tensor
    weights: Tensor


@dataclass
class SemanticSpatialPrompts(_TensorFieldsMixin):
    """Output of a semantic-spatial prompt encoder: SAM sparse prompts plus an auxiliary box.

    Attributes:
        prompts: Prompt tokens `(B, K, D)` to hand to SAM as sparse prompt embeddings.
        boxes: Auxiliary box `(B, 4)`, normalised `(cx, cy, w, h)` in `[0, 1]`.
        tokens: All encoder output tokens `(B, 1 + K + N, D)` (register, prompts, fused).
        presence_logits: Optional "has a referent" logits `(B,)` from the register token.

    Examples:
        >>> p = SemanticSpatialPrompts(torch.zeros(2, 4, 8), torch.rand(2, 4), torch.zeros(2, 9, 8))
        >>> p.prompts.shape
        torch.Size([2, 4, 8])
    """

    prompts: Tensor
    boxes: Tensor
    tokens: Tensor
    presence_logits: Tensor | None = None


@dataclass
class ReferringLossTerms(_TensorFieldsMixin):
    """Weighted total and unweighted terms of a referring-segmentation loss (scalars).

    Attributes:
        total: Weighted sum of the terms; call `.backward()` on it.
        dice: Mask dice loss.
        focal: Mask sigmoid focal loss.
        l1: Box L1 loss.
        giou: Box generalised-IoU loss.
        presence: Binary cross-entropy of the "has a referent" logits (`None` when unused).

    Examples:
        >>> z = torch.zeros(())
        >>> ReferringLossTerms(z, z, z, z, z).total.shape
        torch.Size([])
    """

    total: Tensor
    dice: Tensor
    focal: Tensor
    l1: Tensor
    giou: Tensor
    presence: Tensor | None = None


@dataclass
class ReferringOutput(_TensorFieldsMixin):
    """One mask, box and target decision per (image, expression) pair of a referring system.

    Attributes:
        low_res_logits: Mask logits `(B, 1, 4h, 4w)` in SAM's padded square input frame (the
            decoder resolution, 256x256 for the official SAM).
        iou_scores: SAM's predicted mask quality `(B, 1)`.
        boxes: Auxiliary box `(B, 4)`, normalised `(cx, cy, w, h)` in the CLIP input canvas.
        has_target: `(B,)` bool: whether the expression is judged to refer to anything (GRES).
        prompts: The semantic-spatial prompts `(B, K, D)` that were given to SAM.
        logits: Mask logits `(B, 1, H, W)` at the original image size, or `None` when not asked.
        target_logits: `(B,)` logits of the optional "has a referent" head, else `None`.

    Examples:
        >>> out = ReferringOutput(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1), torch.rand(1, 4),
        ...                       torch.tensor([False]), torch.zeros(1, 3, 4))
        >>> out.binary().shape
        torch.Size([1, 1, 8, 8])
    """

    low_res_logits: Tensor
    iou_scores: Tensor
    boxes: Tensor
    has_target: Tensor
    prompts: Tensor
    logits: Tensor | None = None
    target_logits: Tensor | None = None

    def binary(self, threshold: float = 0.0) -> Tensor:
        """Boolean masks at original size when `logits` is set, else in the low-res frame."""
        src = self.logits if self.logits is not None else self.low_res_logits
        return src > threshold


@dataclass
class Patches(_TensorFieldsMixin):
    """SAM patches of one image: binary masks with their boxes and quality scores (SAM-CP).

    Attributes:
        masks: Binary patch masks `(N, H, W)` (bool) in the original frame.
        boxes: Patch boxes `(N, 4)` as `(x0, y0, x1, y1)` pixels in the original frame.
        scores: Patch quality scores `(N,)` (SAM's predicted IoU, or 1 for external patches).

    Examples:
        >>> p = Patches(torch.zeros(3, 8, 8, dtype=torch.bool), torch.zeros(3, 4), torch.ones(3))
        >>> p.num_patches, p.image_size
        (3, (8, 8))
    """

    masks: Tensor
    boxes: Tensor
    scores: Tensor

    def __post_init__(self) -> None:
        if self.masks.dim() != 3:
            raise ValueError(f"Patches.masks: expected (N, H, W), got {tuple(self.masks.shape)}")
        n = self.masks.shape[0]
        if tuple(self.boxes.shape) != (n, 4):
            raise ValueError(f"Patches.boxes: expected ({n}, 4), got {tuple(self.boxes.shape)}")
        if tuple(self.scores.shape) != (n,):
            raise ValueError(f"Patches.scores: expected ({n},), got {tuple(self.scores.shape)}")

    @property
    def num_patches(self) -> int:
        """Number of patches `N`."""
        return int(self.masks.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """`(H, W)` of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def select(self, keep: Tensor) -> Patches:
        """Return the patches picked by a bool mask or an index tensor `keep`."""
        return Patches(self.masks[keep], self.boxes[keep], self.scores[keep])


@dataclass
class AffinityDecoderOutput(_TensorFieldsMixin):
    """Per-layer outputs of SAM-CP's unified affinity decoder.

    Attributes:
        hidden_states: Normalised query states of every layer `(L, B, K, D)`.
        affinities: Query-to-patch affinity logits of every layer `(L, B, K, N)` (the running
            sum when affinity refinement is on).
        boxes: Query reference boxes `(L + 1, B, K, 4)`, normalised `(cx, cy, w, h)`: the initial
            references, then the merged box after every layer.
    """

    hidden_states: Tensor
    affinities: Tensor
    boxes: Tensor


@dataclass
class SAMCPOutput(_TensorFieldsMixin):
    """Training-time outputs of SAM-CP for `B` images with up to `N` patches each.

    Queries are ordered `[S semantic queries, N instance queries]`, `K = S + N`; instance query
    `S + j` belongs to patch slot `j`. Slots past an image's own patch count are padding: their
    entries of `affinities` (padded query rows and patch columns) and `class_logits` (padded
    query rows) are 0 and carry no information; mask them with `padding_mask` /
    `query_padding_mask`.

    Attributes:
        affinities: Affinity logits query -> patch for every decoder layer `(L, B, K, N)`.
        class_logits: Class logits for every decoder layer `(L, B, K, T)` over all `T` classes
            (things first, then stuff).
        patch_boxes: Padded patch boxes `(B, N, 4)`, `(x0, y0, x1, y1)` pixels of each image.
        padding_mask: `(B, N)` bool, True at padded patch slots.
        num_semantic: Number of semantic (stuff) queries `S`.
        num_things: Number of thing classes among the `T`.
        image_size: `(H, W)` of the (padded) input batch.
        image_sizes: True `(h, w)` of each image; `None` means all `image_size`.

    Examples:
        >>> out = SAMCPOutput(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 4),
        ...                   torch.zeros(1, 2, 4), torch.tensor([[False, True]]), 1, 3, (8, 8))
        >>> out.query_padding_mask
        tensor([[False, False,  True]])
        >>> out.sizes
        [(8, 8)]
    """

    affinities: Tensor
    class_logits: Tensor
    patch_boxes: Tensor
    padding_mask: Tensor
    num_semantic: int
    num_things: int
    image_size: tuple[int, int]
    image_sizes: list[tuple[int, int]] | None = None

    @property
    def query_padding_mask(self) -> Tensor:
        """`(B, K)` bool, True at padded queries (semantic queries are never padded)."""
        pad = self.padding_mask
        return torch.cat([pad.new_zeros(pad.shape[0], self.num_semantic), pad], 1)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """True `(h, w)` of each image (`image_sizes`, or `image_size` for every image)."""
        if self.image_sizes is not None:
            return list(self.image_sizes)
        return [self.image_size] * int(self.padding_mask.shape[0])


@dataclass
class PatchTargets(_TensorFieldsMixin):
    """SAM-CP training targets of one image with `N` patches, `G` thing and `S` stuff segments.

    Attributes:
        thing_parts: Part labels `(N, G)`: 1 part, 0 negative, -1 ignore (`PartAssigner`).
        thing_labels: Thing class ids `(G,)`, in `[0, num_things)`.
        thing_boxes: Ground-truth boxes `(G, 4)`, `(x0, y0, x1, y1)` divided by `(W, H, W, H)`.
        thing_valid: `(G,)` bool; False marks matches that are ignored (no part, or the union
            box of its parts has IoU <= 0.5 with the ground-truth box).
        semantic_parts: `(S, N)` float, 1 where the patch is a part of stuff class `s`.
        semantic_positive: `(S,)` bool, True where stuff class `s` is present with >= 1 part.
    """

    thing_parts: Tensor
    thing_labels: Tensor
    thing_boxes: Tensor
    thing_valid: Tensor
    semantic_parts: Tensor
    semantic_positive: Tensor


@dataclass
class PanopticResult(_TensorFieldsMixin):
    """Panoptic, instance and semantic results for one image at its original size.

    Attributes:
        panoptic: Segment id per pixel `(H, W)` (long), 0 for void.
        segments: One dict per segment id: `id`, `category_id`, `isthing`, `score`, `area`.
        semantic: Class id per pixel `(H, W)` (long); `void_label` where nothing was kept.
        instance_masks: Instance masks `(M, H, W)` (bool), sorted by score.
        instance_scores: Instance scores `(M,)`.
        instance_labels: Thing class ids `(M,)` (long).
    """

    panoptic: Tensor
    segments: list[dict]
    semantic: Tensor
    instance_masks: Tensor
    instance_scores: Tensor
    instance_labels: Tensor


@dataclass
class ClipDenseOutput(_TensorFieldsMixin):
    """Dense CLIP image features from `ClipBackbone.encode_dense`.

    Attributes:
        features: Patch features in CLIP's joint space `(B, D, h, w)` (after `ln_post` and
            `proj`, not normalised).
        cls: The CLS token of the same stream `(B, D)`; in `plain` and `surgery` modes it is
            CLIP's global image embedding (not normalised).
        intermediates: Outputs of the requested vision blocks, each `(B, D_v, h, w)` with `D_v`
            the transformer width (before `ln_post`, not projected).

    Examples:
        >>> out = ClipDenseOutput(torch.zeros(2, 32, 4, 4), torch.zeros(2, 32))
        >>> out.features.shape, len(out.intermediates)
        (torch.Size([2, 32, 4, 4]), 0)
    """

    features: Tensor
    cls: Tensor
    intermediates: list[Tensor] = field(default_factory=list)


@dataclass
class TSPPOutput(_TensorFieldsMixin):
    """Outputs of SAM-MI's text-guided sparse point prompter (`TextGuidedSparsePointPrompter`).

    Attributes:
        prob: Sampling probability of every grid cell `(B, g, g)` (reduced over classes).
        prob_logits: Per-class, per-cell probability logits `(B, T, g, g)`.
        mask_logits: Per-class text-mask logits on the cost grid `(B, T, h, w)`.
        text_masks: One-hot argmax of `mask_logits`, the text masks `M^text` `(B, T, h, w)`.

    Examples:
        >>> out = TSPPOutput(torch.rand(1, 4, 4), torch.randn(1, 2, 4, 4),
        ...                  torch.randn(1, 2, 3, 3), torch.zeros(1, 2, 3, 3, dtype=torch.bool))
        >>> out.prob.shape
        torch.Size([1, 4, 4])
    """

    prob: Tensor
    prob_logits: Tensor
    mask_logits: Tensor
    text_masks: Tensor


@dataclass
class InjectedGuidance(_TensorFieldsMixin):
    """Cost-aggregation guidance after SAM-MI's decoupled mask injection.

    Attributes:
        appearance: Appearance guidance for spatial aggregation `(B, D, h, w)` (`F_mcr`).
        decoder_guidance: Decoder guidance maps, one per upsampling stage, `(B, D_i, h_i, w_i)`.

    Examples:
        >>> g = InjectedGuidance(torch.zeros(1, 8, 4, 4), [torch.zeros(1, 4, 8, 8)])
        >>> len(g.decoder_guidance)
        1
    """

    appearance: Tensor
    decoder_guidance: list[Tensor]


@dataclass
class SAMMIOutput(_TensorFieldsMixin):
    """Everything `SAMMI.forward` produces (logits plus intermediates for inspection and losses).

    Attributes:
        logits: Per-class segmentation logits `(B, T, h', w')` (4x the CLIP grid).
        points: Point prompts given to SAM `(B, N, 2)` in SAM's input frame (padded).
        point_valid: `(B, N)` bool, False at padding.
        sam_masks: SAM's mask per point `(B, N, h', w')` (bool, zero at padding).
        masks: Masks after shallow mask aggregation `(B, M, h', w')` (bool, padded).
        mask_valid: `(B, M)` bool, False at padding.
        tspp: The prompter's outputs (`TSPPOutput`), or None when TSPP is switched off.

    Examples:
        >>> out = SAMMIOutput(torch.zeros(1, 2, 8, 8), torch.zeros(1, 3, 2),
        ...                   torch.ones(1, 3, dtype=torch.bool),
        ...                   torch.zeros(1, 3, 8, 8, dtype=torch.bool),
        ...                   torch.zeros(1, 1, 8, 8, dtype=torch.bool),
        ...                   torch.ones(1, 1, dtype=torch.bool), None)
        >>> out.logits.shape
        torch.Size([1, 2, 8, 8])
    """

    logits: Tensor
    points: Tensor
    point_valid: Tensor
    sam_masks: Tensor
    masks: Tensor
    mask_valid: Tensor
    tspp: TSPPOutput | None = None
