"""samkit: small, typed, composable modules that make Segment Anything semantic-aware."""

from samkit.types import ImageEmbedding, MaskPrediction, Prompts, TextEmbedding

__version__ = "0.1.0"

__all__ = [
    "ImageEmbedding",
    "MaskPrediction",
    "Prompts",
    "TextEmbedding",
    "__version__",
]
