"""Offline construction of open_clip CLIP models and local checkpoint loading.

Nothing here ever touches the network: model names resolve to open_clip's built-in configs, the
`tiny` preset is built inline, and weights only come from local files.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import Tensor, nn

from samkit._io import read_checkpoint

# Keys that OpenAI's JIT archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensors that OpenAI's `convert_weights` (and open_clip's `convert_weights_to_lp`) make float16:
# weights and biases of convolutions, linear layers and attentions, and the two projections.
_OPENAI_HALF_KEYS = (
    "conv1.weight",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "visual.proj",
    "text_projection",
)
# Class names of the MLP activation modules in open_clip's and OpenAI's code.
_ACTIVATIONS = ("QuickGELU", "GELU")

TINY_NAME = "tiny"


def _tiny_cfgs(image_size: int | None) -> dict[str, object]:
    """Configs of the `tiny` preset: a 4-block ViT (patch 8, width 64) and a 2-block text tower."""
    vision = open_clip.CLIPVisionCfg(
        image_size=image_size or 32, patch_size=8, width=64, layers=4, head_width=32
    )
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    return {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}


def _tiny_synth_cfgs(image_size: int | None) -> dict[str, object]:
    """Configs of `tiny-synth` (the shipped weights): 4-block ViT and 3-block text tower.

    The ViT takes 64 px images in 8 px patches at width 128; the text tower is 64 wide; the
    joint embedding has 64 channels.
    """
    vision = open_clip.CLIPVisionCfg(
        image_size=image_size or 64, patch_size=8, width=128, layers=4, head_width=32
    )
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=3)
    return {"embed_dim": 64, "vision_cfg": vision, "text_cfg": text}


def _tiny_convnext_cfgs(image_size: int | None) -> dict[str, object]:
    """Configs of `tiny-convnext`: timm's `test_convnext` image tower and a 2-block text tower.

    The ConvNeXt has 4 stages of 24, 32, 48 and 64 channels (strides 4 to 32) and a linear
    projection to the 32-channel joint embedding, as open_clip's `convnext_base_w` has.
    """
    vision = open_clip.CLIPVisionCfg(
        timm_model_name="test_convnext",
        timm_model_pretrained=False,
        timm_pool="",
        timm_proj="linear",
        image_size=image_size or 64,
    )
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    return {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}


# Architectures built inline (not open_clip configs): name -> configs for `open_clip.CLIP`.
INLINE_CFGS = {
    TINY_NAME: _tiny_cfgs,
    "tiny-synth": _tiny_synth_cfgs,
    "tiny-convnext": _tiny_convnext_cfgs,
}


def _network_error(what: str) -> ValueError:
    return ValueError(
        f"{what} would need the network; samkit never downloads weights. Download the checkpoint "
        "yourself and pass the local file: build_clip_backbone('<open_clip model name>', "
        "checkpoint='/path/to/weights.pt')"
    )


def check_name(name: str) -> None:
    """Raise a clear error for model names that cannot be built offline.

    Args:
        name: An open_clip built-in model name, or `"tiny"`.

    Raises:
        ValueError: For `hf-hub:` / `local-dir:` names, unknown names, and configs whose text
            tower or tokenizer comes from Hugging Face.
    """
    if name in INLINE_CFGS:
        return
    if name.startswith("hf-hub:"):
        raise _network_error(f"model name {name!r}")
    if name.startswith("local-dir:"):
        raise ValueError(
            f"model name {name!r}: pass the built-in architecture name and the weight file "
            "instead (build_clip_backbone('ViT-B-16', checkpoint='/path/to/weights.pt'))"
        )
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is None:
        raise ValueError(
            f"unknown CLIP model name {name!r}; use 'tiny' or one of open_clip.list_models()"
        )
    text_cfg = cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
        raise _network_error(f"model {name!r} (its text tower or tokenizer comes from the HF hub)")


@dataclass(frozen=True)
class ClipCheckpoint:
    """A CLIP state dict read from a file, with what the file says about its activation.

    Attributes:
        state: The float32 state dict (OpenAI's extra entries and wrappers removed).
        quick_gelu: True / False when the file indicates QuickGELU / GELU, None when it does not.
        evidence: Why, in words (for warnings).
        certain: False when the indication is a guess that deserves a warning.
    """

    state: dict[str, Tensor]
    quick_gelu: bool | None
    evidence: str
    certain: bool


def _fits(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of a floating tensor is exactly representable in `dtype`."""
    if t.dtype == dtype:
        return True
    return bool(torch.equal(t.to(dtype).to(t.dtype), t))


def _half_valued(t: Tensor) -> bool:
    """Whether a tensor holds float16 values (bfloat16 storage never counts)."""
    return t.dtype != torch.bfloat16 and _fits(t, torch.float16)


def _precision_evidence(state: dict[str, Tensor]) -> tuple[bool | None, str, bool]:
    """Read OpenAI's release precision pattern from a state dict (see `docs/backbones/clip.md`).

    OpenAI released CLIP in *mixed* half precision (`convert_weights`): the weight matrices and
    biases of the convolution, attentions and MLPs and the two projections are float16, while the
    LayerNorms, embeddings and `logit_scale` stay float32. Upcast to float32 (`model.float()`), the
    matrices still hold float16 values. open_clip trains in float32, so its matrices do not.
    Weights that also fit bfloat16 (8 significant bits; a cast to bfloat16) are no evidence.
    """
    half: list[Tensor] = []  # the tensors OpenAI stored in float16
    rest: list[Tensor] = []  # the other floating tensors (float32 in OpenAI's release)
    for k, v in state.items():
        if v.is_floating_point():
            (half if k.endswith(_OPENAI_HALF_KEYS) else rest).append(v)
    if not half or not rest:
        return None, "it does not have OpenAI's layout", True
    if all(_fits(v, torch.bfloat16) for v in half):  # 8 significant bits: not OpenAI's float16
        return (
            None,
            "its weight matrices hold bfloat16 values, so it may be OpenAI's (QuickGELU) or "
            "open_clip's (GELU) after a cast to bfloat16",
            False,
        )
    if not all(_half_valued(v) for v in half):
        return None, "its weight matrices hold full-precision values", True
    stored_mixed = all(v.dtype == torch.float16 for v in half) and any(
        v.dtype != torch.float16 for v in rest
    )
    if stored_mixed or not all(_half_valued(v) for v in rest):
        return (
            True,
            "its weight matrices hold float16 values while its LayerNorms and embeddings are "
            "float32, the mixed precision OpenAI released CLIP in (open_clip models created with "
            "precision='fp16' look the same)",
            False,
        )
    return (
        None,
        "all its weights hold float16 values, so it may be OpenAI's (QuickGELU) or open_clip's "
        "(GELU) after .half()",
        False,
    )


def _script_activation(module: torch.jit.ScriptModule) -> tuple[bool | None, str, bool]:
    """Read the MLP activation out of a TorchScript archive by its module class names."""
    names = {
        sub.original_name
        for _, sub in module.named_modules()
        if getattr(sub, "original_name", "") in _ACTIVATIONS
    }
    if names == {"QuickGELU"}:
        return True, "its MLP activations are QuickGELU modules", True
    if names == {"GELU"}:
        return False, "its MLP activations are GELU modules", True
    return (
        True,
        "it is a TorchScript archive whose MLP activation could not be read (found "
        f"{sorted(names) or 'none'} of {list(_ACTIVATIONS)}); assumed OpenAI's release, as "
        "open_clip's load_openai_model does",
        False,
    )


def open_clip_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The open_clip model's state dict from a `ClipBackbone` one (`model.` prefixes removed).

    `samkit pretrain clip` writes the backbone's state dict; a state dict already in open_clip's
    layout is returned unchanged.
    """
    if all(k.startswith("model.") for k in state):
        return {k[len("model.") :]: v for k, v in state.items()}
    return state


def load_state_dict_file(checkpoint: str | os.PathLike[str]) -> ClipCheckpoint:
    """Read a CLIP state dict from a local file and what it says about QuickGELU.

    Accepts a TorchScript archive (OpenAI's release), a `torch.save`d state dict (optionally
    under a `state_dict` key, optionally with a `module.` prefix), or a `.safetensors` file; a
    `ClipBackbone` state dict (every key under `model.`, what `samkit pretrain clip` writes) is
    read as the open_clip model's.
    Pickles are read with `weights_only=True` only (`samkit._io.read_checkpoint`).

    The activation is read, in this order, from: the activation modules of a TorchScript archive
    (certain); OpenAI's extra `input_resolution` / `context_length` / `vocab_size` entries
    (certain: QuickGELU); OpenAI's mixed half precision (a guess: QuickGELU); float16 values
    everywhere (no indication, a warning); full-precision weight matrices (an open_clip-trained
    model: no indication, no warning).

    Args:
        checkpoint: Path of the file.

    Returns:
        The float32 state dict with the activation evidence.

    Raises:
        ValueError: If `checkpoint` is not a file but looks like a pretrained tag, or the file is
            not a readable CLIP checkpoint (empty, truncated, garbage, no state dict).
        FileNotFoundError: If the path does not exist.
    """
    path = Path(checkpoint)
    if not path.is_file():
        text = str(checkpoint)
        if os.sep not in text and "/" not in text and not path.suffix:
            raise _network_error(f"{text!r} is not a local file; as a pretrained tag it")
        raise FileNotFoundError(f"CLIP checkpoint not found: {text}")
    obj = read_checkpoint(path, kind="CLIP checkpoint", torchscript=True)
    script_evidence = None
    if isinstance(obj, torch.jit.ScriptModule):
        script_evidence = _script_activation(obj)
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = (
        {
            (k[len("module.") :] if k.startswith("module.") else k): v
            for k, v in obj.items()
            if isinstance(k, str) and isinstance(v, Tensor)
        }
        if isinstance(obj, dict)
        else {}
    )
    state = open_clip_state(state)  # samkit's own layout, as `samkit pretrain clip` writes
    if not state:
        raise ValueError(
            f"{path}: not a readable CLIP checkpoint: expected a state dict (a dict of tensors, "
            f"optionally under 'state_dict'), got {type(obj).__name__} without tensors"
        )
    extra = [k for k in _OPENAI_EXTRA_KEYS if k in state]
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    if script_evidence is not None:
        quick, evidence, certain = script_evidence
    elif extra:
        quick, evidence, certain = True, f"it carries OpenAI's extra entries {extra}", True
    else:
        quick, evidence, certain = _precision_evidence(state)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return ClipCheckpoint(state=state, quick_gelu=quick, evidence=evidence, certain=certain)


def _choose_quick_gelu(
    name: str, checkpoint: object, ckpt: ClipCheckpoint | None, quick_gelu: bool | None
) -> bool:
    """Decide QuickGELU: the argument, else a `-quickgelu` config, else the file, else GELU."""
    cfg = {} if name in INLINE_CFGS else open_clip.get_model_config(name.replace("/", "-")) or {}
    by_name = bool(cfg.get("quick_gelu", False))
    if quick_gelu is not None or by_name:
        chosen = bool(quick_gelu) if quick_gelu is not None else True
        told = f"quick_gelu={quick_gelu}" if quick_gelu is not None else f"model name {name!r}"
        if ckpt is not None and ckpt.certain and ckpt.quick_gelu not in (None, chosen):
            warnings.warn(
                f"CLIP checkpoint {checkpoint}: {told} gives "
                f"{'QuickGELU' if chosen else 'GELU'}, but {ckpt.evidence}",
                UserWarning,
                stacklevel=4,
            )
        return chosen
    if ckpt is None:
        return False
    if ckpt.quick_gelu is not None:
        if not ckpt.certain:
            warnings.warn(
                f"CLIP checkpoint {checkpoint}: using QuickGELU because {ckpt.evidence}. Pass "
                "quick_gelu=True to confirm (and silence this) or quick_gelu=False for weights "
                "trained with GELU.",
                UserWarning,
                stacklevel=4,
            )
        return ckpt.quick_gelu
    if not ckpt.certain:
        warnings.warn(
            f"CLIP checkpoint {checkpoint}: cannot tell whether it was trained with QuickGELU "
            f"(OpenAI) or GELU (open_clip): {ckpt.evidence}. Using GELU, as architecture "
            f"{name!r} says; pass quick_gelu=True for OpenAI weights or quick_gelu=False to "
            "silence this.",
            UserWarning,
            stacklevel=4,
        )
    return False


def create_clip_model(
    name: str,
    checkpoint: str | os.PathLike[str] | None,
    *,
    image_size: int | None,
    quick_gelu: bool | None,
) -> nn.Module:
    """Build an open_clip `CLIP` offline and load a local checkpoint strictly.

    Args:
        name: Built-in open_clip model name, or `"tiny"`.
        checkpoint: Local weight file, or `None` for random weights.
        image_size: Native input size to build for (positional embeddings of a checkpoint are
            resized bicubically by open_clip), or `None` for the config's own.
        quick_gelu: QuickGELU on or off; `None` follows a `*-quickgelu` config, else what the
            checkpoint indicates (`load_state_dict_file`), else GELU.

    Returns:
        The model in eval mode, float32, on the CPU.

    Raises:
        RuntimeError: If the checkpoint's keys or shapes do not match the architecture.
    """
    check_name(name)
    ckpt = None if checkpoint is None else load_state_dict_file(checkpoint)
    quick = _choose_quick_gelu(name, checkpoint, ckpt, quick_gelu)
    if name in INLINE_CFGS:
        model: nn.Module = open_clip.CLIP(**INLINE_CFGS[name](image_size), quick_gelu=quick)
    else:
        model = open_clip.create_model(
            name,
            pretrained=None,
            force_image_size=image_size,
            pretrained_text=False,
            quick_gelu=quick,  # a config override: also turns a `-quickgelu` config off
        )
    if ckpt is not None:
        # TorchScript archives also store non-persistent buffers (e.g. the causal `attn_mask`)
        transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
        state = {k: v for k, v in ckpt.state.items() if k not in transient}
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(
                f"checkpoint {checkpoint} does not fit CLIP architecture {name!r}: {err}"
            ) from err
    return model.float().eval()


@functools.lru_cache(maxsize=8)
def create_tokenizer(name: str) -> object:
    """The open_clip tokenizer for a model name (the BPE vocab ships in the open_clip wheel).

    Cached: building the BPE tables takes ~0.3 s, and a tokenizer holds no per-model state.
    """
    if name in INLINE_CFGS:
        return open_clip.SimpleTokenizer(context_length=77)
    return open_clip.get_tokenizer(name.replace("/", "-"))
