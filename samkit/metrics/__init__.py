"""Evaluation metrics, streaming where the data can be large."""

from samkit.metrics.instance import (
    MaskAP,
    mask_ap,
)
from samkit.metrics.panoptic import (
    PanopticQuality,
    panoptic_quality,
)
from samkit.metrics.referring import (
    PR_THRESHOLDS,
    REFERENCE_EMPTY_TOLERANCE,
    ReferringMetrics,
    has_target_from_mask,
    referring_iou,
    referring_metrics,
    to_sam_padded_frame,
)
from samkit.metrics.semantic import (
    SemanticIoU,
    SemanticScores,
    confusion_matrix,
    intersect_and_union,
    mean_iou,
    semantic_metrics,
)

__all__ = [
    "MaskAP",
    "PR_THRESHOLDS",
    "PanopticQuality",
    "REFERENCE_EMPTY_TOLERANCE",
    "ReferringMetrics",
    "SemanticIoU",
    "SemanticScores",
    "confusion_matrix",
    "has_target_from_mask",
    "intersect_and_union",
    "mask_ap",
    "mean_iou",
    "panoptic_quality",
    "referring_iou",
    "referring_metrics",
    "semantic_metrics",
    "to_sam_padded_frame",
]
