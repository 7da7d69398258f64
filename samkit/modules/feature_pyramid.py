"""Image feature pyramids for SAM-CP's patch encoder, random or from local pretrained weights.

`ResNetFPN` (torchvision ResNet + FPN, the paper's closed-vocabulary backbone), `TimmFPN` (any
timm backbone + FPN, e.g. Swin-L), `BackboneFPN` (an FPN over a backbone given built, e.g. a CLIP
ConvNeXt for the open-vocabulary setting) and `TinyFeaturePyramid` (a few strided convs for
tests). Each takes RGB images `(B, 3, H, W)` in `[0, 1]` and returns levels `(B, D, h, w)`,
finest first, and declares their `strides`. Trunk weights come from local files only, loaded
strictly (`ResNetFPN.load_resnet_weights`, `TimmFPN(checkpoint=...)`).

Axis legend:
    b - images (B)
    c - channels
    h, w - feature grid
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork

from samkit._checks import check_shape
from samkit._io import read_checkpoint

__all__ = ["BackboneFPN", "ResNetFPN", "TimmFPN", "TinyFeaturePyramid"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class _Normalize(nn.Module):
    mean: Tensor
    std: Tensor

    def _normalize(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std


class TinyFeaturePyramid(_Normalize):
    """A small strided-conv feature pyramid (strides 4, 8, 16, 32) for fast CPU runs and tests.

    Images in `[0, 1]` are ImageNet-normalised, then each level is a 3x3 stride-2 conv, a norm
    layer and ReLU.

    Examples:
        >>> [f.shape[-1] for f in TinyFeaturePyramid(dim=8)(torch.rand(1, 3, 64, 64))]
        [16, 8, 4, 2]
    """

    def __init__(self, *, dim: int = 32, num_levels: int = 4, norm: str = "batch") -> None:
        """Create the pyramid.

        Args:
            dim: Output channels of every level.
            num_levels: Number of levels (strides `4 * 2**i`).
            norm: `"batch"`, `"group"` (one group: per-image statistics) or `"none"`.
        """
        super().__init__()
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

        if norm not in ("batch", "group", "none"):
            raise ValueError(f"norm must be 'batch', 'group' or 'none', got {norm!r}")

        def block(cin: int, cout: int) -> nn.Sequential:
            layer: nn.Module = nn.Identity()
            if norm == "batch":
                layer = nn.BatchNorm2d(cout)
            elif norm == "group":
                layer = nn.GroupNorm(1, cout)
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), layer, nn.ReLU())

        self.stem = nn.Sequential(block(3, dim), block(dim, dim))
        self.levels = nn.ModuleList([block(dim, dim) for _ in range(num_levels - 1)])
        self.out_channels = dim
        self.strides: tuple[int, ...] = tuple(4 * 2**i for i in range(num_levels))

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute the pyramid of `(B, 3, H, W)` images; returns `[(B, D, H/4, W/4), ...]`."""
        check_shape(images, "B 3 H W", name="images")
        x = self.stem(self._normalize(images))
        out = [x]
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


# torchvision ResNet key prefixes -> ResNetFPN trunk prefixes
_RESNET_PREFIXES = (
    ("conv1.", "stem.0."),
    ("bn1.", "stem.1."),
    ("layer1.", "stages.0."),
    ("layer2.", "stages.1."),
    ("layer3.", "stages.2."),
    ("layer4.", "stages.3."),
)
# The ImageNet classifier of a torchvision ResNet: not part of the FPN trunk, never loaded.
_RESNET_HEAD = ("fc.weight", "fc.bias")


def _rename(key: str, pairs: Sequence[tuple[str, str]]) -> str | None:
    """`key` with its first matching `(old, new)` prefix replaced, or `None` if none matches."""
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _listing(items: Sequence[str], n: int = 8) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return f"({len(items)}): " + ", ".join(items[:n]) + more


