"""Guard the public API against removals (kornia-style).

`tests/api_surface.json` maps each public module to its `__all__`. A name that disappears fails
this test; new names are fine (regenerate the file with `python tests/test_api_surface.py`).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

SURFACE_FILE = Path(__file__).with_name("api_surface.json")
PUBLIC_MODULES = [
    "samkit",
    "samkit.backbones",
    "samkit.cli",
    "samkit.data",
    "samkit.engine",
    "samkit.export",
    "samkit.losses",
    "samkit.matching",
    "samkit.metrics",
    "samkit.modules",
    "samkit.pretrain",
    "samkit.proposals",
    "samkit.systems",
    "samkit.systems.tasks",
    "samkit.types",
    "samkit.visualization",
]


def current_surface() -> dict[str, list[str]]:
    return {name: sorted(importlib.import_module(name).__all__) for name in PUBLIC_MODULES}


SURFACE: dict[str, list[str]] = (
    json.loads(SURFACE_FILE.read_text()) if SURFACE_FILE.exists() else {}
)


def test_surface_file_covers_every_public_module() -> None:
    assert sorted(SURFACE) == sorted(PUBLIC_MODULES), "regenerate tests/api_surface.json"


@pytest.mark.parametrize("module_name", sorted(SURFACE))
def test_no_public_name_removed(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = set(module.__all__)
    missing = [n for n in SURFACE[module_name] if n not in exported or not hasattr(module, n)]
    assert not missing, f"{module_name} no longer exports {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_is_sorted_and_resolvable(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = list(module.__all__)
    assert names == sorted(names), f"{module_name}.__all__ is not sorted"
    assert all(hasattr(module, n) for n in names)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    undocumented = [
        n
        for n in module.__all__
        if n != "__version__" and callable(getattr(module, n)) and not getattr(module, n).__doc__
    ]
    assert not undocumented, f"{module_name}: no docstring on {undocumented}"


if __name__ == "__main__":
    SURFACE_FILE.write_text(json.dumps(current_surface(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {SURFACE_FILE}")
