"""SSP-SAM: referring expression segmentation with SAM and a semantic-spatial prompt.

Tang et al., "SSP-SAM: SAM with Semantic-Spatial Prompt for Referring Expression Segmentation",
IEEE TCSVT 2025 (arXiv 2603.18086). Frozen CLIP (with CLIP-Surgery dense features) and a frozen
SAM image encoder; new heads (linguistic and visual attention adapters, tanh fusion, a
transformer prompt generator) turn an expression into `K` sparse prompt tokens for SAM's mask
decoder, which is fine-tuned at a lower learning rate. Generalised RES (zero, one or several
referents) needs no extra head: an empty mask means "no target". See `docs/systems/ssp-sam.md`.

This module only wires: the maths lives in `samkit.modules.{language,visual_adapter,prompting}`
and in the backbones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal

from torch import Tensor, nn

from samkit._cache import CacheInfo, EmbeddingCache, check_size
from samkit._checks import as_class_names, as_image
from samkit._precision import Precision, check_precision
from samkit.backbones._encoder_parts import sam_encoder_parts
from samkit.backbones.clip import ClipBackbone, build_clip_backbone, similarity_map
from samkit.backbones.sam import SamBackbone, build_sam_backbone
from samkit.backbones.sam2_backend import Sam2Backbone
from samkit.metrics.referring import has_target_from_mask
from samkit.modules.language import LinguisticAttentionAdapter
from samkit.modules.prompting import SemanticSpatialPromptEncoder, TanhFusion
from samkit.modules.visual_adapter import VisualAttentionAdapter, clip_patch_tokens, letterbox
from samkit.systems._config import resolve_config
from samkit.systems._pretrained import BackboneSource, PretrainedModule
from samkit.types import (
    ClipDenseOutput,
    ImageEmbedding,
    Prompts,
    ReferringOutput,
    SemanticSpatialPrompts,
    TextEmbedding,
)

__all__ = [
    "REFERENCE_QUIRKS",
    "SSPSAM",
    "SSPSAMConfig",
    "SSPSAMOutput",
    "SSP_SAM_PRESETS",
    "build_ssp_sam",
    "config_dict",
]


@dataclass
class SSPSAMConfig:
    """Configuration of SSP-SAM; defaults are the paper's main setting (CLIP L/14@336, SAM-H).

    The quirk switches (`feature_norm`, `gru_over_padding`) default to the cleaner behaviour;
    `REFERENCE_QUIRKS` holds the values the released code and weights use.
    """

    clip_name: str = "ViT-L-14-336"  # open_clip model name of the frozen CLIP
    clip_checkpoint: str | None = None  # local CLIP weights (OpenAI JIT / state dict); None: random
    quick_gelu: bool | None = None  # CLIP activation; None: read from the checkpoint (OpenAI: on)
    clip_image_size: int = 336  # side S of the square CLIP input canvas
    surgery_depth: int = 6  # trailing CLIP blocks that get CLIP-Surgery's v-v attention path
    clip_trainable: Literal["none", "attention_qv", "visual", "all"] = "none"  # paper: "none"
    clip_lr: float = 1e-5  # learning rate of the trainable CLIP parameters, if any
    sam_variant: str = "vit_h"  # SAM backbone variant ("vit_b", "vit_l", "vit_h", "tiny")
    sam_checkpoint: str | None = None  # local SAM weights; None: random
    adapter_dim: int = 512  # width of the linguistic and visual attention adapters
    adapter_heads: int = 8  # heads of the visual adapter's token-to-word cross-attention
    adapter_dropout: float = 0.1  # dropout of that cross-attention
    visual_mlp_layers: int = 3  # layers of the patch-projection MLP
    gate: Literal["gaussian", "cosine"] = "gaussian"  # visual verification gate (paper: gaussian)
    num_prompts: int = 128  # Q: learnable prompt tokens handed to SAM
    depth: int = 6  # layers of the prompt-generator transformer encoder
    num_heads: int = 8  # heads of the prompt-generator encoder
    mlp_dim: int = 2048  # feed-forward width of the prompt-generator encoder
    encoder_dropout: float = 0.0  # dropout of the prompt-generator encoder
    text_template: str = "{}."  # every expression is formatted with this template
    lowercase: bool = True  # lower-case expressions before formatting
    text_length: int | None = None  # tokens kept per text (None: CLIP's context length, 77)
    feature_norm: Literal["channel", "token"] = "channel"  # CLIP token L2 axis (reference: token)
    gru_over_padding: bool = False  # run the BiGRU over padding too (reference: True)
    has_target_min_fraction: float = 50 / 512**2  # positive-area share that counts as a target
    target_head: bool = False  # GRES decision from a register-token logit instead of mask area
    lr: float = 1e-4  # learning rate of the new heads and the prompt generator
    decoder_lr: float = 1e-5  # learning rate of SAM's mask decoder
    weight_decay: float = 1e-4  # AdamW weight decay of every group
    decoder_freeze_epochs: int = 20  # epochs the mask decoder stays frozen at the start
    text_cache_size: int = 0  # expressions whose CLIP text encodings are cached (LRU; 0: off)
    image_cache_size: int = 0  # images whose SAM / CLIP encodings are cached (LRU; 0: off)
    encoder_batch_size: int = 8  # images per SAM / CLIP encoder call (bounds memory; 0: all)
    precision: Precision = "fp32"  # "bf16": encoders, prompt generator, decoder in bf16 autocast


SSPSAMOutput = ReferringOutput
"""The output of `SSPSAM.forward` (an alias of `samkit.types.ReferringOutput`)."""

REFERENCE_QUIRKS: dict[str, Any] = {"feature_norm": "token", "gru_over_padding": True}
"""Overrides that reproduce the released SSP-SAM code (spec §8.2, §8.14)."""

_TINY: dict[str, Any] = {
    "clip_name": "tiny",
    "clip_image_size": 64,
    "sam_variant": "tiny",
    "adapter_dim": 64,
    "adapter_heads": 4,
    "num_prompts": 8,
    "depth": 2,
    "num_heads": 4,
    "mlp_dim": 128,
    "text_length": 16,
    "decoder_lr": 1e-4,
    "decoder_freeze_epochs": 0,
    "has_target_min_fraction": 0.005,
}

SSP_SAM_PRESETS: dict[str, dict[str, Any]] = {
    "vit_l14_336": {},
    "vit_b16_224": {"clip_name": "ViT-B-16", "clip_image_size": 224},
    "tiny": _TINY,
    "tiny-synth": {
        **_TINY,
        "clip_name": "tiny-synth",
        "clip_image_size": 128,
        "surgery_depth": 2,
        "sam_variant": "tiny-synth",
    },
}
"""Named presets: the paper's two variants; `tiny-synth` (the shipped pretrained tiny backbones,
heads at `tiny` size) and `tiny` (random tiny backbones) for CPU examples and tests."""


class SSPSAM(PretrainedModule):
    """SSP-SAM: CLIP features and an expression in, one SAM mask, a box and a GRES decision out.

    Save and load a trained model with `save_pretrained` / `SSPSAM.from_pretrained`.

    Examples:
        >>> model = build_ssp_sam("tiny")
        >>> out = model(torch.rand(2, 3, 128, 128), ["the red circle", "all squares"])
        >>> out.low_res_logits.shape, out.boxes.shape, out.prompts.shape
        (torch.Size([2, 1, 64, 64]), torch.Size([2, 4]), torch.Size([2, 8, 32]))
    """

    system_name = "ssp_sam"
    display_name = "SSP-SAM"
    config_class = SSPSAMConfig

    def __init__(
        self,
        *,
        config: SSPSAMConfig,
        clip: ClipBackbone,
        sam: SamBackbone | Sam2Backbone,
        language: LinguisticAttentionAdapter,
        visual: VisualAttentionAdapter,
        fusion: TanhFusion,
        prompt_encoder: SemanticSpatialPromptEncoder,
    ) -> None:
        """Assemble already built parts; prefer `build_ssp_sam`.

        Args:
            config: The configuration the parts were built from.
            clip: Frozen CLIP backbone.
            sam: SAM backbone (encoder and prompt encoder frozen by `build_ssp_sam`).
            language: Linguistic attention adapter.
            visual: Visual attention adapter.
            fusion: Tanh fusion to SAM's prompt width.
            prompt_encoder: Semantic-spatial prompt generator.
        """
        super().__init__()
        self.config = config
        self.clip = clip
        self.sam = sam
        self.language = language
        self.visual = visual
        self.fusion = fusion
        self.prompt_encoder = prompt_encoder
        self._text_cache = EmbeddingCache(config.text_cache_size, name="text_cache_size")
        size = check_size(config.image_cache_size, name="image_cache_size")
        check_size(config.encoder_batch_size, name="encoder_batch_size")
        self._image_caches = {"sam": EmbeddingCache(size), "clip": EmbeddingCache(size)}

    @classmethod
    def _build_from_config(cls, config: Any) -> SSPSAM:
        return build_ssp_sam(config)

    def _backbone_sources(self) -> list[BackboneSource]:
        # the mask decoder is fine-tuned, so only SAM's image and prompt encoders may be left out
        return [
            BackboneSource(
                "clip", "clip_checkpoint", ("clip",), frozen=self.config.clip_trainable == "none"
            ),
            BackboneSource("sam", "sam_checkpoint", ("sam.image_encoder", "sam.prompt_encoder")),
        ]

    # ------------------------------------------------------------------ encoders (frozen)
    def tokenize(self, expressions: str | Sequence[str]) -> Tensor:
        """Format (template, lower-case) and tokenize expressions: `(B, L)` long.

        Args:
            expressions: `B` expressions; one `str` is one expression (`B = 1`).

        Raises:
            ValueError: If a text does not fit in `config.text_length` tokens.
        """
        cfg = self.config
        texts = [
            cfg.text_template.format(e.lower() if cfg.lowercase else e)
            for e in _as_expressions(expressions)
        ]
        tokens = self.clip.tokenize(texts)
        length = cfg.text_length or tokens.shape[1]
        if bool((tokens[:, length:] != 0).any()):
            raise ValueError(f"an expression is longer than text_length={length} tokens: {texts}")
        return tokens[:, :length]

    def encode_text(
        self, expressions: str | Sequence[str] | None = None, *, tokens: Tensor | None = None
    ) -> TextEmbedding:
        """Sentence embeddings `(B, C_e)` and word states `(B, L, C_t)` from CLIP's text tower.

        One `str` is one expression. The encodings of the last `config.text_cache_size`
        distinct expressions are cached, one entry per expression, keyed by its token ids
        (after the template, lower-casing and `text_length`), the call context (train/eval
        flags, inference and autocast modes) and the state of CLIP's weights; the cache is
        bypassed while CLIP can receive gradients. See `docs/performance/caches.md`.
        """
        if tokens is None:
            if expressions is None:
                raise ValueError("SSPSAM: pass expressions or tokens")
            tokens = self.tokenize(expressions)
        ids = tokens
        cache = self._text_cache
        if cache.maxsize == 0:
            return self.clip.encode_tokens(tokens)
        keys = [(tuple(row), tokens.shape[1]) for row in tokens.tolist()]
        return cache.rows([self.clip], keys, lambda i: self.clip.encode_tokens(ids[i]))

    def text_cache_info(self) -> CacheInfo:
        """Hits, misses, bypasses (counted per expression), size and capacity of the text cache."""
        return self._text_cache.info()

    def clear_text_cache(self) -> None:
        """Drop the cached expression encodings."""
        self._text_cache.clear()

    def image_cache_info(self) -> dict[str, CacheInfo]:
        """Hits, misses, bypasses (counted per image), size and capacity of each image cache.

        Returns:
            `{"sam": ..., "clip": ...}`: SAM's image embeddings and CLIP's dense features.
        """
        return {name: cache.info() for name, cache in self._image_caches.items()}

    def clear_image_cache(self) -> None:
        """Drop the cached SAM and CLIP image encodings."""
        for cache in self._image_caches.values():
            cache.clear()

    def encode_sam(self, images: Tensor) -> ImageEmbedding:
        """SAM's image embeddings, `config.encoder_batch_size` images per encoder call.

        With `config.image_cache_size > 0` each image's embedding is cached, keyed by its
        content (SHA-256 of its bytes, shape, dtype, device), the call context and SAM's
        weight state (see `docs/performance/caches.md`); bypassed while gradients could flow.
        With `config.precision="bf16"` SAM runs under bf16 autocast and the embeddings are
        float32; otherwise they are in SAM's compute dtype.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` or uint8 (divided by 255).
        """
        with self.precision_context(images.device):
            out = self._image_caches["sam"].images(
                sam_encoder_parts(self.sam) or [self.sam],
                images,
                "sam",
                lambda i: self.sam.encode(images[i]),
                batch_size=self.config.encoder_batch_size,
            )
        return self.precision_outputs(out)

    def encode_clip(self, images: Tensor) -> ClipDenseOutput:
        """CLIP-Surgery dense features `(B, C_e, h, w)` and CLS `(B, C_e)` on the CLIP canvas.

        `images` follow the image contract (uint8, or float in `[0, 1]`; see `forward`).
        Encoded `config.encoder_batch_size` images at a time and cached per image like
        `encode_sam` (plus the canvas size and surgery depth). With `config.precision="bf16"`
        CLIP runs under bf16 autocast and the features are float32.
        """
        cfg = self.config

        def compute(index: Tensor | slice) -> ClipDenseOutput:
            canvas = letterbox(images[index], size=cfg.clip_image_size, fill=self.clip.pixel_mean)
            return self.clip.encode_dense(canvas, mode="surgery", surgery_depth=cfg.surgery_depth)

        with self.precision_context(images.device):
            out = self._image_caches["clip"].images(
                [self.clip],
                images,
                ("surgery", cfg.clip_image_size, cfg.surgery_depth),
                compute,
                batch_size=cfg.encoder_batch_size,
            )
        return self.precision_outputs(out)

    # ------------------------------------------------------------------ trainable path
    def prompt(self, clip_features: ClipDenseOutput, text: TextEmbedding) -> SemanticSpatialPrompts:
        """Run the adapters, the fusion and the prompt generator (spec §1.2 steps 2-8)."""
        assert text.token_states is not None and text.padding_mask is not None
        return self.prompt_from_tensors(
            clip_features.features,
            clip_features.cls,
            text.embeddings,
            text.token_states,
            text.padding_mask,
        )

    def prompt_from_tensors(
        self,
        clip_features: Tensor,
        clip_cls: Tensor,
        text_embeddings: Tensor,
        token_states: Tensor,
        padding_mask: Tensor,
    ) -> SemanticSpatialPrompts:
        """`prompt` on plain tensors (what the ONNX export of the prompt path traces).

        Args:
            clip_features: Dense CLIP features `(B, C_e, g, g)` (`ClipDenseOutput.features`).
            clip_cls: CLIP's CLS embedding `(B, C_e)` (`ClipDenseOutput.cls`).
            text_embeddings: Sentence embeddings `(B, C_e)` (`TextEmbedding.embeddings`).
            token_states: Word states `(B, L, C_t)` (`TextEmbedding.token_states`).
            padding_mask: `(B, L)` bool, True at padding (`TextEmbedding.padding_mask`).

        Returns:
            The `SemanticSpatialPrompts` of `prompt`.
        """
        patches = clip_patch_tokens(clip_features, clip_cls, axis=self.config.feature_norm)
        similarity = similarity_map(patches, text_embeddings)
        lang = self.language(token_states, padding_mask)
        visual = self.visual(patches, similarity, lang.words, padding_mask)
        return self.prompt_encoder(self.fusion(visual, lang.sentence))

    def decode(
        self, embedding: ImageEmbedding, prompts: SemanticSpatialPrompts, *, upsample: bool = False
    ) -> ReferringOutput:
        """Decode the prompts with SAM (sparse prompts, `no_mask_embed` dense, single mask)."""
        pred = self.sam.predict(
            embedding,
            Prompts(sparse_embeddings=prompts.prompts[:, None]),
            multimask=False,
            upsample=upsample,
        )
        low_res = pred.low_res_logits[:, 0]
        if prompts.presence_logits is not None:
            has_target = prompts.presence_logits > 0
        else:
            has_target = has_target_from_mask(
                low_res, min_fraction=self.config.has_target_min_fraction
            )
        return ReferringOutput(
            low_res_logits=low_res,
            iou_scores=pred.iou_scores[:, 0],
            boxes=prompts.boxes,
            has_target=has_target,
            prompts=prompts.prompts,
            logits=pred.logits[:, 0] if pred.logits is not None else None,
            target_logits=prompts.presence_logits,
        )

    def forward(
        self,
        images: Tensor | None,
        expressions: str | Sequence[str] | None = None,
        *,
        tokens: Tensor | None = None,
        text: TextEmbedding | None = None,
        clip_features: ClipDenseOutput | None = None,
        sam_embeddings: ImageEmbedding | None = None,
        upsample: bool = False,
    ) -> ReferringOutput:
        """Segment what each expression refers to in its image.

        Frozen parts can be precomputed and passed in (the reference caches SAM embeddings):
        `text` from `encode_text`, `clip_features` from `encode_clip`, `sam_embeddings` from
        `encode_sam` (or `sam.encode`). `images` may then be `None`.

        With `config.precision="bf16"` the image encoders, the adapters, the prompt generator
        and SAM's decoder run under bfloat16 autocast (on the images' device) and every floating
        output is float32; the text tower stays in float32.

        To compile it, tokenise outside: `compiled(images, tokens=model.tokenize(expressions))`
        traces with no graph break under `torch.compile(model, fullgraph=True)` once
        `torch._dynamo.config.allow_rnn = True` (the linguistic adapter is a BiGRU); see
        `docs/performance/compile.md`.

        Args:
            images: RGB images `(B, 3, H, W)`, one per expression: float in `[0, 1]` (any float
                dtype) or uint8 (divided by 255). `B = 0` gives empty outputs.
            expressions: `B` expressions (formatted with `config.text_template`); one `str` is
                one expression.
            tokens: Alternatively, CLIP token ids `(B, L)`.
            text: Alternatively, a precomputed `TextEmbedding` with token states.
            clip_features: Precomputed `encode_clip(images)`.
            sam_embeddings: Precomputed `encode_sam(images)` (or `sam.encode(images)`).
            upsample: Also return mask logits at the original image size.

        Returns:
            `ReferringOutput`: `low_res_logits (B, 1, 4h, 4w)` in SAM's padded input frame,
            `iou_scores (B, 1)`, `boxes (B, 4)` (normalised cxcywh on the CLIP canvas),
            `has_target (B,)`, `prompts (B, K, D)` and, with `upsample`, `logits (B, 1, H, W)`.
            Float32 with `precision="bf16"`; otherwise in the model's compute dtype.

        Raises:
            ValueError: If neither images nor the matching precomputed inputs are given, if
                `images` is not a valid image batch (NaN/Inf, float values outside `[0, 1]`), or
                if the number of expressions differs from the number of images.
        """
        if (clip_features is None or sam_embeddings is None) and images is None:
            raise ValueError("SSPSAM: images are needed unless clip_features and sam_embeddings")
        if images is not None:
            images = as_image(images, name="images")
        if text is None:
            if expressions is not None:
                expressions = _as_expressions(expressions)
                if images is not None and len(expressions) != images.shape[0]:
                    raise ValueError(
                        f"expressions: expected one per image (B={images.shape[0]}), "
                        f"got {len(expressions)}"
                    )
            text = self.encode_text(expressions, tokens=tokens)
        if clip_features is None:
            assert images is not None
            clip_features = self.encode_clip(images)
        if sam_embeddings is None:
            assert images is not None
            sam_embeddings = self.encode_sam(images)
        with self.precision_context(sam_embeddings.embeddings.device):
            out = self.decode(sam_embeddings, self.prompt(clip_features, text), upsample=upsample)
        return self.precision_outputs(out)

    # ------------------------------------------------------------------ training helpers
    def heads(self) -> dict[str, nn.Module]:
        """The new (trainable) heads by name."""
        return {
            "language": self.language,
            "visual": self.visual,
            "fusion": self.fusion,
            "prompt_encoder": self.prompt_encoder,
        }

    def set_decoder_frozen(self, frozen: bool) -> None:
        """Freeze or unfreeze SAM's mask decoder (the reference freezes it for 20 epochs)."""
        self.sam.mask_decoder.requires_grad_(not frozen)

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups of spec §1.3: heads, prompt-generator encoder, mask decoder.

        Returns:
            Three groups (`"rest"` and `"vl_transformer"` at `config.lr`, `"mask_decoder"` at
            `config.decoder_lr`), each with `config.weight_decay`, plus a fourth, `"clip"` at
            `config.clip_lr`, when `config.clip_trainable` is not `"none"`. Frozen CLIP and SAM
            encoder parameters are not included; the decoder is included even while frozen.
        """
        cfg = self.config
        encoder = [p for layer in self.prompt_encoder.layers for p in layer.parameters()]
        encoder_ids = {id(p) for p in encoder}
        rest = [
            p
            for head in self.heads().values()
            for p in head.parameters()
            if id(p) not in encoder_ids
        ]
        groups = [
            ("rest", rest, cfg.lr),
            ("vl_transformer", encoder, cfg.lr),
            ("mask_decoder", list(self.sam.mask_decoder.parameters()), cfg.decoder_lr),
        ]
        clip = self.clip.param_groups(cfg.clip_lr, lr_multiplier=1.0)  # [] while frozen
        return [
            {"name": n, "params": ps, "lr": lr, "weight_decay": cfg.weight_decay}
            for n, ps, lr in groups
        ] + [{**g, "weight_decay": cfg.weight_decay} for g in clip]

    def train(self, mode: bool = True) -> SSPSAM:
        """Set training mode; a frozen CLIP and the SAM image encoder stay in eval mode."""
        super().train(mode)
        self.clip.train(mode)  # stays in eval mode while its policy is "none"
        self.sam.image_encoder.train(False)
        self.sam.prompt_encoder.train(False)
        return self


def _as_expressions(expressions: str | Sequence[str]) -> list[str]:
    """One `str` is one expression; otherwise a sequence of `str` (empty for `B = 0`)."""
    return as_class_names(expressions, name="expressions", allow_empty=True)


def _resolve(cfg: SSPSAMConfig | dict | str | None, overrides: dict[str, Any]) -> SSPSAMConfig:
    presets = {name: partial(SSPSAMConfig, **kw) for name, kw in SSP_SAM_PRESETS.items()}
    return resolve_config(SSPSAMConfig, cfg, overrides, presets=presets, system="SSP-SAM")


def build_ssp_sam(cfg: SSPSAMConfig | dict | str | None = None, **overrides: Any) -> SSPSAM:
    """Build SSP-SAM: backbones (frozen as in spec §1.3) plus freshly initialised heads.

    Args:
        cfg: A config, a dict of its fields, a preset name from `SSP_SAM_PRESETS`
            (`"vit_l14_336"`, `"vit_b16_224"`, `"tiny"`), or `None` for the paper default.
        **overrides: Config fields to replace, e.g. `**REFERENCE_QUIRKS`.

    Returns:
        The model in eval mode, on the CPU: CLIP frozen (unless `clip_trainable` says otherwise;
        the paper keeps it frozen), SAM image and prompt encoders frozen,
        mask decoder trainable (frozen when `decoder_freeze_epochs > 0`; call
        `set_decoder_frozen(False)` when that many epochs are done).

    Raises:
        ValueError: For an unknown preset or field, or a `precision` other than `"fp32"` and
            `"bf16"`.

    Examples:
        >>> model = build_ssp_sam("tiny", **REFERENCE_QUIRKS)
        >>> model.config.feature_norm, model.prompt_encoder.num_tokens
        ('token', 64)
    """
    config = _resolve(cfg, overrides)
    check_precision(config.precision, name="precision")
    clip = build_clip_backbone(
        config.clip_name, config.clip_checkpoint, quick_gelu=config.quick_gelu
    )
    clip.set_trainable(config.clip_trainable)
    sam = build_sam_backbone(config.sam_variant, config.sam_checkpoint)
    sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)
    grid = config.clip_image_size // clip.patch_size
    model = SSPSAM(
        config=config,
        clip=clip,
        sam=sam,
        language=LinguisticAttentionAdapter(
            text_dim=clip.text_width,
            dim=config.adapter_dim,
            gru_over_padding=config.gru_over_padding,
        ),
        visual=VisualAttentionAdapter(
            visual_dim=clip.embed_dim,
            dim=config.adapter_dim,
            num_heads=config.adapter_heads,
            num_layers=config.visual_mlp_layers,
            dropout=config.adapter_dropout,
            gate=config.gate,
        ),
        fusion=TanhFusion(dim=config.adapter_dim, out_dim=sam.prompt_dim),
        prompt_encoder=SemanticSpatialPromptEncoder(
            dim=sam.prompt_dim,
            num_prompts=config.num_prompts,
            num_tokens=grid * grid,
            depth=config.depth,
            num_heads=config.num_heads,
            mlp_dim=config.mlp_dim,
            dropout=config.encoder_dropout,
            presence_head=config.target_head,
        ),
    )
    model.set_decoder_frozen(config.decoder_freeze_epochs > 0)
    return model.eval()


def config_dict(cfg: SSPSAMConfig) -> dict[str, Any]:
    """The config as a plain dict (for JSON checkpoints)."""
    return asdict(cfg)
