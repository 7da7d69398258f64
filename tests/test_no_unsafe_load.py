"""No pickle is ever unpickled beyond tensors: not in the library, examples or tests.

`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns torch's *default* `weights_only` off, so only an
explicit `weights_only=True` keeps a crafted file from running code; the tree is checked for it
(`ast`), and a crafted pickle is fed to every loader with that variable set.
"""

from __future__ import annotations

import ast
import pickle
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from samkit._io import read_checkpoint
from samkit.backbones.clip import build_clip_backbone
from samkit.backbones.sam import build_sam_backbone
from samkit.engine.checkpoint import load_checkpoint
from samkit.systems.ssp_sam_official import load_official_ssp_sam
from tests._examples import load_example

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "site", "node_modules", "__pycache__"}


def _python_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
            yield path


def _dotted(node: ast.expr) -> str:
    """`torch.serialization.load` for an attribute chain; '' for anything else."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _torch_load_calls(tree: ast.AST) -> Iterator[ast.Call]:
    """Calls of `torch.load` (also as `torch.serialization.load` or an imported `load`)."""
    aliases = {"torch.load", "torch.serialization.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "torch" and a.asname:
                    aliases |= {f"{a.asname}.load", f"{a.asname}.serialization.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func) in aliases:
            yield node


def _weights_only_true(call: ast.Call) -> bool:
    return any(
        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def test_every_torch_load_passes_weights_only_true() -> None:
    files = list(_python_files())
    assert any(p.name == "_io.py" for p in files)  # the walk does see the tree
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in _torch_load_calls(tree):
            if not _weights_only_true(call):
                bad.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert not bad, f"torch.load without a literal weights_only=True: {bad}"


def test_the_check_sees_unsafe_calls() -> None:
    source = (
        "import torch\nfrom torch import load as L\nimport torch as T\n"
        "torch.load(p)\nL(p, weights_only=False)\nT.serialization.load(p, weights_only=flag)\n"
        "torch.load(p, map_location='cpu', weights_only=True)\n"
    )
    calls = list(_torch_load_calls(ast.parse(source)))
    assert [c.lineno for c in calls if not _weights_only_true(c)] == [4, 5, 6]
    assert [c.lineno for c in calls if _weights_only_true(c)] == [7]


def test_library_and_examples_read_pickles_in_one_place() -> None:
    readers = {"torch.load", "torch.serialization.load", "torch.jit.load"}
    found = []
    for path in _python_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in ("samkit", "examples") or rel == Path("samkit/_io.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [
            f"{rel}:{n.lineno}"
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _dotted(n.func) in readers
        ]
    assert not found, f"read checkpoints with samkit._io.read_checkpoint: {found}"


# ---------------------------------------------------------------- a crafted pickle
MARKER: list[str] = []


def _run_code(tag: str) -> str:
    """What the crafted pickle calls when unpickled: records that code ran."""
    MARKER.append(tag)
    return tag


class _Payload:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_run_code, ("code ran",))


def _crafted(path: Path, style: str) -> Path:
    payload = {"model": {"w": torch.zeros(2)}, "optimizer": _Payload(), "extra": _Payload()}
    if style == "torch.save":
        torch.save(payload, path)
    elif style == "raw pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:  # a zip that torch takes for a TorchScript archive (a `constants.pkl` record)
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
            archive.writestr("archive/version", "3\n")
    return path


LOADERS: dict[str, tuple[str, Callable[[], Callable[[Path], Any]]]] = {
    "read_checkpoint": ("ckpt.pt", lambda: lambda p: read_checkpoint(p, kind="checkpoint")),
    "sam": ("sam.pth", lambda: lambda p: build_sam_backbone("tiny", checkpoint=p)),
    "clip": ("clip.pt", lambda: lambda p: build_clip_backbone("tiny", checkpoint=p)),
    "ssp-sam-official": ("ssp.pth", lambda: lambda p: load_official_ssp_sam(p, config="tiny")),
    # the examples' `--resume` (and any engine run's): the engine's checkpoints
    "engine-resume": ("step_000000001.pt", lambda: load_checkpoint),
}


def test_payload_runs_code_when_unpickled_unsafely() -> None:
    MARKER.clear()
    pickle.loads(pickle.dumps(_Payload()))
    assert MARKER == ["code ran"]
    MARKER.clear()


@pytest.mark.parametrize("style", ["torch.save", "raw pickle", "torchscript-like zip"])
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_crafted_pickle_is_refused(
    loader: str, style: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, make = LOADERS[loader]
    path = _crafted(tmp_path / name, style)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    MARKER.clear()
    with pytest.raises(ValueError, match="not a readable"):
        make()(path)
    assert MARKER == [], "unpickling the crafted file ran code"


def test_example_resume_refuses_crafted_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An example's `--resume` reads `--out/checkpoints/step_*.pt` with weights_only."""
    ex = load_example("train_sam_mi")
    (tmp_path / "checkpoints").mkdir()
    _crafted(tmp_path / "checkpoints" / "step_000000001.pt", "torch.save")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    MARKER.clear()
    args = ["--out", str(tmp_path), "--no-progress", "--train-scenes", "2", "--val-scenes", "1"]
    args += ["--preset", "tiny"]
    with pytest.raises(ValueError, match="step_000000001.pt: not a readable samkit training"):
        ex.main([*args, "--size", "32", "--steps1", "1", "--steps2", "1", "--resume"])
    assert MARKER == []
