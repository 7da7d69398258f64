from __future__ import annotations

from dataclasses import dataclass

import pytest

from samkit.systems._config import resolve_config


@dataclass
class _Cfg:
    a: int = 1
    b: str = "x"


PRESETS = {"small": lambda: _Cfg(a=0)}


def _resolve(cfg: object, **overrides: object) -> _Cfg:
    return resolve_config(_Cfg, cfg, overrides, presets=PRESETS, system="Demo")  # type: ignore[arg-type]


def test_sources_and_overrides() -> None:
    assert _resolve(None) == _Cfg()
    assert _resolve("small") == _Cfg(a=0)
    assert _resolve({"b": "y"}) == _Cfg(b="y")
    assert _resolve(_Cfg(a=5), b="z") == _Cfg(a=5, b="z")
    assert _resolve("small", a=3) == _Cfg(a=3)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"unknown Demo preset 'big'; expected one of \['small'\]"):
        _resolve("big")
    with pytest.raises(ValueError, match=r"unknown _Cfg fields: \['c'\]"):
        _resolve({"c": 1})
    with pytest.raises(ValueError, match=r"unknown _Cfg fields: \['c'\]"):
        _resolve(None, c=1)
    with pytest.raises(TypeError, match="got int"):
        _resolve(3)
