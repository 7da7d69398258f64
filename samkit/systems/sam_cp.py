"""SAM-CP: semantic, instance and panoptic segmentation by composing SAM patches.

Wiring only (spec `sam-cp.md`): an image feature pyramid and `PatchEncoder` turn SAM patches into
tokens; semantic queries come from CLIP text embeddings of the stuff classes and instance queries
from the patch tokens; `AffinityDecoder` scores every query against every patch on each layer;
`VisionLanguageClassifier` labels queries against CLIP text embeddings of all classes;
`predict` merges patches per query and fuses them into panoptic, instance and semantic results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from samkit._cache import CacheInfo, EmbeddingCache, check_size
from samkit._checks import (
    as_class_names,
    as_image,
    check_shape,
    check_unit_interval,
    resolve_image_sizes,
)
from samkit._precision import Precision, check_precision, to_float32
from samkit.backbones.clip import ClipBackbone, build_clip_backbone
from samkit.backbones.clip_convnext import ClipConvNeXt, build_clip_convnext
from samkit.modules.affinity import AffinityDecoder, SemanticQueryEmbedding, compose_queries
from samkit.modules.classifier import OpenVocabularyEnsemble, VisionLanguageClassifier
from samkit.modules.feature_pyramid import BackboneFPN, ResNetFPN, TimmFPN, TinyFeaturePyramid
from samkit.modules.merging import (
    PanopticFusion,
    merge_patches,
    query_candidates,
    select_instances,
)
from samkit.modules.patch_encoder import PatchEncoder, pyramid_features
from samkit.proposals import SamPatchProposer, pad_patches
from samkit.systems._config import resolve_config
from samkit.systems._pretrained import BackboneSource, PretrainedModule
from samkit.systems._text_cache import TextEmbeddingCache
from samkit.types import PanopticResult, Patches, SAMCPOutput

__all__ = [
    "COCO_STUFF_CLASSES",
    "COCO_THING_CLASSES",
    "SAMCP",
    "SAMCPConfig",
    "build_sam_cp",
]

COCO_THING_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""The 80 COCO thing classes, in COCO-panoptic contiguous order."""

COCO_STUFF_CLASSES: tuple[str, ...] = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door", "wood floor",
    "flower", "fruit", "gravel", "house", "light", "mirror", "net", "pillow", "platform",
    "playingfield", "railroad", "river", "road", "roof", "sand", "sea", "shelf", "snow",
    "stairs", "tent", "towel", "brick wall", "stone wall", "tile wall", "wood wall", "water",
    "window blind", "window", "tree", "fence", "ceiling", "sky", "cabinet", "table", "floor",
    "pavement", "mountain", "grass", "dirt", "paper", "food", "building", "rock", "wall", "rug",
)  # fmt: skip
"""The 53 COCO-panoptic stuff classes (merged names made readable), in contiguous order."""


