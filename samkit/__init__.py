"""samkit: small, typed, composable modules that make Segment Anything semantic-aware."""

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
