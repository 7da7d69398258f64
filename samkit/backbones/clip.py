"""CLIP backbone over open_clip: dense image features, text embeddings, trainability policies.

`build_clip_backbone(name, checkpoint)` builds an open_clip model offline (random weights, or a
local OpenAI JIT / state-dict / open_clip checkpoint) and wraps it in `ClipBackbone`, which is
frozen and in eval mode by default. Dense modes follow MaskCLIP/CAT-Seg (`value`) and
CLIP-Surgery (`surgery`); see `docs/backbones/clip.md` for the formulas.
"""

# einops axis legend:
# b  - batch (images)
# n  - tokens or patches
# c  - channels (joint embedding C_e, or transformer width)
# t  - texts
# p  - templates per text
# gh, gw - patch grid

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.model import resize_pos_embed
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

from samkit._checks import as_class_names, as_image, check_shape
from samkit.backbones._clip_checkpoint import create_clip_model, create_tokenizer, open_clip_state
from samkit.backbones._clip_dense import DENSE_MODES, DenseMode, embed_images, run_dense_tower
from samkit.backbones._clip_trainable import POLICIES, TrainablePolicy, apply_policy
from samkit.backbones._shipped import SHIPPED_PRESETS, shipped_state_dict
from samkit.types import ClipDenseOutput, TextEmbedding

__all__ = ["ClipBackbone", "build_clip_backbone", "similarity_map"]


