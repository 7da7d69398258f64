"""samkit: small, typed, composable modules that make Segment Anything semantic-aware.

Public names are imported when first used (see `samkit._lazy`), so `import samkit` is cheap and
`samkit.backbones`, `samkit.systems.build_ssp_sam`, ... load their submodules on demand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit import backbones, data, losses, metrics, modules, systems, types
    from samkit.systems import (
        build_sam_cp,
        build_sam_mi,
        build_ssp_sam,
        build_system,
        load_pretrained,
    )
    from samkit.types import (
        AffinityDecoderOutput,
        ClipDenseOutput,
        ImageEmbedding,
        InjectedGuidance,
        LinguisticFeatures,
        MaskPrediction,
        PanopticResult,
        Patches,
        PatchTargets,
        Prompts,
        ReferringLossTerms,
        ReferringOutput,
        SAMCPOutput,
        SAMMIOutput,
        SemanticSpatialPrompts,
        TextEmbedding,
        TSPPOutput,
    )

__version__ = "0.1.0"

__all__ = [
    "AffinityDecoderOutput",
    "ClipDenseOutput",
    "ImageEmbedding",
    "InjectedGuidance",
    "LinguisticFeatures",
    "MaskPrediction",
    "PanopticResult",
    "PatchTargets",
    "Patches",
    "Prompts",
    "ReferringLossTerms",
    "ReferringOutput",
    "SAMCPOutput",
    "SAMMIOutput",
    "SemanticSpatialPrompts",
    "TSPPOutput",
    "TextEmbedding",
    "__version__",
    "backbones",
    "build_sam_cp",
    "build_sam_mi",
    "build_ssp_sam",
    "build_system",
    "data",
    "load_pretrained",
    "losses",
    "metrics",
    "modules",
    "systems",
    "types",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "systems": [
                "build_sam_cp",
                "build_sam_mi",
                "build_ssp_sam",
                "build_system",
                "load_pretrained",
            ],
            "types": [
                "AffinityDecoderOutput",
                "ClipDenseOutput",
                "ImageEmbedding",
                "InjectedGuidance",
                "LinguisticFeatures",
                "MaskPrediction",
                "PanopticResult",
                "PatchTargets",
                "Patches",
                "Prompts",
                "ReferringLossTerms",
                "ReferringOutput",
                "SAMCPOutput",
                "SAMMIOutput",
                "SemanticSpatialPrompts",
                "TSPPOutput",
                "TextEmbedding",
            ],
        },
        submodules=[
            "backbones",
            "cli",
            "data",
            "engine",
            "export",
            "losses",
            "matching",
            "metrics",
            "modules",
            "proposals",
            "visualization",
        ],
    )