def _check_state(
    path: Path, state: dict[str, Tensor], expected: dict[str, Tensor], *, what: str
) -> None:
    """Raise a `ValueError` naming `path` unless `state` has `expected`'s keys and shapes."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{name} {_listing(items)}"
        for name, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise ValueError(f"{path}: does not fit {what}: " + "; ".join(problems))


def _read_state_dict(checkpoint: str | os.PathLike[str], *, kind: str) -> dict[str, Tensor]:
    """A state dict (`str` -> tensor) from a local `.pth` / `.pt` / `.safetensors` file.

    Pickles are read with `weights_only=True` only (`samkit._io.read_checkpoint`); a dict under
    a `"state_dict"` key (training checkpoints) is unwrapped.

    Args:
        checkpoint: The file.
        kind: What the file should hold, for messages (`"torchvision ResNet checkpoint"`).

    Returns:
        The state dict, as stored (dtypes unchanged).

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it is unreadable or holds no state dict; the message names the file.
    """
    path = Path(checkpoint)
    obj = read_checkpoint(path, kind=kind)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise ValueError(
            f"{path}: not a readable {kind}: expected a state dict (names -> tensors, optionally "
            f"under 'state_dict'), got {type(obj).__name__}"
        )
    return obj


class ResNetFPN(_Normalize):
    """torchvision ResNet + FPN feature pyramid (strides 4, 8, 16, 32), the SAM-CP default.

    The ResNet uses `FrozenBatchNorm2d` (SAM-CP freezes BN: `requires_grad=False`,
    `norm_eval=True`); its stem and first `4 - trainable_layers` stages are frozen. Weights of
    a torchvision ResNet (the file `torchvision.models.resnet50(weights=...)` downloads) load
    with `checkpoint=` or `load_resnet_weights`; the FPN always starts random.

    Examples:
        >>> net = ResNetFPN(depth=18, out_channels=16)
        >>> [f.shape[1] for f in net(torch.rand(1, 3, 64, 64))]
        [16, 16, 16, 16]
        >>> [f.shape[1] for f in net.trunk_features(torch.rand(1, 3, 64, 64))]
        [64, 128, 256, 512]
    """

    def __init__(
        self,
        *,
        depth: int = 50,
        out_channels: int = 256,
        trainable_layers: int = 3,
        checkpoint: str | os.PathLike[str] | None = None,
    ) -> None:
        """Create a ResNet-`depth` with an FPN, random or with local torchvision weights.

        Args:
            depth: 18, 34, 50, 101 or 152.
            out_channels: FPN width `D`.
            trainable_layers: How many of the last ResNet stages are trainable (the rest frozen).
            checkpoint: A local torchvision ResNet state dict (`.pth` or `.safetensors`) for the
                trunk, loaded strictly by `load_resnet_weights`; `None`: random weights. Never
                downloaded.

        Raises:
            ValueError: For an unsupported `depth` or a checkpoint that does not fit.
        """
        super().__init__()
        import torchvision

        if depth not in (18, 34, 50, 101, 152):
            raise ValueError(f"depth: expected 18, 34, 50, 101 or 152, got {depth}")
        resnet = getattr(torchvision.models, f"resnet{depth}")(
            weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d
        )
        self.depth = depth
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        for stage in list(self.stages)[: 4 - trainable_layers]:
            stage.requires_grad_(False)
        self.stem.requires_grad_(False)
        widths = [64, 128, 256, 512] if depth < 50 else [256, 512, 1024, 2048]
        self.fpn = FeaturePyramidNetwork(widths, out_channels)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.out_channels = out_channels
        self.strides: tuple[int, ...] = (4, 8, 16, 32)
        if checkpoint is not None:
            self.load_resnet_weights(checkpoint)

    def load_resnet_weights(self, checkpoint: str | os.PathLike[str]) -> None:
        """Load a torchvision ResNet state dict into the trunk (stem and 4 stages), strictly.

        The file is torchvision's layout (`conv1.weight`, `bn1.running_mean`,
        `layer1.0.conv1.weight`, ..., `fc.weight`), e.g. `resnet50-11ad3fa6.pth` as
        `resnet50(weights=ResNet50_Weights.IMAGENET1K_V2)` downloads it, or any
        `torch.save(resnet.state_dict())`. The BatchNorm weights, biases and running statistics
        go into the `FrozenBatchNorm2d` buffers; `num_batches_tracked` counters are ignored (the
        frozen layers have none). The ImageNet classifier `fc.weight` / `fc.bias` is not part of
        the FPN trunk and is dropped (a file without it loads too). Every other key of the file
        must match a trunk tensor of the same shape, and every trunk tensor must be in the
        file. The FPN is not touched.

        Args:
            checkpoint: The local file (`.pth` / `.pt` read with `weights_only=True`, or
                `.safetensors`).

        Raises:
            FileNotFoundError: If the file does not exist.
            ValueError: If it is unreadable or does not fit ResNet-`depth`: the message names
                the file and lists the missing and unexpected keys (torchvision's names) and
                the shape mismatches.
        """
        path = Path(checkpoint)
        state = _read_state_dict(path, kind="torchvision ResNet checkpoint")
        back = [(new, old) for old, new in _RESNET_PREFIXES]
        expected = {
            str(_rename(k, back)): v
            for k, v in self.state_dict().items()
            if k.startswith(("stem.", "stages."))
        }
        # BatchNorm2d's counters: FrozenBatchNorm2d keeps none
        counters = {
            k.replace(".running_mean", ".num_batches_tracked")
            for k in expected
            if k.endswith(".running_mean")
        }
        state = {k: v for k, v in state.items() if k not in _RESNET_HEAD and k not in counters}
        _check_state(path, state, expected, what=f"a torchvision ResNet-{self.depth} trunk")
        mapped = {str(_rename(k, _RESNET_PREFIXES)): v for k, v in state.items()}
        for name, part in (("stem.", self.stem), ("stages.", self.stages)):
            part.load_state_dict(
                {k[len(name) :]: v for k, v in mapped.items() if k[: len(name)] == name}
            )

    def trunk_features(self, images: Tensor) -> list[Tensor]:
        """ResNet stage outputs (C2..C5) of `(B, 3, H, W)` images in `[0, 1]`, before the FPN.

        Args:
            images: RGB images `(B, 3, H, W)` in `[0, 1]` (ImageNet-normalised here).

        Returns:
            4 maps `(B, C_i, h_i, w_i)` at strides 4, 8, 16, 32 (`C_i` 64..512 for depths 18
            and 34, 256..2048 for 50 and deeper).
        """
        check_shape(images, "B 3 H W", name="images")
        x = self.stem(self._normalize(images))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute FPN levels of `(B, 3, H, W)` images in `[0, 1]`; returns 4 `(B, D, h, w)`."""
        feats = self.trunk_features(images)
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())


