"""Backbones: the only place that reaches into segment_anything and open_clip."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.backbones.clip import ClipBackbone, build_clip_backbone, similarity_map
    from samkit.backbones.clip_convnext import ClipConvNeXt, build_clip_convnext
    from samkit.backbones.efficientvit_sam import (
        EFFICIENTVIT_SAM_VARIANTS,
        EfficientVitSamBackbone,
        EfficientVitSamVariantSpec,
        build_efficientvit_sam_backbone,
    )
    from samkit.backbones.hq_sam import (
        HQ_SAM_VARIANTS,
        HQSamBackbone,
        LightHQSamBackbone,
        build_hq_sam_backbone,
    )
    from samkit.backbones.mobile_sam import (
        MOBILE_SAM_VARIANTS,
        MobileSamBackbone,
        MobileSamVariantSpec,
        build_mobile_sam_backbone,
    )
    from samkit.backbones.sam import (
        SAM_VARIANTS,
        SamBackbone,
        SamLike,
        SamVariantSpec,
        build_sam_backbone,
    )
    from samkit.backbones.sam2_backend import (
        SAM2_VARIANTS,
        Sam2Backbone,
        Sam2VariantSpec,
        build_sam2_backbone,
    )

__all__ = [
    "ClipBackbone",
    "ClipConvNeXt",
    "EFFICIENTVIT_SAM_VARIANTS",
    "EfficientVitSamBackbone",
    "EfficientVitSamVariantSpec",
    "HQSamBackbone",
    "HQ_SAM_VARIANTS",
    "LightHQSamBackbone",
    "MOBILE_SAM_VARIANTS",
    "MobileSamBackbone",
    "MobileSamVariantSpec",
    "SAM2_VARIANTS",
    "SAM_VARIANTS",
    "Sam2Backbone",
    "Sam2VariantSpec",
    "SamBackbone",
    "SamLike",
    "SamVariantSpec",
    "build_clip_backbone",
    "build_clip_convnext",
    "build_efficientvit_sam_backbone",
    "build_hq_sam_backbone",
    "build_mobile_sam_backbone",
    "build_sam2_backbone",
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
            "efficientvit_sam": [
                "EFFICIENTVIT_SAM_VARIANTS",
                "EfficientVitSamBackbone",
                "EfficientVitSamVariantSpec",
                "build_efficientvit_sam_backbone",
            ],
            "hq_sam": [
                "HQ_SAM_VARIANTS",
                "HQSamBackbone",
                "LightHQSamBackbone",
                "build_hq_sam_backbone",
            ],
            "mobile_sam": [
                "MOBILE_SAM_VARIANTS",
                "MobileSamBackbone",
                "MobileSamVariantSpec",
                "build_mobile_sam_backbone",
            ],
            "sam": [
                "SAM_VARIANTS",
                "SamBackbone",
                "SamLike",
                "SamVariantSpec",
                "build_sam_backbone",
            ],
            "sam2_backend": [
                "SAM2_VARIANTS",
                "Sam2Backbone",
                "Sam2VariantSpec",
                "build_sam2_backbone",
            ],
        },
    )