class ClipBackbone(nn.Module):
    """A frozen open_clip CLIP with dense image features and word-level text states.

    Images are float RGB `(B, 3, H, W)` in `[0, 1]`; the backbone normalises them with the
    model's mean/std. Any `H, W` works: the patch part of the positional embedding is resized
    bicubically per call (a size that is not a multiple of the patch is cropped by the patch
    convolution). The wrapped model is never modified by the dense modes.

    Attributes:
        model: The wrapped `open_clip.CLIP`.
        tokenizer: Its open_clip tokenizer.
        embed_dim: Joint embedding width `C_e`.
        vision_width: Vision transformer width (channels of the intermediates).
        text_width: Text transformer width (channels of `token_states`).
        patch_size: ViT patch size `p`.
        image_size: Native input size the positional embedding was built for.
        context_length: Text length `L` in tokens (77).
        num_vision_blocks: Number of vision transformer blocks.

    Examples:
        >>> clip = build_clip_backbone("tiny")
        >>> clip.dense_features(torch.rand(2, 3, 48, 64), mode="surgery").shape
        torch.Size([2, 32, 6, 8])
        >>> clip.encode_text(["cat", "dog"], templates=["a photo of a {}."]).embeddings.shape
        torch.Size([2, 32])
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, *, model: nn.Module, tokenizer: Any) -> None:
        """Wrap an open_clip model; prefer `build_clip_backbone`.

        Args:
            model: An `open_clip.CLIP` whose vision tower is an open_clip `VisionTransformer`.
            tokenizer: The matching open_clip tokenizer (callable on a list of strings).

        Raises:
            ValueError: If the model is not a ViT-based `open_clip.CLIP`.
        """
        super().__init__()
        if not isinstance(model, open_clip.CLIP) or not isinstance(model.visual, VisionTransformer):
            raise ValueError(
                "ClipBackbone needs an open_clip.CLIP with a ViT vision tower, got "
                f"{type(model).__name__} with {type(getattr(model, 'visual', None)).__name__}"
            )
        if model.visual.attn_pool is not None:
            raise ValueError("ClipBackbone: attentional-pool (CoCa-style) towers are not supported")
        if model.visual.pool_type not in ("tok", "avg") or model.visual.final_ln_after_pool:
            raise ValueError(
                f"ClipBackbone: unsupported image pooling {model.visual.pool_type!r} "
                f"(final_ln_after_pool={model.visual.final_ln_after_pool})"
            )
        if model.text_pool_type not in ("argmax", "eos"):
            raise ValueError(f"ClipBackbone: unsupported text pooling {model.text_pool_type!r}")
        self.model = model
        self.tokenizer = tokenizer
        visual = model.visual
        self.embed_dim: int = int(visual.output_dim)
        self.vision_width: int = int(visual.transformer.width)
        self.text_width: int = int(model.transformer.width)
        self.patch_size: int = int(visual.patch_size[0])
        self.image_size: int = int(visual.image_size[0])
        self.context_length: int = int(model.context_length)
        self.num_vision_blocks: int = len(visual.transformer.resblocks)
        cfg = open_clip.get_model_preprocess_cfg(model)
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("pixel_mean", torch.tensor(mean).reshape(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).reshape(3, 1, 1), persistent=False)
        self._policy: str = "none"
        apply_policy(self.model, "none")
        self.eval()

    # ------------------------------------------------------------------ trainability
    @property
    def trainable_policy(self) -> str:
        """The policy last set by `set_trainable` (`"none"` after construction)."""
        return self._policy

    def set_trainable(self, policy: TrainablePolicy) -> list[str]:
        """Choose which CLIP parameters train.

        * `"none"` (default): everything frozen; the model stays in eval mode even under
          `.train()` (SSP-SAM keeps CLIP frozen).
        * `"attention_qv"`: only the q and v projection weights of every attention in both towers
          (CAT-Seg / SAM-MI). The packed `in_proj_weight` becomes `parametrizations.
          in_proj_weight.original{0,1,2}` = q, k, v; k and every bias stay frozen.
        * `"visual"`: every parameter of the image tower; the text tower stays frozen (a random
          or weak CLIP trained as a feature extractor, e.g. SSP-SAM on synthetic scenes).
        * `"all"`: every parameter.

        Args:
            policy: One of `"none"`, `"attention_qv"`, `"visual"`, `"all"`.

        Returns:
            The names (as in `named_parameters()`) of the trainable parameters.

        Raises:
            ValueError: If `policy` is unknown.
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown trainable policy {policy!r}; expected one of {POLICIES}")
        apply_policy(self.model, policy)
        self._policy = policy
        self.train(self.training)
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def param_groups(self, base_lr: float, *, lr_multiplier: float = 0.01) -> list[dict[str, Any]]:
        """Optimiser parameter groups for the trainable CLIP parameters at a reduced lr.

        Args:
            base_lr: The learning rate of the rest of the system.
            lr_multiplier: Factor applied to `base_lr` for CLIP (CAT-Seg: 0.01).

        Returns:
            `[{"params": [...], "lr": base_lr * lr_multiplier, "name": "clip"}]`, or `[]` when
            nothing is trainable.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"params": params, "lr": base_lr * lr_multiplier, "name": "clip"}]

    def train(self, mode: bool = True) -> ClipBackbone:
        """Set training mode; a fully frozen backbone (policy `"none"`) stays in eval mode."""
        super().train(mode)
        if self._policy == "none":
            self.model.eval()
        return self

    # ------------------------------------------------------------------ images
    def _images(self, images: Tensor) -> Tensor:
        """The image contract: `as_image` (uint8 -> [0, 1], range and finiteness checked)."""
        images = as_image(images, name="images", dtype=self.pixel_mean.dtype)
        if images.shape[-2] < self.patch_size or images.shape[-1] < self.patch_size:
            raise ValueError(
                f"images: expected H, W >= patch size {self.patch_size}, got {tuple(images.shape)}"
            )
        return images

    def _normalise(self, images: Tensor) -> Tensor:
        dtype = self.model.visual.conv1.weight.dtype
        return ((images - self.pixel_mean) / self.pixel_std).to(dtype)

    def encode_dense(
        self,
        images: Tensor,
        *,
        mode: DenseMode = "plain",
        intermediates: Sequence[int] = (),
        surgery_depth: int = 6,
    ) -> ClipDenseOutput:
        """Dense patch features in CLIP's joint space, with optional block taps.

        The leading blocks run as in CLIP; the tail depends on `mode` (`plain`: nothing changes,
        `value`: CAT-Seg's value-only last block, `surgery`: CLIP-Surgery's v-v dual path over
        the last `surgery_depth` blocks). Then `ln_post` on all tokens and `@ proj`. The
        open_clip model is never modified.

        Args:
            images: RGB images `(B, 3, H, W)`: float in `[0, 1]` (any float dtype; computed in
                the model's dtype) or uint8 in `0..255`. `B = 0` gives empty outputs.
            mode: `"plain"`, `"value"` or `"surgery"`.
            intermediates: Block indices (negative counts from the end) whose outputs to return;
                these are always the outputs of the unmodified blocks.
            surgery_depth: Trailing blocks with the surgery path; clamped to the block count.

        Returns:
            `ClipDenseOutput` with `features (B, C_e, h, w)`, `cls (B, C_e)` and
            `intermediates`, each `(B, vision_width, h, w)`, with `h, w = H // p, W // p`.

        Raises:
            ValueError: For a bad image shape, mode, tap index or `surgery_depth < 1`; for float
                images outside `[0, 1]` or with NaN / Inf pixels.
            TypeError: For images that are neither uint8 nor floating.
        """
        if mode not in DENSE_MODES:
            raise ValueError(f"unknown dense mode {mode!r}; expected one of {DENSE_MODES}")
        if surgery_depth < 1:
            raise ValueError(f"surgery_depth must be >= 1, got {surgery_depth}")
        taps = [self._block_index(i) for i in intermediates]
        images = self._images(images)
        visual = self.model.visual
        if images.shape[0] == 0:
            return self._empty_dense(images, len(taps))
        x, (gh, gw) = embed_images(visual, self._normalise(images))
        depth = min(surgery_depth, self.num_vision_blocks)
        x, saved = run_dense_tower(visual, x, mode=mode, taps=taps, surgery_depth=depth)
        tokens = visual.ln_post(x)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        features = rearrange(tokens[:, 1:], "b (gh gw) c -> b c gh gw", gh=gh, gw=gw)
        taps_out = [
            rearrange(saved[i][:, 1:], "b (gh gw) c -> b c gh gw", gh=gh, gw=gw) for i in taps
        ]
        return ClipDenseOutput(features=features, cls=tokens[:, 0], intermediates=taps_out)

    def _empty_dense(self, images: Tensor, num_taps: int) -> ClipDenseOutput:
        """The outputs of `encode_dense` for an empty batch (`B = 0`)."""
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        like = self.model.visual.conv1.weight
        features = like.new_zeros(0, self.embed_dim, h, w)
        taps = [like.new_zeros(0, self.vision_width, h, w) for _ in range(num_taps)]
        return ClipDenseOutput(
            features=features, cls=like.new_zeros(0, self.embed_dim), intermediates=taps
        )

    def _block_index(self, index: int) -> int:
        n = self.num_vision_blocks
        if not -n <= index < n:
            raise ValueError(f"intermediate index {index} out of range for {n} vision blocks")
        return index % n

    def dense_features(self, images: Tensor, *, mode: DenseMode = "plain") -> Tensor:
        """Dense features only: `encode_dense(images, mode=mode).features`, `(B, C_e, h, w)`.

        Args:
            images: RGB images `(B, 3, H, W)`, float in `[0, 1]` or uint8 (see `encode_dense`).
            mode: `"plain"`, `"value"` or `"surgery"`.

        Returns:
            `(B, C_e, h, w)`, not normalised.
        """
        return self.encode_dense(images, mode=mode).features

    def forward(self, images: Tensor, *, mode: DenseMode = "plain") -> Tensor:
        """Same as `dense_features`: `(B, 3, H, W)` in `[0, 1]` (or uint8) to `(B, C_e, h, w)`."""
        return self.dense_features(images, mode=mode)

    def encode_image(self, images: Tensor) -> Tensor:
        """CLIP's global image embedding, L2-normalised: `(B, C_e)`, at any input size.

        Args:
            images: RGB images `(B, 3, H, W)`, float in `[0, 1]` or uint8 (see `encode_dense`).

        Returns:
            `(B, C_e)` (`(0, C_e)` for an empty batch); equals open_clip's
            `encode_image(..., normalize=True)` at the native size.
        """
        out = self.encode_dense(images)
        pooled = out.cls if self.model.visual.pool_type == "tok" else out.features.mean(dim=(2, 3))
        return F.normalize(pooled, dim=-1)

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Tokenise with the model's open_clip tokenizer.

        Args:
            texts: One text or a list of `T` texts.

        Returns:
            BPE token ids `(T, context_length)`, long, on the model's device; texts that are too
            long are truncated (the EOT token is kept).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        tokens = self.tokenizer(texts)
        return tokens.to(device=self.model.token_embedding.weight.device, dtype=torch.long)

    def _decode_all(self, tokens: Tensor, eot: Tensor) -> list[str]:
        decode = getattr(self.tokenizer, "decode", None)
        # decoding reads the token values (a device sync and a graph break): not while tracing
        if decode is None or torch.compiler.is_compiling():
            return [""] * int(tokens.shape[0])
        ends = eot.tolist()
        return [
            str(decode(row[1:end])).strip() for row, end in zip(tokens.tolist(), ends, strict=True)
        ]

    def encode_tokens(self, tokens: Tensor, *, texts: Sequence[str] | None = None) -> TextEmbedding:
        """Run the text tower on token ids.

        Args:
            tokens: Token ids `(T, L)` with `L <= context_length`.
            texts: The `T` strings the tokens came from; decoded from `tokens` when `None`.

        Returns:
            `TextEmbedding` with L2-normalised `embeddings (T, C_e)` (EOT state @ projection),
            `token_states (T, L, text_width)` after `ln_final` (not projected), `padding_mask
            (T, L)` True after the EOT token, `tokens`, and the decoded `texts`. Under
            `torch.compile` the tokens are not decoded (that reads their values), so `texts`
            holds empty strings unless given.
        """
        sizes = check_shape(tokens, "T L", name="tokens")
        if sizes["L"] > self.context_length:
            raise ValueError(f"tokens: expected L <= {self.context_length}, got {sizes['L']}")
        if texts is not None and len(texts) != sizes["T"]:
            raise ValueError(f"texts: expected {sizes['T']} strings, got {len(texts)}")
        m = self.model
        length = sizes["L"]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        states = m.ln_final(m.transformer(x, attn_mask=mask))
        if m.text_pool_type == "argmax":
            eot = tokens.argmax(dim=-1)
        else:
            eot = (tokens == m.text_eos_id).int().argmax(dim=-1)
        pooled = states[torch.arange(states.shape[0], device=states.device), eot]
        proj = m.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        positions = torch.arange(length, device=tokens.device)
        return TextEmbedding(
            embeddings=F.normalize(pooled, dim=-1),
            texts=list(texts) if texts is not None else self._decode_all(tokens, eot),
            token_states=states,
            padding_mask=positions[None, :] > eot[:, None],
            tokens=tokens,
        )

    def encode_text(
        self,
        texts: str | Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        return_tokens: bool = False,
        lowercase: bool = False,
        batch_size: int | None = None,
    ) -> TextEmbedding:
        """Embed class names or sentences, with template ensembling.

        Every template is filled with every text; each unique string is encoded once, in one
        batch. Per text, the normalised embeddings of its templates are averaged and
        renormalised. SSP-SAM's sentence input is `templates=["{}."], lowercase=True`.

        Args:
            texts: One text (a `str` is one text, not its characters) or `T >= 1` texts (class
                names or sentences).
            templates: Format strings with one `{}`, e.g. `["a photo of a {}."]`; `None` uses
                the texts as they are.
            return_tokens: Also return `token_states (T, L, text_width)`, `padding_mask (T, L)`
                and `tokens (T, L)`; needs at most one template.
            lowercase: Lower-case each text before formatting.
            batch_size: Encode the unique strings in chunks of this many (to bound memory with
                many classes and templates); `None` encodes them in one batch.

        Returns:
            `TextEmbedding` with `embeddings (T, C_e)` and `texts` as given.

        Raises:
            ValueError: For no texts, no templates, a template without `{}`, or `return_tokens`
                with several templates.
            TypeError: If `texts` is neither a `str` nor a sequence of `str`.
        """
        names = as_class_names(texts, name="texts")
        fmts = ["{}"] if templates is None else list(templates)
        if not fmts:
            raise ValueError("templates: expected at least one template, got none")
        if any("{}" not in f for f in fmts):
            raise ValueError(f"encode_text: every template needs a '{{}}' slot, got {fmts}")
        if return_tokens and len(fmts) > 1:
            raise ValueError("encode_text: return_tokens needs at most one template")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"encode_text: batch_size must be >= 1, got {batch_size}")
        filled = [f.format(n.lower() if lowercase else n) for n in names for f in fmts]
        unique = list(dict.fromkeys(filled))
        row = {s: i for i, s in enumerate(unique)}
        index = torch.tensor(
            [row[s] for s in filled], device=self.model.token_embedding.weight.device
        )
        step = batch_size or len(unique)
        parts = [
            self.encode_tokens(self.tokenize(unique[i : i + step]), texts=unique[i : i + step])
            for i in range(0, len(unique), step)
        ]
        out = parts[0] if len(parts) == 1 else _concat_text(parts)
        emb = rearrange(out.embeddings[index], "(t p) c -> t p c", p=len(fmts))
        embeddings = F.normalize(emb.mean(dim=1), dim=-1)
        if not return_tokens:
            return TextEmbedding(embeddings=embeddings, texts=names)
        assert out.token_states is not None and out.padding_mask is not None
        assert out.tokens is not None
        return TextEmbedding(
            embeddings=embeddings,
            texts=names,
            token_states=out.token_states[index],
            padding_mask=out.padding_mask[index],
            tokens=out.tokens[index],
        )


def _concat_text(parts: list[TextEmbedding]) -> TextEmbedding:
    """Concatenate text embeddings computed in chunks (all with token states)."""

    def cat(name: str) -> Tensor:
        return torch.cat([getattr(p, name) for p in parts], dim=0)

    return TextEmbedding(
        embeddings=cat("embeddings"),
        texts=[t for p in parts for t in p.texts],
        token_states=cat("token_states"),
        padding_mask=cat("padding_mask"),
        tokens=cat("tokens"),
    )


def build_clip_backbone(
    name: str = "ViT-B-16",
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    quick_gelu: bool | None = None,
    pretrained: bool = True,
) -> ClipBackbone:
    """Build a frozen `ClipBackbone` offline.

    Args:
        name: An open_clip built-in model name (`"ViT-B-16"`, `"ViT-L-14-336"`, ...) or
            `"tiny-synth"` (4-block ViT, image 64, patch 8, width 128; 3-block text tower,
            width 64; C_e 64) with the weights samkit ships, pretrained on generated scenes by
            `samkit pretrain clip` (see `docs/pretrained.md`); or `"tiny"` (random 4-block ViT,
            image 32, patch 8, width 64; text width 32; C_e 32) for tests.
        checkpoint: A local file: OpenAI's TorchScript archive (`ViT-B-16.pt`), a `torch.save`d
            state dict (OpenAI's or open_clip's layout), or `.safetensors`; `None` gives random
            weights. Loaded strictly; pickles only with `weights_only=True`.
        image_size: Native input size (the positional embedding is resized once, at load);
            `None` keeps the config's. Other sizes still work per call.
        quick_gelu: QuickGELU (`True`) or GELU (`False`) in every MLP. `None` (default): on for
            `*-quickgelu` names; otherwise read from the checkpoint: the activation modules of a
            TorchScript archive, OpenAI's extra `input_resolution` / `context_length` /
            `vocab_size` entries, or OpenAI's mixed half precision (float16 weight matrices,
            float32 LayerNorms; with a warning, since open_clip's `precision="fp16"` models
            look the same). A state dict with full-precision weight matrices (open_clip / LAION
            training) gets GELU; one that is float16 throughout gets GELU with a warning. See
            `docs/backbones/clip.md`.
        pretrained: Load the shipped weights of a preset that has them (`tiny-synth`), checked
            against their recorded SHA-256; ignored when `checkpoint` is given.

    Returns:
        The backbone, frozen (policy `"none"`) and in eval mode, on the CPU.

    Raises:
        ValueError: If `name` or `checkpoint` would need the network (`hf-hub:` names,
            pretrained tags such as `"openai"`, HF text towers) or `name` is unknown; or if
            `checkpoint` is not a readable CLIP checkpoint (empty, truncated, not a checkpoint,
            or pickled Python objects beyond tensors), with the file named.
        FileNotFoundError: If `checkpoint` is a path that does not exist.

    Warns:
        UserWarning: When `quick_gelu=None` and the checkpoint's activation is a guess, or when
            an explicit choice contradicts what the checkpoint states.

    Examples:
        >>> clip = build_clip_backbone("tiny")
        >>> (clip.embed_dim, clip.vision_width, clip.patch_size, clip.image_size)
        (32, 64, 8, 32)
    """
    model = create_clip_model(name, checkpoint, image_size=image_size, quick_gelu=quick_gelu)
    key = f"clip/{name}"
    if checkpoint is None and pretrained and key in SHIPPED_PRESETS:
        state = open_clip_state(shipped_state_dict(key))
        resize_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    return ClipBackbone(model=model, tokenizer=create_tokenizer(name))


def similarity_map(features: Tensor, text: Tensor, *, eps: float = 1e-12) -> Tensor:
    """Per-image similarity of patches to one text, min-max normalised over the patches.

    `s = features @ text` per image, then `(s - min) / (max - min)` over the `N` patches
    (SSP-SAM §1.2 step 4; `eps` guards a constant map).

    Args:
        features: Patch features `(B, N, C)`.
        text: One text embedding per image `(B, C)`.
        eps: Lower bound of the denominator.

    Returns:
        `(B, N)` in `[0, 1]`.

    Examples:
        >>> s = similarity_map(torch.randn(2, 16, 8), torch.randn(2, 8))
        >>> s.shape, float(s.amin()), float(s.amax())
        (torch.Size([2, 16]), 0.0, 1.0)
    """
    sizes = check_shape(features, "B N C", name="features")
    check_shape(text, "B C", name="text", known={"B": sizes["B"], "C": sizes["C"]})
    dtype = torch.promote_types(features.dtype, text.dtype)  # e.g. float32 patches, bf16 text
    sim = torch.einsum("bnc,bc->bn", features.to(dtype), text.to(dtype))
    low = sim.amin(dim=1, keepdim=True)
    high = sim.amax(dim=1, keepdim=True)
    return (sim - low) / (high - low).clamp_min(eps)
