"""SAM-MI: open-vocabulary semantic segmentation with SAM masks injected into cost aggregation.

Wiring only (spec `sam-mi.md`): CLIP gives dense value-path features, two block taps and class
text embeddings; `cost_volume` feeds the text-guided sparse point prompter (TSPP), whose sampled
points prompt a frozen SAM one point at a time; shallow mask aggregation (SMAgg) merges the SAM
masks inside TSPP's text masks; decoupled mask injection (DMI) turns the merged masks into the
appearance and decoder guidance of CAT-Seg's `CostAggregator`, which outputs the class logits.
Training is two-stage (§3.5): `configure_stage(1)` trains TSPP alone, `configure_stage(2)` trains
everything but SAM, with TSPP at a reduced learning rate and CLIP's attention q/v projections at
`lr x 0.01` (CAT-Seg's fine-tuning policy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samkit._cache import CacheInfo, EmbeddingCache, check_size
from samkit._checks import as_class_names, as_image, check_shape
from samkit._precision import Precision, check_precision
from samkit.backbones._encoder_parts import sam_encoder_parts
from samkit.backbones.clip import ClipBackbone, build_clip_backbone
from samkit.modules.aggregation import ShallowMaskAggregator, point_masks
from samkit.modules.cost_aggregation import CostAggregator, cost_volume
from samkit.modules.injection import (
    DecoupledMaskInjection,
    HighFrequencyInjection,
    LowFrequencyInjection,
)
from samkit.modules.tspp import TextGuidedSparsePointPrompter, grid_points, sample_points
from samkit.systems._config import resolve_config
from samkit.systems._pretrained import BackboneSource, PretrainedModule
from samkit.systems._text_cache import TextCacheInfo, TextEmbeddingCache
from samkit.types import ClipDenseOutput, ImageEmbedding, SAMMIOutput, TSPPOutput

__all__ = ["SAMMI", "SAMMIConfig", "build_sam_mi"]


@dataclass
class SAMMIConfig:
    """SAM-MI hyper-parameters; the defaults are the paper's setting (ViT-B/16 CLIP, SAM ViT-H).

    Examples:
        >>> cfg = SAMMIConfig.tiny()
        >>> cfg.clip_name, cfg.sam_variant, cfg.grid, SAMMIConfig().alpha
        ('tiny', 'tiny', 32, 0.5)
    """

    clip_name: str = "ViT-B-16"  # open_clip model name, or "tiny"
    clip_checkpoint: str | None = None  # local CLIP weights (never downloaded)
    quick_gelu: bool | None = None  # CLIP activation; None: read from the checkpoint (OpenAI: on)
    clip_size: int = 384  # CLIP input side (CAT-Seg: 384 for ViT-B/16, 336 for ViT-L/14)
    clip_taps: tuple[int, ...] = (3, 7)  # CLIP blocks feeding the x2 / x4 decoder stages
    templates: tuple[str, ...] = ("A photo of a {} in the scene",)  # CAT-Seg "single" template
    text_cache_size: int = 8  # vocabularies whose text embeddings are cached (LRU; 0: off)
    clip_finetune: Literal["none", "attention_qv", "all"] = "attention_qv"  # stage-2 CLIP policy
    sam_variant: str = "vit_h"  # SAM backbone ("vit_b", "vit_l", "vit_h", "tiny")
    sam_checkpoint: str | None = None  # local SAM weights (never downloaded)
    sam_batch_size: int = 64  # point prompts decoded at once per image
    prompting: Literal["tspp", "grid"] = "tspp"  # "grid": dense grid x grid points (ablation)
    use_smagg: bool = True  # shallow mask aggregation (ablation switch)
    use_low_injection: bool = True  # low-frequency half of DMI (ablation switch)
    use_high_injection: bool = True  # high-frequency half of DMI (ablation switch)
    grid: int = 32  # TSPP point grid side d_h = d_w
    g_p: float = 5.0  # grid cells per expected point (eq. 5)
    m_p: int = 10  # cap on expected points per mask (eq. 5)
    alpha: float = 0.5  # SMAgg threshold alpha_sma
    lambda_mse: float = 0.5  # weight of L_mse in L_tspp
    lambda_tspp: float = 0.1  # weight of L_tspp in stage 2
    sampling: Literal["bernoulli", "deterministic"] = "bernoulli"  # TSPP point sampling rule
    sample_seed: int | None = 0  # seed of each image's Bernoulli draws (None: global RNG)
    tspp_dim: int = 64  # TSPP hidden width [open]
    tspp_heads: int = 4  # TSPP class-attention heads [open]
    tspp_reduction: Literal["max", "mean"] = "max"  # class -> cell probability reduction [open]
    tspp_text_grad: bool = True  # L_tspp reaches the text encoder (paper stops visual grads only)
    dim: int = 128  # cost-embedding channels
    num_layers: int = 2  # aggregation layers (spatial + class)
    num_heads: int = 4  # aggregation attention heads
    window_size: int = 12  # Swin window of spatial aggregation
    guidance_dim: int = 128  # projected appearance guidance channels
    text_guidance_dim: int = 128  # projected text guidance channels
    tap_dims: tuple[int, ...] = (256, 128)  # channels of the upsampled CLIP taps (F_h1, F_h2)
    decoder_guidance_dims: tuple[int, ...] = (32, 16)  # projected decoder guidance channels
    decoder_dims: tuple[int, ...] = (64, 32)  # upsampling decoder stage widths
    pooling_size: tuple[int, int] = (2, 2)  # class-aggregation pooling in training
    eval_pooling_size: tuple[int, int] = (1, 1)  # class-aggregation pooling in eval
    pad_len: int = 256  # class padding / truncation length of class aggregation
    double_residual: bool = True  # CAT-Seg's doubled class-aggregation residual
    cost_embedding: Literal["conv", "mlp"] = "conv"  # CAT-Seg 7x7 conv or per-pixel MLP [open]
    injection_heads: int = 8  # heads of the low-frequency cross attention
    injection_hidden_dim: int = 32  # channels of proj(M) in the high-frequency injection
    lr: float = 2e-4  # base learning rate (AdamW)
    weight_decay: float = 1e-4  # AdamW weight decay
    clip_lr_multiplier: float = 0.01  # CLIP lr = lr x this (paper: 2e-6)
    tspp_lr_multiplier: float = 0.1  # TSPP lr in stage 2 = lr x this [open: "reduced"]
    image_cache_size: int = 0  # images whose SAM / CLIP encodings are cached (LRU; 0: off)
    encoder_batch_size: int = 8  # images per SAM / CLIP encoder call (bounds memory; 0: all)
    precision: Precision = "fp32"  # "bf16": CLIP image side, TSPP, SAM, heads in bf16 autocast

    @classmethod
    def tiny(cls, **overrides: Any) -> SAMMIConfig:
        """A small CPU preset: tiny CLIP (C_e 32, 4 blocks) and tiny SAM, 64 px CLIP input."""
        base = cls(
            clip_name="tiny",
            clip_size=64,
            clip_taps=(1, 2),
            sam_variant="tiny",
            tspp_dim=16,
            tspp_heads=2,
            dim=32,
            num_heads=4,
            window_size=4,
            guidance_dim=32,
            text_guidance_dim=32,
            tap_dims=(32, 16),
            decoder_guidance_dims=(16, 8),
            decoder_dims=(32, 16),
            pad_len=0,
            injection_heads=4,
            injection_hidden_dim=8,
            lr=1e-3,
            # random-weight CLIP has no image-text alignment to protect: train all of it at lr
            clip_finetune="all",
            clip_lr_multiplier=1.0,
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def tiny_synth(cls, **overrides: Any) -> SAMMIConfig:
        """`tiny` heads on the shipped pretrained `tiny-synth` SAM and CLIP (128 px CLIP input).

        The pretrained CLIP's image-text alignment is kept as the paper does: only its q and v
        projections are fine-tuned, at a tenth of the base learning rate. `lambda_mse` is 100,
        not the paper's 0.5: `L_mse` is a mean over the `g x g` cells, whose targets are mostly
        zero (a few hundredths where a segment lies), so at 0.5 it is under 1 % of `L_tspp`
        and the probability head learns to under-predict small segments (about fourfold on
        generated scenes, which then get no point); at 100 TSPP reaches the coverage target
        (docs/systems/sam-mi.md). The paper does not say whether its MSE is a mean or a sum
        over cells; a sum over the 1024 cells would make its 0.5 a 512 here.
        """
        base = cls.tiny(
            clip_name="tiny-synth",
            clip_size=128,
            sam_variant="tiny-synth",
            clip_finetune="attention_qv",
            clip_lr_multiplier=0.1,
            lambda_mse=100.0,
        )
        return dataclasses.replace(base, **overrides)


class SAMMI(PretrainedModule):
    """The SAM-MI model (see the module docstring for the data flow).

    Save and load a trained model with `save_pretrained` / `SAMMI.from_pretrained`. The model
    is open-vocabulary (`forward` takes the class names); set `class_names` to the vocabulary it
    was trained on to keep it with the saved model.

    Examples:
        >>> model = build_sam_mi("tiny").eval()
        >>> with torch.no_grad():
        ...     out = model(torch.rand(1, 3, 64, 64), ["circle", "grass", "sky"])
        >>> out.logits.shape, out.tspp.prob.shape
        (torch.Size([1, 3, 32, 32]), torch.Size([1, 32, 32]))
    """

    system_name = "sam_mi"
    display_name = "SAM-MI"
    config_class = SAMMIConfig

    class_names: tuple[str, ...] | None = None
    """The vocabulary the model was trained on, if known (saved and restored with the model)."""

    _custom_backbones: tuple[str, ...] = ()  # backbones `build_sam_mi` got as modules

    def __init__(
        self,
        *,
        config: SAMMIConfig,
        clip: ClipBackbone,
        sam: Any,
        aggregator: CostAggregator,
        tspp: TextGuidedSparsePointPrompter | None,
        smagg: ShallowMaskAggregator | None,
        injection: DecoupledMaskInjection,
    ) -> None:
        """Assemble built parts (prefer `build_sam_mi`).

        Args:
            config: The configuration the parts were built from.
            clip: The CLIP backbone.
            sam: A `SamLike` backend (kept frozen).
            aggregator: The cost aggregator.
            tspp: The point prompter, or None when neither TSPP prompting nor SMAgg is used.
            smagg: The mask aggregator, or None to skip aggregation.
            injection: The decoupled mask injection (halves may be off).
        """
        super().__init__()
        if config.prompting == "tspp" and tspp is None:
            raise ValueError("prompting='tspp' needs a TextGuidedSparsePointPrompter")
        if smagg is not None and tspp is None:
            raise ValueError("shallow mask aggregation needs the prompter's text masks")
        self.config = config
        self.clip = clip
        self.sam = sam
        self.aggregator = aggregator
        self.tspp = tspp
        self.smagg = smagg
        self.injection = injection
        self._text_cache = TextEmbeddingCache(config.text_cache_size, name="text_cache_size")
        size = check_size(config.image_cache_size, name="image_cache_size")
        check_size(config.encoder_batch_size, name="encoder_batch_size")
        # a SAM that is no nn.Module is never cached: its weight state cannot be read
        self._image_caches = {
            "sam": EmbeddingCache(size if sam_encoder_parts(sam) is not None else 0),
            "clip": EmbeddingCache(size),
        }
        if isinstance(sam, nn.Module):
            sam.requires_grad_(False)

    @classmethod
    def _build_from_config(cls, config: Any) -> SAMMI:
        return build_sam_mi(config)

    def _backbone_sources(self) -> list[BackboneSource]:
        # stage 2 fine-tunes CLIP unless clip_finetune is "none"; SAM never trains
        return [
            BackboneSource(
                "clip", "clip_checkpoint", ("clip",), frozen=self.config.clip_finetune == "none"
            ),
            BackboneSource("sam", "sam_checkpoint", ("sam",)),
        ]

    def _vocabulary(self) -> tuple[list[str] | None, int | None]:
        if self.class_names is None:
            return None, None
        return list(self.class_names), 0

    def _set_vocabulary(self, class_names: list[str] | None, num_things: int | None) -> None:
        self.class_names = None if class_names is None else tuple(class_names)

    def _check_savable(self) -> None:
        if self._custom_backbones:
            given = " and ".join(f"{n}=" for n in self._custom_backbones)
            raise ValueError(
                f"save_pretrained: this SAM-MI was built with {given} module(s) given to "
                "build_sam_mi, which its config cannot rebuild; build it from the config "
                "(sam_variant / sam_checkpoint, clip_name / clip_checkpoint) to save it"
            )

    def encode_text(self, class_names: str | Sequence[str]) -> Tensor:
        """Class text embeddings `(T, C_e)` with the configured templates.

        The embeddings of the last `config.text_cache_size` vocabularies are cached, keyed by
        the class names (in order), the templates, CLIP's train/eval mode, inference mode and
        the state of CLIP's weights: an optimizer step, `load_state_dict` or `.to()` empties
        the cache. While CLIP can receive gradients (grad mode on and a CLIP parameter
        requiring grad, as in stage 2) the cache is bypassed, so the text encoder trains.

        Args:
            class_names: The `T >= 1` class names; one `str` is one class.

        Returns:
            `(T, C_e)`.

        Raises:
            ValueError: If no class name is given.
        """
        names = as_class_names(class_names, name="class_names")
        templates = tuple(self.config.templates)
        return self._text_cache(
            self.clip,
            tuple(names),
            templates,
            lambda: self.clip.encode_text(names, templates=templates).embeddings,
        )

    def text_cache_info(self) -> TextCacheInfo:
        """Hits, misses, bypasses, size and capacity of the text-embedding cache."""
        return self._text_cache.info()

    def clear_text_cache(self) -> None:
        """Drop the cached text embeddings."""
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

        With `config.image_cache_size > 0` the embedding of each image is cached, keyed by
        the image's content (`samkit._cache.image_keys`: SHA-256 of its bytes, shape, dtype,
        device), the call context (train/eval flags, inference and autocast modes) and SAM's
        weight state; see `docs/performance/caches.md`.

        Args:
            images: RGB images `(B, 3, H, W)` in `[0, 1]` (after `as_image`).

        Returns:
            The `ImageEmbedding` of the batch (no gradients: SAM is frozen); float32 with
            `config.precision="bf16"` (SAM then runs under bf16 autocast).
        """
        with torch.no_grad(), self.precision_context(images.device):
            out = self._image_caches["sam"].images(
                sam_encoder_parts(self.sam) or [],
                images,
                "sam",
                lambda i: self.sam.encode(images[i]),
                batch_size=self.config.encoder_batch_size,
            )
        return self.precision_outputs(out)

    def encode_clip(self, images: Tensor, *, taps: bool = True) -> ClipDenseOutput:
        """CLIP's value-path dense features (and the `clip_taps` block outputs) of `images`.

        Resized to `config.clip_size`, `config.encoder_batch_size` images per call and, with
        `config.image_cache_size > 0`, cached per image as `encode_sam` is (plus the CLIP
        input size and taps). While CLIP can receive gradients the cache is bypassed.

        Args:
            images: RGB images `(B, 3, H, W)` in `[0, 1]` (after `as_image`).
            taps: Also return the `config.clip_taps` block outputs.

        Returns:
            `ClipDenseOutput` with `features (B, C_e, h, w)` and the taps; float32 with
            `config.precision="bf16"` (CLIP then runs under bf16 autocast).
        """
        cfg = self.config
        blocks = tuple(cfg.clip_taps) if taps else ()
        with self.precision_context(images.device):
            out = self._image_caches["clip"].images(
                [self.clip],
                images,
                ("value", cfg.clip_size, blocks),
                lambda i: self.clip.encode_dense(
                    self._clip_input(images[i]), mode="value", intermediates=blocks
                ),
                batch_size=cfg.encoder_batch_size,
            )
        return self.precision_outputs(out)

    def prompter(self, images: Tensor, class_names: str | Sequence[str]) -> TSPPOutput:
        """CLIP + cost volume + TSPP only (what stage 1 trains).

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype) or uint8
                (divided by 255).
            class_names: The `T >= 1` class names; one `str` is one class.

        Returns:
            The prompter's `TSPPOutput` (float32 with `config.precision="bf16"`).

        Raises:
            ValueError: If the model has no prompter, `images` is not a valid image batch or no
                class name is given.
        """
        if self.tspp is None:
            raise ValueError("this SAM-MI has no prompter")
        images = as_image(images, name="images")
        check_shape(images, "B 3 H W", name="images")
        text = self.encode_text(class_names)  # float32 (cached) whatever the precision
        with self.precision_context(images.device):
            dense = self.encode_clip(images, taps=False)
            out = self._prompt(dense.features, text)
        assert out is not None
        return self.precision_outputs(out)

    def _prompt(self, features: Tensor, text: Tensor) -> TSPPOutput | None:
        # stop-gradient towards CLIP's visual encoder (SAM-MI §3.2); the text side may learn
        if self.tspp is None:
            return None
        return self.tspp(cost_volume(features.detach(), text))

    def _clip_input(self, images: Tensor) -> Tensor:
        check_shape(images, "B 3 H W", name="images")
        size = (self.config.clip_size, self.config.clip_size)
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def _points(
        self,
        tspp: TSPPOutput | None,
        batch: int,
        input_size: tuple[int, int],
        device: torch.device,
    ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        if cfg.prompting == "grid" or tspp is None:
            pts = grid_points(cfg.grid, input_size, device=device).expand(batch, -1, -1)
            return pts, torch.ones(pts.shape[:2], dtype=torch.bool, device=device)
        seed = cfg.sample_seed
        if cfg.sampling == "deterministic" or seed is None or tspp.prob.shape[0] == 0:
            return sample_points(
                tspp.prob, input_size, deterministic=cfg.sampling == "deterministic"
            )
        # seeded draws per image, so an image's points do not depend on the rest of its batch
        drawn = []
        for prob in tspp.prob.split(1):
            gen = torch.Generator(device=device).manual_seed(seed)
            drawn.append(sample_points(prob, input_size, generator=gen))
        n = max(p.shape[1] for p, _ in drawn)
        points = drawn[0][0].new_zeros(len(drawn), n, 2)
        valid = torch.zeros(len(drawn), n, dtype=torch.bool, device=device)
        for i, (p, v) in enumerate(drawn):
            points[i, : p.shape[1]] = p
            valid[i, : v.shape[1]] = v
        return points, valid

    def forward(self, images: Tensor, class_names: str | Sequence[str]) -> SAMMIOutput:
        """Segment `images` into `class_names`.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype) or uint8
                (divided by 255). `B = 0` gives empty outputs.
            class_names: The `T >= 1` class names (open vocabulary); one `str` is one class.

        Returns:
            `SAMMIOutput` with `logits (B, T, h', w')` (4x the CLIP grid), the points, SAM masks,
            aggregated masks and the prompter's outputs. With `config.precision="bf16"` CLIP's
            image tower, TSPP, SAM, the injection and the aggregator run under bfloat16
            autocast (the class text embeddings stay float32) and the outputs are float32.

        Raises:
            ValueError: If `images` is not a valid image batch (NaN/Inf, float values outside
                `[0, 1]`) or no class name is given.
        """
        s = check_shape(images, "B 3 H W", name="images")
        images = as_image(images, name="images")
        text = self.encode_text(class_names)  # float32 (cached) whatever the precision
        with self.precision_context(images.device):
            out = self._segment(images, text, s["B"])
        return self.precision_outputs(out)

    def _segment(self, images: Tensor, text: Tensor, batch: int) -> SAMMIOutput:
        """`forward`'s computation on checked inputs (under the model's precision)."""
        dense = self.encode_clip(images)
        tspp = self._prompt(dense.features, text)
        taps = self.aggregator.upsample_taps(dense.intermediates)
        mask_size = taps[-1].shape[-2:]
        with torch.no_grad():
            embedding = self.encode_sam(images)
            points, valid = self._points(tspp, batch, embedding.input_size, images.device)
            sam_masks = point_masks(
                self.sam,
                embedding,
                points,
                valid,
                size=(int(mask_size[0]), int(mask_size[1])),
                batch_size=self.config.sam_batch_size,
            )
            masks = sam_masks
            if self.smagg is not None and tspp is not None:
                masks = self.smagg(sam_masks, tspp.text_masks)
        guidance = self.injection(dense.features, taps, masks)
        logits = self.aggregator(
            dense.features,
            text,
            appearance=guidance.appearance,
            decoder_guidance=guidance.decoder_guidance,
        )
        return SAMMIOutput(
            logits=logits,
            points=points,
            point_valid=valid,
            sam_masks=sam_masks,
            masks=masks,
            mask_valid=masks.flatten(2).any(dim=-1),
            tspp=tspp,
        )

    def configure_stage(self, stage: int) -> list[dict[str, Any]]:
        """Set `requires_grad` for a training stage and return AdamW parameter groups.

        Stage 1: only TSPP trains (lr). Stage 2: aggregator and injection (lr), TSPP
        (lr x `tspp_lr_multiplier`), CLIP under `clip_finetune` (lr x `clip_lr_multiplier`).
        SAM never trains.

        Args:
            stage: 1 or 2.

        Returns:
            Parameter groups, each with `params`, `lr` and `name`.

        Raises:
            ValueError: For an unknown stage or stage 1 without a prompter.
        """
        cfg = self.config
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if stage == 1 and self.tspp is None:
            raise ValueError("stage 1 trains TSPP, but this SAM-MI has no prompter")
        self.requires_grad_(False)
        self.clip.set_trainable("none" if stage == 1 else cfg.clip_finetune)
        # CLIP's contrastive temperature is never used here: trainable, it would get no gradient
        for name in ("logit_scale", "logit_bias"):
            unused = getattr(self.clip.model, name, None)
            if isinstance(unused, nn.Parameter):
                unused.requires_grad_(False)
        groups: list[dict[str, Any]] = []
        if self.tspp is not None:
            self.tspp.requires_grad_(True)
            lr = cfg.lr if stage == 1 else cfg.lr * cfg.tspp_lr_multiplier
            groups.append({"params": list(self.tspp.parameters()), "lr": lr, "name": "tspp"})
        if stage == 2:
            heads = list(self.aggregator.parameters()) + list(self.injection.parameters())
            for p in heads:
                p.requires_grad_(True)
            groups.append({"params": heads, "lr": cfg.lr, "name": "aggregator"})
            groups += self.clip.param_groups(cfg.lr, lr_multiplier=cfg.clip_lr_multiplier)
        return groups


def build_sam_mi(
    cfg: SAMMIConfig | dict | str | None = None,
    *,
    sam: Any = None,
    clip: ClipBackbone | None = None,
    **overrides: Any,
) -> SAMMI:
    """Build SAM-MI from a config, a dict of its fields, or the preset name `"tiny"`.

    Args:
        cfg: A `SAMMIConfig`, a dict of its fields, `"tiny"`, or `None` for the paper defaults.
        sam: An already built `SamLike` backend to use instead of `cfg.sam_variant`.
        clip: An already built `ClipBackbone` to use instead of `cfg.clip_name`.
        **overrides: Config fields replaced after `cfg` is resolved.

    Returns:
        The `SAMMI` module (random weights unless checkpoints are given), SAM frozen.

    Examples:
        >>> model = build_sam_mi("tiny", use_smagg=False, prompting="grid")
        >>> model.tspp is None, model.smagg is None
        (True, True)
    """
    cfg = resolve_config(
        SAMMIConfig,
        cfg,
        overrides,
        presets={"tiny": SAMMIConfig.tiny, "tiny-synth": SAMMIConfig.tiny_synth},
        system="SAM-MI",
    )
    check_precision(cfg.precision, name="precision")
    custom = tuple(n for n, given in (("sam", sam), ("clip", clip)) if given is not None)
    if clip is None:
        clip = build_clip_backbone(cfg.clip_name, cfg.clip_checkpoint, quick_gelu=cfg.quick_gelu)
    if sam is None:
        from samkit.backbones.sam import build_sam_backbone

        sam = build_sam_backbone(cfg.sam_variant, cfg.sam_checkpoint)
    if len(cfg.clip_taps) != len(cfg.decoder_dims):
        raise ValueError(f"clip_taps {cfg.clip_taps} need one entry per decoder stage")
    aggregator = CostAggregator(
        feature_dim=clip.embed_dim,
        vision_width=clip.vision_width,
        dim=cfg.dim,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        window_size=cfg.window_size,
        guidance_dim=cfg.guidance_dim,
        text_guidance_dim=cfg.text_guidance_dim,
        tap_dims=cfg.tap_dims,
        decoder_guidance_dims=cfg.decoder_guidance_dims,
        decoder_dims=cfg.decoder_dims,
        pooling_size=cfg.pooling_size,
        eval_pooling_size=cfg.eval_pooling_size,
        pad_len=cfg.pad_len,
        double_residual=cfg.double_residual,
        embedding=cfg.cost_embedding,
    )
    need_tspp = cfg.prompting == "tspp" or cfg.use_smagg
    tspp = (
        TextGuidedSparsePointPrompter(
            dim=cfg.tspp_dim,
            num_heads=cfg.tspp_heads,
            grid=cfg.grid,
            reduction=cfg.tspp_reduction,
            detach_input=not cfg.tspp_text_grad,
        )
        if need_tspp
        else None
    )
    low = (
        LowFrequencyInjection(dim=clip.embed_dim, num_heads=cfg.injection_heads)
        if cfg.use_low_injection
        else None
    )
    high = (
        [HighFrequencyInjection(dim=c, hidden_dim=cfg.injection_hidden_dim) for c in cfg.tap_dims]
        if cfg.use_high_injection
        else None
    )
    model = SAMMI(
        config=cfg,
        clip=clip,
        sam=sam,
        aggregator=aggregator,
        tspp=tspp,
        smagg=ShallowMaskAggregator(alpha=cfg.alpha) if cfg.use_smagg else None,
        injection=DecoupledMaskInjection(low=low, high=high),
    )
    model._custom_backbones = custom  # save_pretrained cannot rebuild these from the config
    return model
