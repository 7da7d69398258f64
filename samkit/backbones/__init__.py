"""Backbones: the only place that reaches into segment_anything and open_clip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.backbones.clip import ClipBackbone, build_clip_backbone, similarity_map
    from samkit.backbones.clip_convnext import ClipConvNeXt, build_clip_convnext
    from samkit.backbones.sam import (
        SAM_VARIANTS,
        SamBackbone,
        SamLike,
        SamVariantSpec,
        build_sam_backbone,
    )

__all__ = [
    "ClipBackbone",
    "ClipConvNeXt",
    "SAM_VARIANTS",
    "SamBackbone",
    "SamLike",
    "SamVariantSpec",
    "build_clip_backbone",
    "build_clip_convnext",
    "build_sam_backbone",
    "similarity_map",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "clip": [
                "ClipBackbone",
                "build_clip_backbone",
                "similarity_map",
            ],
            "clip_convnext": ["ClipConvNeXt", "build_clip_convnext"],
            "sam": [
                "SAM_VARIANTS",
                "SamBackbone",
                "SamLike",
                "SamVariantSpec",
                "build_sam_backbone",
            ],
        },
    )