@dataclass
class SAMCPConfig:
    """SAM-CP hyper-parameters; the defaults are the paper / released-config setting.

    Examples:
        >>> cfg = SAMCPConfig.tiny()
        >>> cfg.dim, cfg.decoder_layers, len(SAMCPConfig().thing_classes)
        (32, 2, 80)
    """

    backbone: str = "resnet50"  # image backbone: resnet18..152 | tiny | clip | a timm name
    backbone_kwargs: dict[str, Any] = field(
        default_factory=dict
    )  # extra timm kwargs (e.g. img_size)
    feature_checkpoint: str | None = None  # local resnet* / timm trunk weights; never downloaded
    sam_variant: str = "vit_h"  # SAM used by the patch proposer (ViT-H in the paper)
    sam_checkpoint: str | None = None  # local SAM weights for the proposer
    build_proposer: bool = True  # build SAM for `predict(images)` without precomputed patches
    clip_name: str = "ViT-B-16"  # CLIP of the text embeddings (ConvNeXt with backbone="clip")
    clip_checkpoint: str | None = None  # local CLIP weights
    quick_gelu: bool | None = None  # CLIP activation; None: read from the checkpoint (OpenAI: on)
    text_templates: tuple[str, ...] = ("a photo of a {}.",)  # prompt templates for class names
    dim: int = 256  # token / query width D
    num_heads: int = 8  # attention heads everywhere
    ffn_dim: int = 2048  # FFN hidden width (encoder, decoder, affinity head)
    mlp_dim: int = 1024  # hidden width of the RoI MLP (12544 -> 1024 -> 256)
    encoder_layers: int = 6  # omega: self-attention layers of the patch encoder
    decoder_layers: int = 6  # affinity decoder layers
    roi_size: int = 7  # RoIAlign output size
    finest_scale: float = 56.0  # mmdet RoI level mapping scale
    use_mask_roi: bool = True  # MaskRoI: multiply RoI features by the patch mask
    dynamic_cross_attention: bool = True  # DCA
    affinity_refinement: bool = True  # AR
    query_enhancement: bool = False  # QE (off in the released config)
    thing_classes: tuple[str, ...] = COCO_THING_CLASSES  # instance-level classes
    stuff_classes: tuple[str, ...] = COCO_STUFF_CLASSES  # semantic-query classes
    open_vocabulary: bool = False  # mix in a frozen-CLIP mask classifier at inference
    kappa: float = 0.4  # weight of the CLIP classifier in the geometric ensemble
    object_mask_threshold: float = 0.3  # minimum query score kept by panoptic fusion
    affinity_threshold: float = 0.3  # minimum peak affinity probability of a kept query
    overlap_threshold: float = 0.8  # minimum kept fraction of a segment's mask
    max_per_image: int = 100  # candidates / instances kept per image
    points_per_side: int = 48  # proposer point grid (SAM*)
    points_per_batch: int = 256  # proposer prompts decoded at once
    pred_iou_thresh: float = 0.8  # proposer predicted-IoU filter
    stability_score_thresh: float = 0.9  # proposer stability filter
    box_nms_thresh: float = 0.7  # proposer box NMS
    text_cache_size: int = 8  # vocabularies whose CLIP text embeddings are cached (LRU; 0: off)
    image_cache_size: int = 0  # images whose SAM / CLIP encodings are cached (LRU; 0: off)
    encoder_batch_size: int = 8  # images per SAM / CLIP encoder call (bounds memory; 0: all)
    precision: Precision = "fp32"  # "bf16": pyramid, encoders, decoder, SAM in bf16 autocast

    @classmethod
    def tiny(cls, **overrides: Any) -> SAMCPConfig:
        """A small CPU preset: tiny conv pyramid, tiny SAM / CLIP, synthetic-scene classes."""
        from samkit.data.synthetic import STUFF_CLASSES, THING_CLASSES

        base = cls(
            backbone="tiny",
            sam_variant="tiny",
            clip_name="tiny",
            dim=32,
            num_heads=4,
            ffn_dim=64,
            mlp_dim=64,
            encoder_layers=1,
            decoder_layers=2,
            finest_scale=16.0,
            thing_classes=THING_CLASSES,
            stuff_classes=STUFF_CLASSES,
            points_per_side=8,
            points_per_batch=64,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def tiny_synth(cls, **overrides: Any) -> SAMCPConfig:
        """`tiny` heads on the shipped pretrained `tiny-synth` SAM and CLIP backbones.

        The SAM proposer uses SAM-CP's "SAM*" filters (predicted IoU 0.8, stability 0.9) on a
        16 x 16 grid: the pretrained SAM's own patches, not oracle ones.
        """
        base = cls.tiny(
            sam_variant="tiny-synth",
            clip_name="tiny-synth",
            points_per_side=16,
            pred_iou_thresh=0.8,
            stability_score_thresh=0.9,
        )
        return dataclasses.replace(base, **overrides)


class SAMCP(PretrainedModule):
    """SAM-CP: composable prompts over SAM patches (semantic queries + instance queries).

    `forward` returns per-layer affinities and class logits for training; `predict` returns
    panoptic, instance and semantic results at the original size. Save and load a trained model
    with `save_pretrained` / `SAMCP.from_pretrained` (the vocabulary is the config's classes).
    With `backbone="clip"` the feature extractor is an FPN over a CLIP ConvNeXt's image tower
    and the same CLIP's text tower gives the class embeddings (`clip`).

    Examples:
        >>> model = build_sam_cp("tiny", build_proposer=False).eval()
        >>> from samkit.proposals import patches_from_masks
        >>> masks = torch.zeros(3, 64, 64, dtype=torch.bool)
        >>> masks[0, :32], masks[1, 32:, :32], masks[2, 32:, 32:] = True, True, True
        >>> out = model(torch.rand(1, 3, 64, 64), [patches_from_masks(masks)])
        >>> out.affinities.shape, out.class_logits.shape
        (torch.Size([2, 1, 8, 3]), torch.Size([2, 1, 8, 9]))
        >>> model.predict(torch.rand(1, 3, 64, 64), [patches_from_masks(masks)])[0].panoptic.shape
        torch.Size([64, 64])
    """

    system_name = "sam_cp"
    display_name = "SAM-CP"
    config_class = SAMCPConfig

    def __init__(
        self,
        *,
        config: SAMCPConfig,
        feature_extractor: nn.Module,
        patch_encoder: PatchEncoder,
        semantic_queries: SemanticQueryEmbedding,
        decoder: AffinityDecoder,
        classifier: VisionLanguageClassifier,
        fusion: PanopticFusion,
        clip: ClipBackbone | ClipConvNeXt,
        proposer: SamPatchProposer | None = None,
        open_vocabulary: OpenVocabularyEnsemble | None = None,
    ) -> None:
        """Assemble the system from built parts; prefer `build_sam_cp`.

        Args:
            config: The configuration the parts were built from.
            feature_extractor: Images `(B, 3, H, W)` -> list of `(B, D, h, w)`, finest first.
            patch_encoder: The patch encoder.
            semantic_queries: Text embeddings -> semantic queries and reference boxes.
            decoder: The affinity decoder.
            classifier: The vision-language classifier.
            fusion: The panoptic fusion.
            clip: A frozen CLIP for class text embeddings: a `ClipBackbone`, or the
                `ClipConvNeXt` that is `feature_extractor.backbone` (held there only, not
                registered a second time).
            proposer: Optional SAM patch proposer used when `predict` gets no patches.
            open_vocabulary: Optional frozen-CLIP ensemble applied in `predict`.
        """
        super().__init__()
        self.config = config
        self.feature_extractor = feature_extractor
        self.patch_encoder = patch_encoder
        self.semantic_queries = semantic_queries
        self.decoder = decoder
        self.classifier = classifier
        self.fusion = fusion
        if clip is not getattr(feature_extractor, "backbone", None):
            self._modules["clip"] = clip  # otherwise `clip` reads it from the feature extractor
        self.proposer = proposer
        self.open_vocabulary = open_vocabulary
        self._text_cache = TextEmbeddingCache(config.text_cache_size, name="text_cache_size")
        self._dense_cache = EmbeddingCache(config.image_cache_size, name="image_cache_size")
        check_size(config.encoder_batch_size, name="encoder_batch_size")

    @classmethod
    def _build_from_config(cls, config: Any) -> SAMCP:
        return build_sam_cp(config)

    @property
    def clip(self) -> ClipBackbone | ClipConvNeXt:
        """The frozen CLIP giving class text embeddings (and open-vocabulary dense features).

        With `backbone="clip"` it is the feature extractor's CLIP ConvNeXt
        (`feature_extractor.backbone`, its only place in the module tree).
        """
        own = self._modules.get("clip")
        if own is None:
            own = cast(nn.Module, self.feature_extractor.backbone)
        return cast("ClipBackbone | ClipConvNeXt", own)

    def _backbone_sources(self) -> list[BackboneSource]:
        if "clip" in self._modules:
            sources = [BackboneSource("clip", "clip_checkpoint", ("clip",))]
        else:
            sources = [BackboneSource("clip", "clip_checkpoint", ("feature_extractor.backbone",))]
        trunk = {
            ResNetFPN: ("feature_extractor.stem", "feature_extractor.stages"),
            TimmFPN: ("feature_extractor.body",),
        }.get(type(self.feature_extractor))
        if trunk is not None:  # a trained trunk: always saved, the file is not needed to load
            sources.append(BackboneSource("features", "feature_checkpoint", trunk, frozen=False))
        if self.proposer is not None:
            sources.append(BackboneSource("sam", "sam_checkpoint", ("proposer.sam",)))
        return sources

    def _vocabulary(self) -> tuple[list[str] | None, int | None]:
        return list(self.class_names), len(self.config.thing_classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Default class names: things, then stuff."""
        return tuple(self.config.thing_classes) + tuple(self.config.stuff_classes)

    @torch.no_grad()
    def text_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """Normalised CLIP text embeddings `(T, C)` of class names (frozen).

        The embeddings of the last `config.text_cache_size` vocabularies are cached, keyed by
        the class names (in order), the templates, the call context (train/eval flags,
        inference and autocast modes) and the state of CLIP's weights (see
        `docs/performance/caches.md`).
        """
        names = tuple(class_names)
        templates = tuple(self.config.text_templates)
        return self._text_cache(
            self.clip,
            names,
            templates,
            lambda: (
                self.clip.encode_text(list(names), templates=list(templates) or None).embeddings
            ),
        )

    def text_cache_info(self) -> CacheInfo:
        """Hits, misses, bypasses, size and capacity of the text-embedding cache."""
        return self._text_cache.info()

    def clear_text_cache(self) -> None:
        """Drop the cached text embeddings."""
        self._text_cache.clear()

    def image_cache_info(self) -> dict[str, CacheInfo]:
        """Hits, misses, bypasses (counted per image), size and capacity of each image cache.

        Returns:
            `{"sam": ...}` for the proposer's SAM embeddings (when the model has a proposer)
            and `{"clip": ...}` for the open-vocabulary classifier's dense CLIP features.
        """
        out = {"clip": self._dense_cache.info()}
        if self.proposer is not None:
            out = {"sam": self.proposer.image_cache_info(), **out}
        return out

    def clear_image_cache(self) -> None:
        """Drop the cached SAM embeddings and dense CLIP features."""
        self._dense_cache.clear()
        if self.proposer is not None:
            self.proposer.clear_image_cache()

    def _dense_features(self, images: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """CLIP's dense features of each image at its own size, equal sizes batched together."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            groups.setdefault(hw, []).append(i)
        out: list[Tensor] = [images] * len(sizes)
        clip = self.clip
        for (h, w), idx in groups.items():
            crops = images[idx, :, :h, :w]

            def compute(index: Tensor | slice, crops: Tensor = crops) -> Tensor:
                return clip.dense_features(crops[index])

            feats = self._dense_cache.images(
                [clip], crops, "dense", compute, batch_size=self.config.encoder_batch_size
            )
            for k, i in enumerate(idx):
                out[i] = feats[k : k + 1]
        return out

    def _dtype(self) -> torch.dtype:
        return self.classifier.proj.weight.dtype

    def forward(
        self,
        images: Tensor,
        patches: Sequence[Patches],
        class_names: str | Sequence[str] | None = None,
        *,
        num_things: int | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> SAMCPOutput:
        """Score every patch against semantic and instance queries on every decoder layer.

        Every image's outputs are those it gets alone: padded patch slots never reach a real
        query, and images of different sizes (padded bottom/right into one batch, true sizes in
        `image_sizes`) are each computed at their own size.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype; computed in the
                model's dtype) or uint8 (divided by 255).
            patches: `B` `Patches`, masks at each image's own size.
            class_names: Class names, things first (one `str` is one class); defaults to the
                config's classes.
            num_things: How many of `class_names` are things (required with `class_names`
                unless they equal the defaults); 0 for a stuff-only vocabulary.
            image_sizes: True `(h, w)` of each image, top-left in the canvas; default all
                `(H, W)`.

        Returns:
            `SAMCPOutput` with `affinities (L, B, S + N, N)` and `class_logits (L, B, S + N, T)`;
            entries of padded slots are 0 (see `SAMCPOutput.query_padding_mask`). `B = 0` gives
            `(L, 0, S, 0)` and `(L, 0, S, T)`. With `config.precision="bf16"` the feature
            pyramid, patch encoder, decoder and classifier run under bfloat16 autocast (the
            CLIP text embeddings stay float32) and the outputs are float32.

        Raises:
            ValueError: On shape mismatches (patch masks not at their image's size), images
                outside `[0, 1]`, bad `image_sizes` or a missing `num_things`.
        """
        images = as_image(images, name="images", dtype=self._dtype())
        s = check_shape(images, "B 3 H W", name="images")
        if len(patches) != s["B"]:
            raise ValueError(f"patches: expected {s['B']} Patches, got {len(patches)}")
        names, num_things = self._resolve_classes(class_names, num_things)
        sizes = resolve_image_sizes(images, image_sizes)
        _check_patch_sizes(patches, sizes, image_sizes is None)
        canvas = (s["H"], s["W"])
        num_sem = len(names) - num_things
        if s["B"] == 0:
            return _empty_output(
                len(self.decoder.layers), num_sem, len(names), num_things, canvas, images
            )
        text = self.text_embeddings(names).to(images.device, images.dtype)  # fp32, cached
        with self.precision_context(images.device):
            result = self._score(images, patches, text, num_things, num_sem, canvas, sizes)
        return self.precision_outputs(result)

    def _score(
        self,
        images: Tensor,
        patches: Sequence[Patches],
        text: Tensor,
        num_things: int,
        num_sem: int,
        canvas: tuple[int, int],
        sizes: list[tuple[int, int]],
    ) -> SAMCPOutput:
        """`forward`'s computation on checked inputs (under the model's precision)."""
        masks, boxes, _, pad = pad_patches(patches, size=canvas)
        boxes = boxes.to(images.dtype)
        feats = pyramid_features(self.feature_extractor, images, sizes)
        strides = getattr(self.feature_extractor, "strides", None)
        tokens, pos = self.patch_encoder(
            feats, boxes, masks, pad, image_size=canvas, image_sizes=sizes, strides=strides
        )
        sem, sem_boxes = self.semantic_queries(text[num_things:])
        queries, refs, norm_boxes = compose_queries(sem, sem_boxes, tokens, boxes, canvas, sizes)
        out = self.decoder(
            queries,
            refs,
            tokens,
            pos,
            norm_boxes,
            num_semantic=num_sem,
            patch_padding_mask=pad,
            query_enhancer=lambda b: self.patch_encoder.embed_normalized_boxes(
                feats, b, canvas, sizes, strides
            ),
        )
        result = SAMCPOutput(
            affinities=out.affinities,
            class_logits=self.classifier(out.hidden_states, text),
            patch_boxes=boxes,
            padding_mask=pad,
            num_semantic=num_sem,
            num_things=num_things,
            image_size=canvas,
            image_sizes=sizes,
        )
        qpad = result.query_padding_mask
        result.affinities = result.affinities.masked_fill(
            qpad[None, :, :, None] | pad[None, :, None, :], 0.0
        )
        result.class_logits = result.class_logits.masked_fill(qpad[None, :, :, None], 0.0)
        return result

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        patches: Sequence[Patches] | None = None,
        class_names: str | Sequence[str] | None = None,
        *,
        num_things: int | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[PanopticResult]:
        """Panoptic, instance and semantic results for each image, at its own size.

        The result of an image does not depend on the other images of the batch: only its own
        patches and queries are merged, scored and fused.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
            patches: `B` `Patches` (masks at each image's size); computed with the SAM proposer
                when `None`.
            class_names: Class names, things first (default: the config's classes).
            num_things: Number of thing classes in `class_names` (0: stuff only).
            image_sizes: True `(h, w)` of each image padded bottom/right into the batch;
                default all `(H, W)`. Results are at these sizes.

        Returns:
            `B` `PanopticResult`s (`[]` for `B = 0`). With `config.precision="bf16"` the SAM
            proposer, `forward` and the open-vocabulary CLIP run under bfloat16 autocast; merging
            and fusion run on their float32 outputs.

        Raises:
            RuntimeError: If `patches` is `None` and the model has no proposer.
            ValueError: On bad inputs, as in `forward`.
        """
        images = as_image(images, name="images", dtype=self._dtype())
        sizes = resolve_image_sizes(images, image_sizes)
        names, num_things = self._resolve_classes(class_names, num_things)
        if patches is None:
            if self.proposer is None:
                raise RuntimeError("SAMCP.predict: pass patches or build with build_proposer=True")
            with self.precision_context(images.device):
                patches = self.proposer(images, sizes) if sizes else []
            patches = to_float32(patches)
        out = self.forward(images, patches, names, num_things=num_things, image_sizes=sizes)
        if not sizes:
            return []
        masks, _, _, pad = pad_patches(patches, size=out.image_size)
        merged = merge_patches(out.affinities[-1], masks, pad)
        text = self.text_embeddings(names).to(images.device, images.dtype)
        s = out.num_semantic
        dense_all: list[Tensor] = []
        if self.open_vocabulary is not None:
            with self.precision_context(images.device):
                dense_all = to_float32(self._dense_features(images, sizes))
        results = []
        for i, (p, (h, w)) in enumerate(zip(patches, sizes, strict=True)):
            k = s + p.num_patches  # this image's real queries
            logits = out.class_logits[-1, i, :k]
            masks_i = merged[i, :k, :h, :w]
            if self.open_vocabulary is not None:
                dense = dense_all[i]
                probs = self.open_vocabulary(logits[None], dense, masks_i[None], text)[0]
            else:
                probs = logits.sigmoid()
            scores, labels, valid = query_candidates(
                probs,
                out.affinities[-1, i, :k, : p.num_patches],
                num_semantic=s,
                num_things=num_things,
                affinity_threshold=self.config.affinity_threshold,
            )
            inst = select_instances(
                probs[s:, :num_things], masks_i[s:], max_per_image=self.config.max_per_image
            )
            results.append(
                self.fusion(scores, labels, masks_i, valid, instances=inst, num_things=num_things)
            )
        return results

    def _resolve_classes(
        self, class_names: str | Sequence[str] | None, num_things: int | None
    ) -> tuple[list[str], int]:
        if class_names is None:
            if num_things is not None and num_things != len(self.config.thing_classes):
                raise ValueError(
                    f"num_things: the default classes have {len(self.config.thing_classes)} "
                    f"things, got {num_things}"
                )
            return list(self.class_names), len(self.config.thing_classes)
        names = as_class_names(class_names, name="class_names")
        if num_things is None:
            if tuple(names) != self.class_names:
                raise ValueError("num_things: give num_things together with custom class_names")
            num_things = len(self.config.thing_classes)
        if isinstance(num_things, bool) or not isinstance(num_things, int):
            raise TypeError(f"num_things: expected an int, got {type(num_things).__name__}")
        if not 0 <= num_things <= len(names):
            raise ValueError(f"num_things: expected 0..{len(names)}, got {num_things}")
        return names, num_things


def _check_patch_sizes(
    patches: Sequence[Patches], sizes: Sequence[tuple[int, int]], default_sizes: bool
) -> None:
    """Each image's patch masks must be at that image's size."""
    for i, (p, hw) in enumerate(zip(patches, sizes, strict=True)):
        if not isinstance(p, Patches):
            raise TypeError(f"patches[{i}]: expected Patches, got {type(p).__name__}")
        if p.image_size != hw:
            hint = " (pass image_sizes for images padded into the batch)" if default_sizes else ""
            raise ValueError(
                f"patches[{i}]: expected masks at the image size {hw}, got {p.image_size}{hint}"
            )


def _empty_output(
    num_layers: int,
    num_semantic: int,
    num_classes: int,
    num_things: int,
    canvas: tuple[int, int],
    images: Tensor,
) -> SAMCPOutput:
    """The `SAMCPOutput` of an empty batch (`B = 0`)."""
    kw: dict[str, Any] = {"device": images.device, "dtype": images.dtype}
    return SAMCPOutput(
        affinities=torch.zeros(num_layers, 0, num_semantic, 0, **kw),
        class_logits=torch.zeros(num_layers, 0, num_semantic, num_classes, **kw),
        patch_boxes=torch.zeros(0, 0, 4, **kw),
        padding_mask=torch.zeros(0, 0, dtype=torch.bool, device=images.device),
        num_semantic=num_semantic,
        num_things=num_things,
        image_size=canvas,
        image_sizes=[],
    )


def _feature_extractor(cfg: SAMCPConfig, clip: ClipBackbone | ClipConvNeXt) -> nn.Module:
    if cfg.backbone == "clip":
        assert isinstance(clip, ClipConvNeXt)
        return BackboneFPN(
            backbone=clip, channels=clip.channels, strides=clip.strides, out_channels=cfg.dim
        )
    if cfg.backbone == "tiny":
        return TinyFeaturePyramid(dim=cfg.dim)
    if cfg.backbone.startswith("resnet"):
        return ResNetFPN(
            depth=int(cfg.backbone[len("resnet") :]),
            out_channels=cfg.dim,
            checkpoint=cfg.feature_checkpoint,
        )
    names = {"convnext_large": "convnext_large", "swin_large": "swin_large_patch4_window12_384"}
    return TimmFPN(
        model_name=names.get(cfg.backbone, cfg.backbone),
        out_channels=cfg.dim,
        checkpoint=cfg.feature_checkpoint,
        **cfg.backbone_kwargs,
    )


def _build_clip(cfg: SAMCPConfig) -> ClipBackbone | ClipConvNeXt:
    """The CLIP of the class embeddings: a ConvNeXt CLIP with `backbone="clip"`, else a ViT."""
    if cfg.feature_checkpoint is not None and cfg.backbone in ("tiny", "clip"):
        where = " (the CLIP's weights come from clip_checkpoint)" if cfg.backbone == "clip" else ""
        raise ValueError(
            f"feature_checkpoint: backbone {cfg.backbone!r} takes no trunk checkpoint{where}; "
            f"got {cfg.feature_checkpoint!r}"
        )
    if cfg.backbone != "clip":
        return build_clip_backbone(cfg.clip_name, cfg.clip_checkpoint, quick_gelu=cfg.quick_gelu)
    try:
        return build_clip_convnext(cfg.clip_name, cfg.clip_checkpoint, quick_gelu=cfg.quick_gelu)
    except ValueError as err:
        raise ValueError(f"clip_name: backbone='clip' needs a ConvNeXt CLIP: {err}") from err


def build_sam_cp(cfg: SAMCPConfig | dict | str | None = None, **overrides: Any) -> SAMCP:
    """Build SAM-CP from a config, a dict of fields, or the preset name `"tiny"`.

    Checkpoints are local files, never downloaded: `feature_checkpoint` for a `resnet*`
    backbone (a torchvision ResNet state dict; its `fc.*` classifier is dropped) or a timm one;
    with `backbone="clip"`, `clip_checkpoint` holds the open_clip ConvNeXt CLIP (`clip_name`,
    e.g. `"convnext_large_d_320"`) whose image tower feeds the FPN and whose text tower gives
    the class embeddings.

    Args:
        cfg: A `SAMCPConfig`, a dict of its fields, `"tiny"`, or `None` for the paper defaults.
        **overrides: Fields replaced after `cfg` is resolved.

    Returns:
        The `SAMCP` module (random weights unless checkpoints are given in the config).

    Raises:
        ValueError: On an unknown preset, a threshold / `kappa` outside `[0, 1]`, a
            `feature_checkpoint` for the `tiny` or `clip` backbones, a non-ConvNeXt
            `clip_name` with `backbone="clip"`, or a checkpoint that is unreadable or does not
            fit (the message names the file and lists the keys).

    Examples:
        >>> model = build_sam_cp("tiny", build_proposer=False, decoder_layers=1)
        >>> model.config.decoder_layers
        1
    """
    cfg = resolve_config(
        SAMCPConfig,
        cfg,
        overrides,
        presets={"tiny": SAMCPConfig.tiny, "tiny-synth": SAMCPConfig.tiny_synth},
        system="SAM-CP",
    )
    check_unit_interval(cfg.affinity_threshold, name="affinity_threshold")
    check_unit_interval(cfg.kappa, name="kappa")
    check_precision(cfg.precision, name="precision")
    clip = _build_clip(cfg)
    proposer = None
    if cfg.build_proposer:
        from samkit.backbones.sam import build_sam_backbone

        sam = build_sam_backbone(cfg.sam_variant, cfg.sam_checkpoint)
        sam.requires_grad_(False)
        proposer = SamPatchProposer(
            sam=sam,
            points_per_side=cfg.points_per_side,
            points_per_batch=cfg.points_per_batch,
            pred_iou_thresh=cfg.pred_iou_thresh,
            stability_score_thresh=cfg.stability_score_thresh,
            box_nms_thresh=cfg.box_nms_thresh,
            encoder_batch_size=cfg.encoder_batch_size,
            image_cache_size=cfg.image_cache_size,
        )
    return SAMCP(
        config=cfg,
        feature_extractor=_feature_extractor(cfg, clip),
        patch_encoder=PatchEncoder(
            dim=cfg.dim,
            num_heads=cfg.num_heads,
            ffn_dim=cfg.ffn_dim,
            mlp_dim=cfg.mlp_dim,
            num_layers=cfg.encoder_layers,
            roi_size=cfg.roi_size,
            finest_scale=cfg.finest_scale,
            use_mask_roi=cfg.use_mask_roi,
        ),
        semantic_queries=SemanticQueryEmbedding(text_dim=clip.embed_dim, dim=cfg.dim),
        decoder=AffinityDecoder(
            dim=cfg.dim,
            num_layers=cfg.decoder_layers,
            num_heads=cfg.num_heads,
            ffn_dim=cfg.ffn_dim,
            dynamic_cross_attention=cfg.dynamic_cross_attention,
            affinity_refinement=cfg.affinity_refinement,
            query_enhancement=cfg.query_enhancement,
        ),
        classifier=VisionLanguageClassifier(dim=cfg.dim, text_dim=clip.embed_dim),
        fusion=PanopticFusion(
            num_things=len(cfg.thing_classes),
            object_mask_threshold=cfg.object_mask_threshold,
            overlap_threshold=cfg.overlap_threshold,
            max_per_image=cfg.max_per_image,
        ),
        clip=clip,
        proposer=proposer,
        open_vocabulary=OpenVocabularyEnsemble(kappa=cfg.kappa) if cfg.open_vocabulary else None,
    )
