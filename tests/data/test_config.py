"""Data files (YAML / JSON): formats, relative paths, clear errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samkit.data import SemanticFolder, SyntheticReferringDataset, load_data_file


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "ade"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(root / "img" / "a.jpg")
    Image.fromarray(np.ones((4, 5), dtype=np.uint8)).save(root / "ann" / "a.png")
    (root / "classes.txt").write_text("x\ny\n")
    return root


def test_yaml_relative_to_the_data_file(folder: Path, tmp_path: Path) -> None:
    conf = tmp_path / "configs" / "ade.yaml"
    conf.parent.mkdir()
    conf.write_text(
        "format: semantic_folder\n"
        "image_dir: ../ade/img\nannotation_dir: ../ade/ann\nclasses: ../ade/classes.txt\n"
        "size: 8\n"
    )
    ds = load_data_file(conf)
    assert isinstance(ds, SemanticFolder) and ds.class_names == ("x", "y")
    assert ds[0].semantic.shape == (8, 8) and ds[0].semantic[0, 0] == 1


def test_json_with_inline_classes_and_absolute_paths(folder: Path, tmp_path: Path) -> None:
    conf = tmp_path / "ade.json"
    conf.write_text(
        json.dumps(
            {
                "format": "semantic_folder",
                "image_dir": str(folder / "img"),
                "annotation_dir": str(folder / "ann"),
                "classes": ["p", "q", "r"],
            }
        )
    )
    ds = load_data_file(conf)
    assert ds.class_names == ("p", "q", "r") and len(ds) == 1


def test_synthetic_formats(tmp_path: Path) -> None:
    conf = tmp_path / "syn.yaml"
    conf.write_text(
        "format: synthetic_referring\nnum_scenes: 2\nsize: [32, 48]\nsplit: val\n"
        "num_objects: [2, 3]\n"
    )
    ds = load_data_file(conf)
    assert isinstance(ds, SyntheticReferringDataset) and len(ds) == 8
    assert ds[0].image.shape == (3, 32, 48)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("format: voc\n", r"bad\.yaml: format: expected one of"),
        ("- a\n- b\n", r"bad\.yaml: expected a mapping"),
        ("format: semantic_folder\nimage_dir: a\n", r"bad\.yaml: format 'semantic_folder' needs"),
        (
            "format: coco_instances\nimage_root: a\ninstances_json: b\nimage_size: 3\n",
            r"bad\.yaml: unknown keys \['image_size'\]",
        ),
        (
            "format: coco_instances\nimage_root: 3\ninstances_json: b\n",
            r"image_root: expected a path",
        ),
        ("format: [unclosed\n", r"bad\.yaml: not valid YAML"),
        ("format: synthetic_panoptic\nnum_scenes: -1\n", r"bad\.yaml: num_scenes"),
    ],
)
def test_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_data_file(conf)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml: data file not found"):
        load_data_file(tmp_path / "nope.yaml")
    (tmp_path / "d.txt").write_text("format: refcoco")
    with pytest.raises(ValueError, match=r"d\.txt: expected a \.yaml, \.yml or \.json"):
        load_data_file(tmp_path / "d.txt")
    (tmp_path / "d.json").write_text("{")
    with pytest.raises(ValueError, match=r"d\.json: not valid JSON"):
        load_data_file(tmp_path / "d.json")
    (tmp_path / "m.yaml").write_text(
        "format: coco_instances\nimage_root: imgs\ninstances_json: missing.json\n"
    )
    with pytest.raises(FileNotFoundError, match=r"missing\.json: COCO instances JSON not found"):
        load_data_file(tmp_path / "m.yaml")
