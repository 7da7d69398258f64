"""Per-mask sigmoid losses shared by the systems: focal and dice.

Both take mask logits and binary targets of the same shape `(..., *spatial)`; the last
`spatial_dims` axes are the pixels of one mask, everything before them indexes masks.

Input contract: targets must lie in `[0, 1]` (bool, binary, or soft targets such as point-sampled
masks); half-precision logits are computed in float32 (float64 stays float64); a `"mean"` over no
element (an empty batch) is 0, not NaN, so an empty batch contributes nothing.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

from samkit._checks import as_float, check_probabilities

__all__ = [
    "DiceLoss",
    "SigmoidFocalLoss",
    "dice_loss",
    "pairwise_dice_loss",
    "sigmoid_focal_loss",
]

Reduction = Literal["none", "mean", "sum"]


def _check_pair(logits: Tensor, targets: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Check shapes and values; return `(logits, targets)` in the compute dtype."""
    if logits.shape != targets.shape:
        raise ValueError(
            f"{name}: logits and targets must have the same shape, "
            f"got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    logits = as_float(logits, name="logits", dtype=_loss_dtype(logits))
    return logits, _targets(targets, name="targets", dtype=logits.dtype)


def _loss_dtype(x: Tensor) -> torch.dtype:
    """float32, or float64 for float64 inputs: losses are never computed in half precision."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _targets(targets: Tensor, *, name: str, dtype: torch.dtype) -> Tensor:
    """Targets in `[0, 1]` (bool, integer 0/1 or float) as `dtype`."""
    t = targets.to(dtype)
    if targets.dtype != torch.bool:
        check_probabilities(t, name=name)
    return t


def _reduce(x: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return x
    if reduction == "sum":
        return x.sum()
    if reduction == "mean":  # an empty input gives 0 (connected to the graph), not NaN
        return x.sum() / max(x.numel(), 1)
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017), element-wise, via `torchvision.ops`.

    `FL = -alpha_t (1 - p_t)^gamma log(p_t)`; a negative `alpha` disables the class weighting.

    Args:
        logits: Logits of any shape.
        targets: Targets in `[0, 1]`, same shape as `logits`.
        alpha: Weight of the positive class (`1 - alpha` for negatives).
        gamma: Focusing exponent.
        reduction: `"none"` (element-wise), `"mean"` over all elements, or `"sum"`.

    Returns:
        The loss, a scalar unless `reduction="none"`.

    Raises:
        ValueError: If the shapes differ, a target is outside `[0, 1]` or `reduction` is unknown.

    Examples:
        >>> sigmoid_focal_loss(torch.zeros(2, 4), torch.ones(2, 4)).item() > 0
        True
    """
    logits, targets = _check_pair(logits, targets, "sigmoid_focal_loss")
    loss = _tv_sigmoid_focal_loss(logits, targets, alpha, gamma, "none")
    return _reduce(loss, reduction)


def dice_loss(
    logits: Tensor,
    targets: Tensor,
    *,
    spatial_dims: int = 2,
    eps: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    """Per-mask sigmoid dice loss `1 - (2 |p t| + eps) / (|p| + |t| + eps)`.

    This is the DETR / Mask2Former mask dice (sigmoid, per mask, additive smoothing `eps`), not
    kornia's multi-class softmax dice.

    Args:
        logits: Mask logits `(..., *spatial)`.
        targets: Binary (or soft, in `[0, 1]`) targets, same shape.
        spatial_dims: How many trailing axes form one mask (2 for `(H, W)`, 1 for flattened).
        eps: Additive smoothing in numerator and denominator.
        reduction: `"none"` gives one value per mask `(...)`; `"mean"` / `"sum"` reduce them.

    Returns:
        The loss per mask, or its mean/sum.

    Raises:
        ValueError: If the shapes differ, a target is outside `[0, 1]` or there are fewer than
            `spatial_dims` axes.

    Examples:
        >>> t = torch.zeros(1, 4, 4); t[0, :2] = 1
        >>> round(dice_loss(torch.where(t > 0, 20.0, -20.0), t).item(), 4)
        0.0
    """
    logits, targets = _check_pair(logits, targets, "dice_loss")
    if logits.dim() < spatial_dims:
        raise ValueError(
            f"dice_loss: expected at least {spatial_dims} dims, got {tuple(logits.shape)}"
        )
    p = logits.sigmoid().flatten(-spatial_dims) if spatial_dims > 0 else logits.sigmoid()
    t = targets.flatten(-spatial_dims) if spatial_dims > 0 else targets
    num = 2 * (p * t).sum(-1) + eps
    den = p.sum(-1) + t.sum(-1) + eps
    return _reduce(1 - num / den, reduction)


def pairwise_dice_loss(logits: Tensor, targets: Tensor, *, eps: float = 1.0) -> Tensor:
    """Dice loss between every prediction and every target, for matching costs.

    Args:
        logits: Flattened mask logits `(K, N)`.
        targets: Flattened binary (or soft, in `[0, 1]`) targets `(M, N)`.
        eps: Additive smoothing.

    Returns:
        Cost matrix `(K, M)`; entry `(i, j)` equals `dice_loss(logits[i], targets[j])`.

    Raises:
        ValueError: If the inputs are not 2-D with the same `N`, or a target is outside `[0, 1]`.
    """
    if logits.dim() != 2 or targets.dim() != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(
            "pairwise_dice_loss: expected (K, N) and (M, N), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    p = as_float(logits, name="logits", dtype=_loss_dtype(logits)).sigmoid()
    t = _targets(targets, name="targets", dtype=p.dtype)
    num = 2 * p @ t.T + eps
    den = p.sum(-1, keepdim=True) + t.sum(-1)[None, :] + eps
    return 1 - num / den


class SigmoidFocalLoss(nn.Module):
    """Module form of `sigmoid_focal_loss`.

    Examples:
        >>> SigmoidFocalLoss()(torch.zeros(3), torch.ones(3)).shape
        torch.Size([])
    """

    def __init__(
        self, *, alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "mean"
    ) -> None:
        """Create the loss.

        Args:
            alpha: Weight of the positive class.
            gamma: Focusing exponent.
            reduction: `"none"`, `"mean"` or `"sum"`.
        """
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma
        self.reduction: Reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss; see `sigmoid_focal_loss`."""
        return sigmoid_focal_loss(
            logits, targets, alpha=self.alpha, gamma=self.gamma, reduction=self.reduction
        )


class DiceLoss(nn.Module):
    """Module form of `dice_loss`.

    Examples:
        >>> DiceLoss()(torch.zeros(2, 4, 4), torch.ones(2, 4, 4)).shape
        torch.Size([])
    """

    def __init__(
        self, *, spatial_dims: int = 2, eps: float = 1.0, reduction: Reduction = "mean"
    ) -> None:
        """Create the loss.

        Args:
            spatial_dims: Trailing axes forming one mask.
            eps: Additive smoothing.
            reduction: `"none"`, `"mean"` or `"sum"`.
        """
        super().__init__()
        self.spatial_dims = spatial_dims
        self.eps = eps
        self.reduction: Reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Compute the loss; see `dice_loss`."""
        return dice_loss(
            logits,
            targets,
            spatial_dims=self.spatial_dims,
            eps=self.eps,
            reduction=self.reduction,
        )
