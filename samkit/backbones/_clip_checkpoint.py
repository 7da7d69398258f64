"""Offline construction of open_clip CLIP models and local checkpoint loading.

Nothing here ever touches the network: model names resolve to open_clip's built-in configs, the
`tiny` preset is built inline, and weights only come from local files.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import Tensor, nn

# Keys that OpenAI's JIT archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

TINY_NAME = "tiny"


def _tiny_cfgs(image_size: int | None) -> dict[str, object]:
    """Configs of the `tiny` preset: a 4-block ViT (patch 8, width 64) and a 2-block text tower."""
    vision = open_clip.CLIPVisionCfg(
        image_size=image_size or 32, patch_size=8, width=64, layers=4, head_width=32
    )
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    return {"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}


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
    if name == TINY_NAME:
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


def load_state_dict_file(checkpoint: str | os.PathLike[str]) -> tuple[dict[str, Tensor], bool]:
    """Read a CLIP state dict from a local file.

    Accepts an OpenAI JIT archive, a `torch.save`d state dict (optionally under a `state_dict`
    key, optionally with a `module.` prefix), or a `.safetensors` file.

    Args:
        checkpoint: Path of the file.

    Returns:
        The float32 state dict and whether it looks like OpenAI's release (a JIT archive, or one
        carrying OpenAI's `input_resolution`/`context_length`/`vocab_size` entries), which was
        trained with QuickGELU.

    Raises:
        ValueError: If `checkpoint` is not a file but looks like a pretrained tag.
        FileNotFoundError: If the path does not exist.
    """
    path = Path(checkpoint)
    if not path.is_file():
        text = str(checkpoint)
        if os.sep not in text and "/" not in text and not path.suffix:
            raise _network_error(f"{text!r} is not a local file; as a pretrained tag it")
        raise FileNotFoundError(f"CLIP checkpoint not found: {text}")
    is_jit = False
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    elif zipfile.is_zipfile(path) and any(
        n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist()
    ):
        with warnings.catch_warnings():  # the only reader of OpenAI's archives is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        is_jit = True
    else:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a CLIP state dict, got {type(obj).__name__}")
    state = {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in obj.items()
        if isinstance(v, Tensor)
    }
    is_openai = is_jit or any(k in state for k in _OPENAI_EXTRA_KEYS)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return state, is_openai


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
        quick_gelu: Force QuickGELU on or off; `None` enables it for OpenAI checkpoints and
            `*-quickgelu` names.

    Returns:
        The model in eval mode, float32, on the CPU.

    Raises:
        RuntimeError: If the checkpoint's keys or shapes do not match the architecture.
    """
    check_name(name)
    state, is_openai = (None, False) if checkpoint is None else load_state_dict_file(checkpoint)
    if quick_gelu is None:
        quick_gelu = is_openai or name.endswith("-quickgelu")
    if name == TINY_NAME:
        model: nn.Module = open_clip.CLIP(**_tiny_cfgs(image_size), quick_gelu=quick_gelu)
    else:
        model = open_clip.create_model(
            name,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            force_image_size=image_size,
            pretrained_text=False,
        )
    if state is not None:
        # JIT archives also store non-persistent buffers (e.g. the causal `attn_mask`)
        transient = {n for n, _ in model.named_buffers()} - set(model.state_dict())
        state = {k: v for k, v in state.items() if k not in transient}
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RuntimeError(
                f"checkpoint {checkpoint} does not fit CLIP architecture {name!r}: {err}"
            ) from err
    return model.float().eval()


def create_tokenizer(name: str) -> object:
    """The open_clip tokenizer for a model name (the BPE vocab ships in the open_clip wheel)."""
    if name == TINY_NAME:
        return open_clip.SimpleTokenizer(context_length=77)
    return open_clip.get_tokenizer(name.replace("/", "-"))
