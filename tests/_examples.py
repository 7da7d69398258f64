"""Import a script of `examples/` as a module, for tests that call its `main`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str, directory: Path = EXAMPLES) -> ModuleType:
    """Load `<directory>/<name>.py` (default `examples/`) under the module name `name`
    (registered in `sys.modules`, where dataclasses look their module up while the class is
    built)."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
