"""What a SAM backend's `encode` reads, so that a cache of its embeddings can track exactly that.

A `SamBackbone` (and `HQSamBackbone`, `MobileSamBackbone`) embeds images with its image encoder
and its pixel statistics only, so fine-tuning the mask decoder (SSP-SAM does) leaves cached
embeddings valid. Other backends (SAM 2 reads its mask decoder's high-resolution convolutions)
are tracked whole; a backend that is not an `nn.Module` cannot be tracked at all.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from samkit.backbones.sam import SamBackbone

__all__ = ["sam_encoder_parts"]


def sam_encoder_parts(sam: Any) -> list[nn.Module | Tensor] | None:
    """The modules and tensors whose weights `sam.encode` reads (`None`: cannot be tracked).

    Examples:
        >>> from samkit.backbones.sam import build_sam_backbone
        >>> sam = build_sam_backbone("tiny")
        >>> [type(p).__name__ for p in sam_encoder_parts(sam)]
        ['ImageEncoderViT', 'Tensor', 'Tensor']
    """
    if isinstance(sam, SamBackbone):
        mean, std = sam.pixel_mean, sam.pixel_std
        assert isinstance(mean, Tensor) and isinstance(std, Tensor)
        return [sam.image_encoder, mean, std]
    if isinstance(sam, nn.Module):
        return [sam]
    return None
