"""Load the released SSP-SAM checkpoints (`WayneTomas/SSP-SAM`, spec §6) into samkit's SSPSAM.

The release stores `torch.save({'model': state_dict, 'optimizer', 'lr_scheduler', 'epoch',
'args'})`. Its `model` keys are mapped to samkit's module paths by an explicit table
(`OFFICIAL_KEY_MAP`); CLIP (`encoder.*`) is never taken from it (the frozen OpenAI weights come
from `clip_checkpoint`), the two dead modules are dropped, and any other unknown key is refused.
The loaded model uses the reference behaviour (`REFERENCE_QUIRKS`), so it reproduces the
reference forward numerically.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from samkit._io import read_checkpoint
from samkit.systems.ssp_sam import (
    REFERENCE_QUIRKS,
    SSP_SAM_PRESETS,
    SSPSAM,
    SSPSAMConfig,
    build_ssp_sam,
)

__all__ = [
    "IGNORED_PREFIXES",
    "OFFICIAL_KEY_MAP",
    "convert_official_state_dict",
    "load_official_ssp_sam",
]

OFFICIAL_KEY_MAP: tuple[tuple[str, str], ...] = (
    # (official prefix, samkit prefix); matched in order, on whole dotted components
    ("text_proj.", "language.gru."),
    ("clip_proj.", "language.proj."),
    ("phrase_attn.fc.", "language.score."),
    ("clip_img_proj.layers.", "visual.patch_proj.layers."),
    ("img2text_attn.", "visual.cross_attn."),
    ("imgtext_proj.layers.0.", "visual.text_proj."),
    ("img_proj.layers.0.", "visual.visual_proj."),
    ("tf_scale", "visual.scale"),
    ("tf_sigma", "visual.sigma"),
    ("norm_img.", "visual.norm."),
    ("mlp.", "fusion.proj."),
    ("reg_token.", "prompt_encoder.register_token."),
    ("prompt_token.", "prompt_encoder.prompt_tokens."),
    ("vl_pos_embed.", "prompt_encoder.pos_embed."),
    ("vl_transformer.encoder.layers.", "prompt_encoder.layers."),
    ("norm.", "prompt_encoder.norm."),
    ("bbox_embed.layers.", "prompt_encoder.box_head.layers."),
    ("sam.image_encoder.", "sam.image_encoder."),
    ("sam.prompt_encoder.", "sam.prompt_encoder."),
    ("sam.mask_decoder.", "sam.mask_decoder."),
)
"""Official key prefix -> samkit key prefix (spec §6)."""

IGNORED_PREFIXES: tuple[str, ...] = (
    "encoder.",  # CLIP-Surgery with post-surgery names; loaded from clip_checkpoint instead
    "img2img_attn.",  # constructed but never used by the reference forward (spec §8.10)
    "norm_text_cond_img.",  # idem
)
"""Official key prefixes that are dropped."""


def _map_key(key: str) -> str | None:
    for src, dst in OFFICIAL_KEY_MAP:
        if key == src or key.startswith(src):
            return dst + key[len(src) :]
    return None


def convert_official_state_dict(
    state: Mapping[str, Tensor],
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official SSP-SAM `model` state dict to samkit keys.

    Args:
        state: The `ckpt['model']` mapping.

    Returns:
        `(converted, ignored)`: the samkit-keyed tensors and the official keys that were dropped.

    Raises:
        ValueError: Listing every key that is neither mapped nor ignored.

    Examples:
        >>> conv, ignored = convert_official_state_dict(
        ...     {"tf_scale": torch.ones(1), "encoder.visual.proj": torch.zeros(2)})
        >>> list(conv), ignored
        (['visual.scale'], ['encoder.visual.proj'])
    """
    converted: dict[str, Tensor] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in state.items():
        if key.startswith(IGNORED_PREFIXES):
            ignored.append(key)
            continue
        new = _map_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise ValueError(
            f"unknown keys in the SSP-SAM checkpoint ({len(unknown)}): {unknown[:20]}; "
            "expected the official layout of WayneTomas/SSP-SAM (spec §6)"
        )
    return converted, ignored


def _read(path: str | os.PathLike[str]) -> Mapping[str, Tensor]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"SSP-SAM checkpoint not found: {path}")
    # The release pickles an argparse.Namespace next to the weights; allow exactly that.
    kind = "SSP-SAM official checkpoint"
    ckpt = read_checkpoint(path, kind=kind, safe_globals=[argparse.Namespace])
    if isinstance(ckpt, Mapping) and "model" in ckpt:
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping):
        raise ValueError(
            f"{path}: not a readable {kind}: expected a state dict or {{'model': state_dict}}, "
            f"got {type(ckpt).__name__}"
        )
    return ckpt


def _infer_preset(state: Mapping[str, Tensor]) -> str:
    width = state.get("clip_proj.weight")
    if width is not None and width.shape[1] == 512:
        return "vit_b16_224"
    return "vit_l14_336"


def load_official_ssp_sam(
    checkpoint_path: str | os.PathLike[str],
    clip_checkpoint: str | os.PathLike[str] | None = None,
    sam_checkpoint: str | os.PathLike[str] | None = None,
    *,
    config: SSPSAMConfig | dict | str | None = None,
    **overrides: Any,
) -> SSPSAM:
    """Build SSP-SAM with the reference behaviour and load a released checkpoint into it.

    Args:
        checkpoint_path: The released `.pth` (`{'model': ...}`) or a bare state dict.
        clip_checkpoint: OpenAI CLIP weights for the frozen CLIP (ViT-L/14@336 or ViT-B/16).
        sam_checkpoint: SAM weights (`sam_vit_h_4b8939.pth`), used for any SAM part the
            checkpoint lacks; SAM parts present in the checkpoint (the fine-tuned mask decoder
            at least) override them.
        config: Base config or preset; `None` picks the paper variant from the weights' shapes.
        **overrides: Further config fields; `REFERENCE_QUIRKS` are applied before them.

    Returns:
        The model in eval mode.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: On unknown keys, or when heads or the mask decoder are missing from the
            checkpoint.
        RuntimeError: On shape mismatches.
    """
    state = _read(checkpoint_path)
    converted, _ = convert_official_state_dict(state)
    if config is None:
        config = _infer_preset(state)
    if isinstance(config, str):
        config = SSPSAMConfig(**SSP_SAM_PRESETS[config])
    elif isinstance(config, dict):
        config = SSPSAMConfig(**config)
    fields: dict[str, Any] = {**REFERENCE_QUIRKS, **overrides}
    if clip_checkpoint is not None:
        fields["clip_checkpoint"] = str(clip_checkpoint)
    if sam_checkpoint is not None:
        fields["sam_checkpoint"] = str(sam_checkpoint)
    model = build_ssp_sam(config, **fields)
    expected = {
        k for k in model.state_dict() if k.startswith(tuple(f"{h}." for h in model.heads()))
    } | {k for k in model.state_dict() if k.startswith("sam.mask_decoder.")}
    missing = sorted(expected - set(converted))
    if missing:
        raise ValueError(f"the SSP-SAM checkpoint lacks {len(missing)} keys: {missing[:20]}")
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"keys with no place in the model: {result.unexpected_keys[:20]}")
    return model.eval()