class TimmFPN(_Normalize):
    """Any timm backbone with 4 feature levels (e.g. ConvNeXt-L, Swin-L) + a torchvision FPN.

    Built random or from a local timm checkpoint (never downloaded).

    Examples:
        >>> net = TimmFPN(model_name="resnet18", out_channels=16)
        >>> len(net(torch.rand(1, 3, 64, 64)))
        4
    """

    def __init__(
        self,
        *,
        model_name: str,
        out_channels: int = 256,
        checkpoint: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the backbone.

        Args:
            model_name: A timm model name (`"convnext_large"`, `"swin_large_patch4_window7_224"`).
            out_channels: FPN width `D`.
            checkpoint: A local state dict of the timm model `model_name` (as
                `timm.create_model(model_name).state_dict()` or the weights file of a timm
                release, in timm's layout), checked strictly (every key and shape; the
                classifier head is optional and unused) and loaded by timm; `None`: random
                weights. Never downloaded.
            **kwargs: Passed to `timm.create_model` (e.g. `img_size` for Swin).

        Raises:
            ValueError: If the checkpoint is unreadable or does not fit `model_name` (the
                message names the file and lists missing / unexpected keys and shapes).
        """
        super().__init__()
        import timm

        load: dict[str, Any] = {"pretrained": False}
        if checkpoint is not None:
            load = _timm_weights(model_name, checkpoint, kwargs)
        self.body = timm.create_model(
            model_name, features_only=True, out_indices=(-4, -3, -2, -1), **load, **kwargs
        )
        self.channels = list(self.body.feature_info.channels())  # type: ignore[union-attr,operator]
        self.fpn = FeaturePyramidNetwork(self.channels, out_channels)
        cfg = getattr(self.body, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean", _MEAN), cfg.get("std", _STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.out_channels = out_channels
        self.strides: tuple[int, ...] = tuple(
            int(r)
            for r in self.body.feature_info.reduction()  # type: ignore[union-attr,operator]
        )

    def trunk_features(self, images: Tensor) -> list[Tensor]:
        """The backbone's 4 levels of `(B, 3, H, W)` images in `[0, 1]`, before the FPN, NCHW."""
        check_shape(images, "B 3 H W", name="images")
        feats = []
        for x, c in zip(self.body(self._normalize(images)), self.channels, strict=True):
            if x.shape[1] != c and x.shape[-1] == c:  # channels-last (Swin)
                x = rearrange(x, "b h w c -> b c h w")
            feats.append(x)
        return feats

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute FPN levels of `(B, 3, H, W)` images in `[0, 1]`; returns 4 `(B, D, h, w)`."""
        feats = self.trunk_features(images)
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())


def _timm_weights(
    model_name: str, checkpoint: str | os.PathLike[str], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """`timm.create_model` arguments that load a local state dict, checked strictly first.

    timm loads weights into a `features_only` model without strictness (it drops the classifier
    and ignores missing keys), so the file is compared here with the full model's state dict
    (built on the meta device: no memory, no weights); the classifier is optional.
    """
    import timm

    path = Path(checkpoint)
    state = _read_state_dict(path, kind=f"timm {model_name} checkpoint")
    with torch.device("meta"):
        full = timm.create_model(model_name, pretrained=False, **kwargs)
    cfg: dict[str, Any] = getattr(full, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    head_keys = {f"{h}.{p}" for h in heads for p in ("weight", "bias")}
    _check_state(
        path,
        {k: v for k, v in state.items() if k not in head_keys},
        {k: v for k, v in full.state_dict().items() if k not in head_keys},
        what=f"timm model {model_name!r}",
    )
    # a state dict handed to timm: nothing is looked up or downloaded
    overlay = {"state_dict": state, "source": "", "file": None, "url": None, "hf_hub_id": None}
    return {"pretrained": True, "pretrained_cfg_overlay": overlay}


class BackboneFPN(nn.Module):
    """A torchvision FPN over any multi-level backbone given already built.

    The backbone maps RGB images `(B, 3, H, W)` in `[0, 1]` to its levels, finest first (it
    normalises them itself), e.g. the image tower of a CLIP ConvNeXt
    (`samkit.backbones.clip_convnext.ClipConvNeXt`). It is used as it is (frozen or not); the
    FPN is new.

    Examples:
        >>> trunk = TinyFeaturePyramid(dim=8)
        >>> net = BackboneFPN(backbone=trunk, channels=[8] * 4, strides=trunk.strides,
        ...                   out_channels=16)
        >>> [tuple(f.shape[1:]) for f in net(torch.rand(1, 3, 64, 64))][:2]
        [(16, 16, 16), (16, 8, 8)]
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        channels: Sequence[int],
        strides: Sequence[int],
        out_channels: int = 256,
    ) -> None:
        """Create the FPN.

        Args:
            backbone: Images `(B, 3, H, W)` in `[0, 1]` -> list of `(B, C_i, h_i, w_i)`.
            channels: `C_i` of each level.
            strides: Stride of each level (RoIAlign scales).
            out_channels: FPN width `D`.

        Raises:
            ValueError: If `channels` and `strides` differ in length or are empty.
        """
        super().__init__()
        if not channels or len(channels) != len(strides):
            raise ValueError(
                f"channels, strides: expected one of each per level, got {len(channels)} and "
                f"{len(strides)}"
            )
        self.backbone = backbone
        self.channels = [int(c) for c in channels]
        self.fpn = FeaturePyramidNetwork(self.channels, out_channels)
        self.out_channels = out_channels
        self.strides: tuple[int, ...] = tuple(int(s) for s in strides)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Compute FPN levels of `(B, 3, H, W)` images in `[0, 1]`; returns `(B, D, h, w)` maps."""
        check_shape(images, "B 3 H W", name="images")
        feats = list(self.backbone(images))
        if len(feats) != len(self.channels):
            raise ValueError(f"backbone: expected {len(self.channels)} levels, got {len(feats)}")
        return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())
