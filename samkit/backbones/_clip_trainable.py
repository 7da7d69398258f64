"""Trainability policies for open_clip models.

open_clip keeps q, k and v of every attention in one `in_proj_weight` `(3c, c)`. To train only
the q and v projections (CAT-Seg, SAM-MI) honestly, the `attention_qv` policy re-parametrises that
tensor as the concatenation of three separate `(c, c)` parameters with
`torch.nn.utils.parametrize`: q (`original0`) and v (`original2`) are trainable, k (`original1`)
is frozen, so no optimiser (weight decay included) can ever touch k.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

TrainablePolicy = Literal["none", "attention_qv", "visual", "all"]
POLICIES: tuple[str, ...] = ("none", "attention_qv", "visual", "all")


class SplitQKV(nn.Module):
    """Parametrisation `in_proj_weight = cat([q, k, v])` over three `(c, c)` tensors."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Concatenate the three projections along the output axis: `(3c, c)`."""
        return torch.cat([q, k, v], dim=0)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Split `(3c, c)` into q, k, v `(c, c)`."""
        q, k, v = weight.chunk(3, dim=0)
        return q.clone(), k.clone(), v.clone()


def attention_modules(model: nn.Module) -> list[Any]:
    """Every attention module of `model` holding a packed `in_proj_weight` (both towers)."""
    out: list[Any] = []
    for module in model.modules():
        if parametrize.is_parametrized(module, "in_proj_weight"):
            out.append(module)
            continue
        weight = getattr(module, "in_proj_weight", None)
        if (
            isinstance(weight, Tensor)
            and weight.dim() == 2
            and weight.shape[0] == 3 * weight.shape[1]
        ):
            out.append(module)
    return out


def remove_qv_split(model: nn.Module) -> None:
    """Undo `attention_qv`: fold every split `in_proj_weight` back into one parameter."""
    for module in attention_modules(model):
        if parametrize.is_parametrized(module, "in_proj_weight"):
            parametrize.remove_parametrizations(module, "in_proj_weight", leave_parametrized=True)


def apply_policy(model: nn.Module, policy: str) -> None:
    """Set `requires_grad` on `model` according to `policy` (see `ClipBackbone.set_trainable`).

    Args:
        model: An open_clip model.
        policy: `"none"`, `"attention_qv"`, `"visual"` or `"all"`.

    Raises:
        ValueError: If `policy` is unknown.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown trainable policy {policy!r}; expected one of {POLICIES}")
    remove_qv_split(model)
    model.requires_grad_(policy == "all")
    if policy == "visual":
        model.visual.requires_grad_(True)
    if policy != "attention_qv":
        return
    for module in attention_modules(model):
        parametrize.register_parametrization(module, "in_proj_weight", SplitQKV())
        split = module.parametrizations.in_proj_weight
        split.original0.requires_grad_(True)  # q
        split.original1.requires_grad_(False)  # k
        split.original2.requires_grad_(True)  # v
