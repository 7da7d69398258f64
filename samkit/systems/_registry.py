"""A plain dict from system name to builder (SAM's `sam_model_registry` style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.ssp_sam import build_ssp_sam

__all__ = ["SYSTEMS", "build_system", "list_systems"]

SYSTEMS: dict[str, Callable[..., nn.Module]] = {
    "sam_cp": build_sam_cp,
    "sam_mi": build_sam_mi,
    "ssp_sam": build_ssp_sam,
}
"""Builders by system name: `"ssp_sam"`, `"sam_cp"`, `"sam_mi"`."""


def list_systems() -> list[str]:
    """Names accepted by `build_system`, sorted.

    Examples:
        >>> list_systems()
        ['sam_cp', 'sam_mi', 'ssp_sam']
    """
    return sorted(SYSTEMS)


def build_system(name: str, cfg: Any = None, **overrides: Any) -> nn.Module:
    """Build a system by name; `cfg` and `overrides` go to its `build_*` function.

    Args:
        name: One of `list_systems()`.
        cfg: A config dataclass, a dict of its fields, a preset name, or `None` (paper default).
        **overrides: Config fields to replace.

    Returns:
        The system module.

    Raises:
        ValueError: For an unknown system name.

    Examples:
        >>> model = build_system("ssp_sam", "tiny")
        >>> type(model).__name__
        'SSPSAM'
    """
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {list_systems()}")
    return SYSTEMS[name](cfg, **overrides)
