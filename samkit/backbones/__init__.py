"""Backbones: the only place that reaches into segment_anything and open_clip."""

from samkit.backbones.clip import ClipBackbone, build_clip_backbone, similarity_map
from samkit.backbones.sam import SamBackbone, SamLike, build_sam_backbone

__all__ = [
    "ClipBackbone",
    "SamBackbone",
    "SamLike",
    "build_clip_backbone",
    "build_sam_backbone",
    "similarity_map",
]
