"""A CLIP ConvNeXt (open_clip) as a multi-level image backbone, with its text tower.

SAM-CP's open-vocabulary setting (like FC-CLIP) takes image features from the convolutional
image tower of a CLIP and class embeddings from the same CLIP's text tower, both frozen.
`build_clip_convnext(name, checkpoint)` builds an open_clip ConvNeXt CLIP offline (random, or a
local open_clip checkpoint loaded strictly) and wraps it in `ClipConvNeXt`, whose call gives the
four ConvNeXt stage maps (strides 4 to 32), `encode_text` the class embeddings and
`dense_features` per-pixel joint-space features of the last stage.
"""

# einops axis legend:
# b  - batch (images)
# c  - channels
# h, w - feature grid
# t  - texts
# p  - templates per text

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.timm_model import TimmModel
from torch import Tensor, nn

from samkit._checks import as_class_names, check_shape
from samkit.backbones._clip_checkpoint import (
    INLINE_CFGS,
    check_name,
    create_clip_model,
    create_tokenizer,
)
from samkit.types import TextEmbedding

__all__ = ["ClipConvNeXt", "build_clip_convnext"]


class ClipConvNeXt(nn.Module):
    """A frozen open_clip CLIP whose image tower is a timm ConvNeXt.

    Images are float RGB `(B, 3, H, W)` in `[0, 1]`, normalised here with the model's mean/std;
    any size works (the tower is convolutional). The whole CLIP is frozen and stays in eval
    mode under `.train()`.

    Attributes:
        model: The wrapped `open_clip.CLIP` (`model.visual.trunk` is the timm ConvNeXt).
        tokenizer: Its open_clip tokenizer.
        channels: Channels of the 4 stage maps.
        strides: Strides of the 4 stage maps (4, 8, 16, 32).
        embed_dim: Joint embedding width `C_e`.

    Examples:
        >>> clip = build_clip_convnext("tiny-convnext")
        >>> [tuple(f.shape[1:]) for f in clip(torch.rand(1, 3, 64, 64))]
        [(24, 16, 16), (32, 8, 8), (48, 4, 4), (64, 2, 2)]
        >>> clip.encode_text(["cat", "dog"]).embeddings.shape
        torch.Size([2, 32])
        >>> clip.dense_features(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 32, 2, 2])
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, *, model: nn.Module, tokenizer: Any) -> None:
        """Wrap an open_clip model; prefer `build_clip_convnext`.

        Args:
            model: An `open_clip.CLIP` whose image tower is a timm ConvNeXt (open_clip's
                `convnext_*` configs), with a norm in its pooling head.
            tokenizer: The matching open_clip tokenizer (callable on a list of strings).

        Raises:
            ValueError: If the model is not an `open_clip.CLIP` with such a tower.
        """
        super().__init__()
        visual = getattr(model, "visual", None)
        trunk = getattr(visual, "trunk", None)
        if (
            not isinstance(model, open_clip.CLIP)
            or not isinstance(visual, TimmModel)
            or type(trunk).__name__ != "ConvNeXt"
        ):
            raise ValueError(
                "ClipConvNeXt needs an open_clip.CLIP with a timm ConvNeXt image tower (open_clip "
                f"'convnext_*' models), got {type(model).__name__} with "
                f"{type(visual).__name__} / {type(trunk).__name__}; ViT CLIPs: build_clip_backbone"
            )
        trunk = cast(Any, trunk)
        head = trunk.head
        if not (
            isinstance(getattr(head, "norm", None), nn.Module)
            and isinstance(getattr(head, "pre_logits", None), nn.Identity)
            and isinstance(getattr(head, "fc", None), nn.Identity)
        ):
            raise ValueError(
                "ClipConvNeXt: unsupported ConvNeXt head (expected pool -> norm -> identity, as "
                f"open_clip builds it), got {type(head).__name__}"
            )
        self.model = model
        self.tokenizer = tokenizer
        info = trunk.feature_info
        self.channels: list[int] = [int(i["num_chs"]) for i in info]
        self.strides: tuple[int, ...] = tuple(int(i["reduction"]) for i in info)
        proj = model.text_projection
        self.embed_dim: int = int(
            proj.out_features if isinstance(proj, nn.Linear) else proj.shape[-1]
        )
        cfg = open_clip.get_model_preprocess_cfg(model)
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("pixel_mean", _tensor(mean), persistent=False)
        self.register_buffer("pixel_std", _tensor(std), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def trainable_policy(self) -> str:
        """Always `"none"`: the CLIP is frozen (recorded by `save_pretrained`)."""
        return "none"

    def train(self, mode: bool = True) -> ClipConvNeXt:
        """Keep the frozen CLIP in eval mode (drop-path and dropout off) whatever `mode` is."""
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, images: Tensor) -> list[Tensor]:
        """The ConvNeXt stage outputs of images, finest first.

        Args:
            images: RGB images `(B, 3, H, W)`, float in `[0, 1]`.

        Returns:
            4 maps `(B, C_i, H / s_i, W / s_i)` for the strides `s_i` = 4, 8, 16, 32 (before
            the head's norm), as timm's `forward_intermediates` gives them.
        """
        check_shape(images, "B 3 H W", name="images")
        trunk = self.model.visual.trunk
        x = ((images - self.pixel_mean) / self.pixel_std).to(trunk.stem[0].weight.dtype)
        return list(trunk.forward_intermediates(x, intermediates_only=True))

    def dense_features(self, images: Tensor) -> Tensor:
        """Per-pixel joint-space features of the last stage: the image head at every location.

        The head that open_clip applies after global average pooling (the ConvNeXt head's norm,
        then the projection) is applied to each location of the last stage instead, so a map
        of one location gives CLIP's (unnormalised) image embedding. FC-CLIP pools the last
        stage over a mask first and then applies the head; a mask-pooled `dense_features`
        differs from that where the head is not linear (its norm).

        Args:
            images: RGB images `(B, 3, H, W)`, float in `[0, 1]`.

        Returns:
            `(B, C_e, H / 32, W / 32)`, not normalised.
        """
        last = self(images)[-1]
        x = rearrange(self.model.visual.trunk.head.norm(last), "b c h w -> b h w c")
        return rearrange(self.model.visual.head(x), "b h w c -> b c h w")

    def encode_text(
        self, texts: str | Sequence[str], *, templates: Sequence[str] | None = None
    ) -> TextEmbedding:
        """Embed class names with the CLIP's text tower, with template ensembling.

        Every template is filled with every text and encoded by open_clip's `encode_text`
        (normalised); per text, its templates' embeddings are averaged and renormalised.

        Args:
            texts: One text (a `str` is one text) or `T >= 1` texts.
            templates: Format strings with one `{}` (e.g. `["a photo of a {}."]`); `None` uses
                the texts as they are.

        Returns:
            `TextEmbedding` with L2-normalised `embeddings (T, C_e)` and `texts` as given.

        Raises:
            ValueError: For no texts, no templates or a template without `{}`.
            TypeError: If `texts` is neither a `str` nor a sequence of `str`.
        """
        names = as_class_names(texts, name="texts")
        fmts = ["{}"] if templates is None else list(templates)
        if not fmts or any("{}" not in f for f in fmts):
            raise ValueError(f"templates: expected one or more strings with a '{{}}', got {fmts}")
        filled = [f.format(n) for n in names for f in fmts]
        device = self.model.token_embedding.weight.device
        emb = self.model.encode_text(self.tokenizer(filled).to(device), normalize=True)
        emb = rearrange(emb, "(t p) c -> t p c", p=len(fmts))
        return TextEmbedding(embeddings=F.normalize(emb.mean(dim=1), dim=-1), texts=names)


def _tensor(values: Sequence[float]) -> Tensor:
    return torch.tensor(list(values)).reshape(1, 3, 1, 1)


def _is_convnext_clip(name: str) -> bool:
    """Whether an open_clip model name (or samkit's `tiny-convnext`) has a ConvNeXt image tower.

    Args:
        name: An open_clip built-in model name or a samkit inline name.

    Returns:
        True for `convnext_*` towers (e.g. `"convnext_base_w"`, `"convnext_large_d_320"`).

    Raises:
        ValueError: For names that cannot be built offline or are unknown.
    """
    check_name(name)
    if name in INLINE_CFGS:
        vision: Any = INLINE_CFGS[name](None)["vision_cfg"]
        timm_name = getattr(vision, "timm_model_name", None)
    else:
        cfg = open_clip.get_model_config(name.replace("/", "-")) or {}
        timm_name = cfg.get("vision_cfg", {}).get("timm_model_name")
    return str(timm_name or "").startswith(("convnext", "test_convnext"))


def build_clip_convnext(
    name: str = "convnext_base_w",
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    quick_gelu: bool | None = None,
) -> ClipConvNeXt:
    """Build a frozen `ClipConvNeXt` offline.

    Args:
        name: An open_clip ConvNeXt CLIP name (`"convnext_base_w"`, `"convnext_base_w_320"`,
            `"convnext_large_d"`, `"convnext_large_d_320"`, `"convnext_xxlarge"`, ...), or
            `"tiny-convnext"` (timm's `test_convnext` tower, 2-block text tower, `C_e` 32) for
            tests.
        checkpoint: A local open_clip checkpoint of that model (`open_clip_pytorch_model.bin`,
            `open_clip_model.safetensors`, or any `torch.save(model.state_dict())`; a
            `state_dict` key and `module.` prefixes are unwrapped), loaded strictly: a key
            missing from the file or unexpected in it raises, naming the file. Pickles are read
            with `weights_only=True` only. `None`: random weights. Never downloaded.
        quick_gelu: QuickGELU in the text tower; `None`: as the checkpoint indicates (see
            `build_clip_backbone`), else GELU (open_clip's LAION ConvNeXt CLIPs use GELU).

    Returns:
        The backbone, frozen and in eval mode, on the CPU.

    Raises:
        ValueError: If `name` is not a ConvNeXt CLIP or cannot be built offline, or the
            checkpoint is unreadable.
        FileNotFoundError: If `checkpoint` does not exist.
        RuntimeError: If the checkpoint's keys or shapes do not fit `name` (the message names
            the file and lists the missing and unexpected keys).

    Examples:
        >>> build_clip_convnext("tiny-convnext").strides
        (4, 8, 16, 32)
    """
    if not _is_convnext_clip(name):
        raise ValueError(
            f"name: expected an open_clip ConvNeXt CLIP (e.g. 'convnext_base_w', "
            f"'convnext_large_d_320' or 'tiny-convnext'), got {name!r}; ViT CLIPs are built "
            "by build_clip_backbone"
        )
    model = create_clip_model(name, checkpoint, image_size=None, quick_gelu=quick_gelu)
    return ClipConvNeXt(model=model, tokenizer=create_tokenizer(name))
