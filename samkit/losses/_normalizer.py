"""The count a loss divides its per-rank sum by, optionally reduced over the DDP ranks.

A loss normalised by a count summed over the batch (matched targets, valid pixels, non-empty
boxes) is `sum / count` on each rank. DDP averages the ranks' gradients, which equals the loss of
the whole global batch only when every rank's count is the same. DETR's remedy, used here: divide
by `max(total count over ranks, 1) / W`; the average over `W` ranks of `sum_r / (total / W)` is
`sum over ranks / total`, the normalisation of one process that sees the whole batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["normalizer"]


def normalizer(count: Tensor | int, *, like: Tensor, reduce_counts: bool) -> Tensor | int:
    """The divisor of a loss sum: `max(count, 1)`, or across ranks `max(total, 1) / W`.

    Args:
        count: This rank's count (a tensor or an int, no gradient).
        like: A tensor of the loss: the result's device and dtype when reduced across ranks.
        reduce_counts: Sum `count` over the ranks of the default process group. Every rank must
            then make the same calls in the same order (a training step's forward does). Without
            an initialised group of more than one process it changes nothing.

    Returns:
        `max(count, 1)` (an int for an int count), or a 0-dim tensor of `like`'s dtype.
    """
    if (
        reduce_counts
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size() > 1
    ):
        total = torch.as_tensor(count, dtype=torch.float64).detach().to(like.device).reshape(())
        total = total.clone()
        dist.all_reduce(total)
        return (total.clamp_min(1) / dist.get_world_size()).to(like.dtype)
    if isinstance(count, Tensor):
        return count.clamp_min(1)
    return max(int(count), 1)
