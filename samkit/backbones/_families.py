"""Private dispatch of `build_sam_backbone` to the optional SAM families (SAM 2, HQ-SAM, ...).

Each family lives in its own module, which imports its upstream package only when a backbone is
built, so listing the variant names here costs no upstream import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import nn

__all__: list[str] = []


def _families() -> dict[str, tuple[dict[str, Any], Callable[..., nn.Module]]]:
    """Family name -> (its variants by name, its builder)."""
    from samkit.backbones.efficientvit_sam import (
        EFFICIENTVIT_SAM_VARIANTS,
        build_efficientvit_sam_backbone,
    )
    from samkit.backbones.hq_sam import HQ_SAM_VARIANTS, build_hq_sam_backbone
    from samkit.backbones.mobile_sam import MOBILE_SAM_VARIANTS, build_mobile_sam_backbone
    from samkit.backbones.sam2_backend import SAM2_VARIANTS, build_sam2_backbone

    return {
        "SAM 2": (SAM2_VARIANTS, build_sam2_backbone),
        "HQ-SAM": (HQ_SAM_VARIANTS, build_hq_sam_backbone),
        "MobileSAM": (MOBILE_SAM_VARIANTS, build_mobile_sam_backbone),
        "EfficientViT-SAM": (EFFICIENTVIT_SAM_VARIANTS, build_efficientvit_sam_backbone),
    }


def family_variants() -> dict[str, list[str]]:
    """The variant names of every optional family, sorted, by family name."""
    return {family: sorted(variants) for family, (variants, _) in _families().items()}


def build_family_backbone(
    variant: str, checkpoint: str | os.PathLike[str] | None
) -> nn.Module | None:
    """Build `variant` with its family's builder, or return `None` if no family has it."""
    for variants, build in _families().values():
        if variant in variants:
            return build(variant, checkpoint)
    return None
