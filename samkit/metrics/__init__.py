"""Evaluation metrics, streaming where the data can be large."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.metrics.instance import (
        MaskAP,
        mask_ap,
    )
    from samkit.metrics.mean import MeanMetric
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
    "MeanMetric",
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

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "instance": [
                "MaskAP",
                "mask_ap",
            ],
            "mean": [
                "MeanMetric",
            ],
            "panoptic": [
                "PanopticQuality",
                "panoptic_quality",
            ],
            "referring": [
                "PR_THRESHOLDS",
                "REFERENCE_EMPTY_TOLERANCE",
                "ReferringMetrics",
                "has_target_from_mask",
                "referring_iou",
                "referring_metrics",
                "to_sam_padded_frame",
            ],
            "semantic": [
                "SemanticIoU",
                "SemanticScores",
                "confusion_matrix",
                "intersect_and_union",
                "mean_iou",
                "semantic_metrics",
            ],
        },
    )
