"""Losses, each as a function and a Module that calls it."""

from samkit.losses.segmentation import (
    DiceLoss,
    SigmoidFocalLoss,
    dice_loss,
    pairwise_dice_loss,
    sigmoid_focal_loss,
)

__all__ = [
    "DiceLoss",
    "SigmoidFocalLoss",
    "dice_loss",
    "pairwise_dice_loss",
    "sigmoid_focal_loss",
]
