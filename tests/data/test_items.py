"""Sample types and collation; samkit.data imports without a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import samkit.data
import samkit.data.synthetic
from samkit.data import (
    SyntheticPanopticDataset,
    SyntheticSemanticDataset,
    collate_panoptic,
    collate_semantic,
)
from samkit.data._items import Segment

DATA = Path(samkit.data.__file__).parent


def test_segment_is_reexported() -> None:
    assert samkit.data.Segment is Segment is samkit.data.synthetic.Segment
    assert Segment(1, 0, True, 4).iscrowd is False


def _data_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("samkit.data")
        ):
            if node.module == "samkit.data":
                out |= {f"samkit.data.{a.name}" for a in node.names}
            else:
                out.add(node.module)
    return out


def test_no_import_cycle_in_samkit_data() -> None:
    graph = {
        f"samkit.data.{p.stem}": _data_imports(p) for p in DATA.glob("*.py") if p.stem != "__init__"
    }
    assert graph["samkit.data._items"] == set()
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        if seen.get(node) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*stack, node])}")
        if seen.get(node) == 2:
            return
        seen[node] = 1
        for dep in graph.get(node, ()):
            visit(dep, [*stack, node])
        seen[node] = 2

    for module in graph:
        visit(module, [])


def test_synthetic_imports_first() -> None:
    """The module that used to close the cycle imports on its own, in a fresh interpreter."""
    subprocess.run([sys.executable, "-c", "import samkit.data.synthetic"], check=True)


def test_synthetic_points_to_the_datasets() -> None:
    with pytest.raises(AttributeError, match="import it from samkit.data"):
        samkit.data.synthetic.SyntheticPanopticDataset  # noqa: B018


def test_collate_fills_ids_and_vocabulary() -> None:
    pan = SyntheticPanopticDataset(num_scenes=2, size=32)
    batch = collate_panoptic([pan[0], pan[1]])
    assert batch.image_ids == batch.scene_seeds == [0, 1]
    assert batch.instance_iscrowd is None  # synthetic scenes have no crowd flags
    sem = SyntheticSemanticDataset(num_scenes=2, size=32)
    sb = collate_semantic([sem[0], sem[1]], class_names=["a", "b"])
    assert sb.class_names == ("a", "b") and sb.image_ids == [0, 1]
    moved = batch.to("cpu")
    assert moved.image_ids == [0, 1]


def test_mixed_sizes_explain_what_to_do() -> None:
    a = SyntheticSemanticDataset(num_scenes=1, size=32)[0]
    b = SyntheticSemanticDataset(num_scenes=1, size=48)[0]
    with pytest.raises(
        ValueError, match=r"different sizes.*set `size` in the data file.*batch size 1"
    ):
        collate_semantic([a, b])
    assert collate_semantic([a]).images.shape == (1, 3, 32, 32)
    assert torch.equal(collate_semantic([a]).semantic[0], a.semantic)


def test_synthetic_datasets_expose_the_reader_vocabulary() -> None:
    from samkit.data import CLASS_NAMES, NUM_THING_CLASSES, SyntheticReferringDataset

    for cls in (SyntheticPanopticDataset, SyntheticSemanticDataset, SyntheticReferringDataset):
        ds = cls(num_scenes=1, size=32)
        assert ds.class_names == CLASS_NAMES and ds.num_things == NUM_THING_CLASSES
        assert [ds.category_to_index[c] for c in ds.category_ids] == list(range(len(CLASS_NAMES)))
