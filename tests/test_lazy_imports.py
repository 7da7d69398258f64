"""`import samkit` is cheap: public names load their submodules (and upstream libraries) lazily.

Each check that looks at `sys.modules` runs in a fresh interpreter, because the test session
has long since imported everything.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from samkit._lazy import attach

HEAVY = ["open_clip", "pycocotools", "scipy", "segment_anything", "skimage", "timm", "torchvision"]
LAZY_PACKAGES = [
    "samkit",
    "samkit.backbones",
    "samkit.data",
    "samkit.engine",
    "samkit.export",
    "samkit.losses",
    "samkit.metrics",
    "samkit.modules",
    "samkit.systems",
]
ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> dict:
    """Run `code` in a new interpreter (with this checkout first on the path); return its JSON."""
    prelude = f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded(names: list[str]) -> str:
    return f"[m for m in {names!r} if m in sys.modules]"


def test_import_samkit_loads_no_upstream_library() -> None:
    got = _fresh(
        "import samkit\n"
        f"before = {_loaded(HEAVY)}\n"
        "build = samkit.backbones.build_sam_backbone\n"
        "print(json.dumps({'before': before, 'file': samkit.__file__, "
        "'build': build.__module__ + '.' + build.__qualname__, "
        "'sam': 'segment_anything' in sys.modules}))"
    )
    assert got["file"] == str(ROOT / "samkit" / "__init__.py")
    assert got["before"] == []
    assert got["build"] == "samkit.backbones.sam.build_sam_backbone"
    assert got["sam"], "looking up a backbone builder imports segment_anything"


def test_data_readers_load_no_upstream_library() -> None:
    """Reading a data file needs no torchvision: `torchvision.ops` alone costs seconds
    (it loads `torch._dynamo`), so the few helpers taken from it are imported where used."""
    got = _fresh(
        "from samkit.data import CocoInstances, CocoPanoptic, RefCoco, SemanticFolder\n"
        "from samkit.data import load_data_file\n"
        f"print(json.dumps({_loaded([*HEAVY, 'torch._dynamo'])}))"
    )
    assert got == []


def test_from_imports_and_submodule_attributes_still_work() -> None:
    got = _fresh(
        "import samkit\n"
        "from samkit import Prompts, build_ssp_sam\n"
        "from samkit.data import generate_scene\n"
        "from samkit.engine import Trainer\n"
        "names = [Prompts.__module__, build_ssp_sam.__module__, generate_scene.__module__, "
        "Trainer.__module__, samkit.engine.distributed.__name__, samkit.data.synthetic.__name__, "
        "samkit.proposals.__name__, samkit.visualization.__name__]\n"
        "print(json.dumps(names))"
    )
    assert got == [
        "samkit.types",
        "samkit.systems.ssp_sam",
        "samkit.data.synthetic",
        "samkit.engine.trainer",
        "samkit.engine.distributed",
        "samkit.data.synthetic",
        "samkit.proposals",
        "samkit.visualization",
    ]


def test_cli_help_needs_neither_torch_nor_upstream_libraries() -> None:
    got = _fresh(
        "from samkit.cli import build_parser\n"
        "text = build_parser().format_help()\n"
        f"print(json.dumps({{'help': text, 'loaded': {_loaded(['torch', *HEAVY])}}}))"
    )
    assert "demo" in got["help"] and "predict" in got["help"]
    assert got["loaded"] == []


def test_dir_lists_every_public_name_before_it_is_loaded() -> None:
    got = _fresh(
        "import importlib\n"
        f"mods = [importlib.import_module(p) for p in {LAZY_PACKAGES!r}]\n"
        "print(json.dumps({m.__name__: [sorted(m.__all__), dir(m)] for m in mods}))"
    )
    for package, (public, listed) in got.items():
        assert set(public) <= set(listed), package


def _type_checking_imports(package: str) -> dict[str, str]:
    """Public name -> module it is imported from under `if TYPE_CHECKING:` in the `__init__`."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(str(module.__file__)).read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                for alias in stmt.names:
                    found[alias.asname or alias.name] = stmt.module
    return found


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_type_checking_imports_match_the_lazy_names(package: str) -> None:
    """What type checkers see is exactly `__all__`, bound to the objects the package returns."""
    module = importlib.import_module(package)
    static = _type_checking_imports(package)
    eager = {n for n in module.__all__ if n not in static}
    assert eager <= {"__version__", "evaluate"}, f"{package}: not imported for type checkers"
    assert set(static) <= set(module.__all__), f"{package}: imported but not exported"
    for name, source in static.items():
        if source == package:  # `from samkit import data`: a submodule
            expected = importlib.import_module(f"{source}.{name}")
        else:
            expected = getattr(importlib.import_module(source), name)
        assert getattr(module, name) is expected, f"{package}.{name}"


def test_engine_evaluate_stays_the_function_after_its_submodule_loads() -> None:
    got = _fresh(
        "import samkit.engine.trainer, samkit.engine.evaluate\n"
        "from samkit.engine import evaluate\n"
        "print(json.dumps([type(evaluate).__name__, evaluate.__module__]))"
    )
    assert got == ["function", "samkit.engine.evaluate"]


def test_unknown_name_is_an_attribute_error() -> None:
    import samkit.backbones

    with pytest.raises(AttributeError, match="'samkit.backbones' has no attribute 'nope'"):
        samkit.backbones.nope  # noqa: B018
    assert not hasattr(samkit, "nope")


def test_attach_rejects_a_name_listed_twice() -> None:
    with pytest.raises(ValueError, match="listed under both 'a' and 'b'"):
        attach("pkg", {"a": ["X"], "b": ["X"]})
    with pytest.raises(ValueError, match=r"submodules: \['x'\]"):
        attach("pkg", {"a": ["x"]}, submodules=["x"])
