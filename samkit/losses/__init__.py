"""Losses, each as a function and a Module that calls it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.losses.box import (
        BoxL1Loss,
        GIoULoss,
        box_l1_loss,
        giou_loss,
    )
    from samkit.losses.referring import (
        ReferringLoss,
        referring_loss,
    )
    from samkit.losses.sam_cp import (
        SAMCPLoss,
        sam_cp_loss,
    )
    from samkit.losses.sam_mi import (
        SAMMILoss,
        cost_aggregation_loss,
        tspp_loss,
    )
    from samkit.losses.segmentation import (
        DiceLoss,
        SigmoidFocalLoss,
        dice_loss,
        pairwise_dice_loss,
        sigmoid_focal_loss,
    )

__all__ = [
    "BoxL1Loss",
    "DiceLoss",
    "GIoULoss",
    "ReferringLoss",
    "SAMCPLoss",
    "SAMMILoss",
    "SigmoidFocalLoss",
    "box_l1_loss",
    "cost_aggregation_loss",
    "dice_loss",
    "giou_loss",
    "pairwise_dice_loss",
    "referring_loss",
    "sam_cp_loss",
    "sigmoid_focal_loss",
    "tspp_loss",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "box": [
                "BoxL1Loss",
                "GIoULoss",
                "box_l1_loss",
                "giou_loss",
            ],
            "referring": [
                "ReferringLoss",
                "referring_loss",
            ],
            "sam_cp": [
                "SAMCPLoss",
                "sam_cp_loss",
            ],
            "sam_mi": [
                "SAMMILoss",
                "cost_aggregation_loss",
                "tspp_loss",
            ],
            "segmentation": [
                "DiceLoss",
                "SigmoidFocalLoss",
                "dice_loss",
                "pairwise_dice_loss",
                "sigmoid_focal_loss",
            ],
        },
    )
