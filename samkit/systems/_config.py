"""Turn `cfg | dict | preset name | None` plus overrides into a system's config dataclass."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

C = TypeVar("C")


def resolve_config(
    config_cls: type[C],
    cfg: C | Mapping[str, Any] | str | None,
    overrides: Mapping[str, Any],
    *,
    presets: Mapping[str, Callable[[], C]],
    system: str,
) -> C:
    """Resolve the `cfg` argument of a `build_*` function and apply `overrides`.

    Args:
        config_cls: The system's config dataclass.
        cfg: A config, a dict of its fields, a preset name, or `None` for the paper defaults.
        overrides: Fields to replace after `cfg` is resolved.
        presets: Preset name to a function returning that preset's config.
        system: The system's display name, for error messages.

    Returns:
        The resolved config.

    Raises:
        ValueError: For an unknown preset name or unknown field names.
        TypeError: If `cfg` is of another type.
    """
    names = {f.name for f in fields(config_cls)}  # type: ignore[arg-type]
    if cfg is None:
        cfg = config_cls()
    elif isinstance(cfg, str):
        if cfg not in presets:
            raise ValueError(f"unknown {system} preset {cfg!r}; expected one of {sorted(presets)}")
        cfg = presets[cfg]()
    elif isinstance(cfg, Mapping):
        unknown = sorted(set(cfg) - names)
        if unknown:
            raise ValueError(f"unknown {config_cls.__name__} fields: {unknown}")
        cfg = config_cls(**cfg)
    elif not isinstance(cfg, config_cls):
        raise TypeError(
            f"cfg must be a {config_cls.__name__}, a dict, a preset name or None, "
            f"got {type(cfg).__name__}"
        )
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} fields: {unknown}")
    return replace(cfg, **overrides)  # type: ignore[type-var]
