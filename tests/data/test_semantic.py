"""SemanticFolder on hand-made ADE20K-style folders."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from samkit.data import SemanticFolder, collate_semantic, read_class_names


def _pair(root: Path, name: str, labels: np.ndarray, *, mode: str = "L") -> None:
    img = root / "images" / "validation" / f"{name}.jpg"
    ann = root / "annotations" / "validation" / f"{name}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    ann.parent.mkdir(parents=True, exist_ok=True)
    h, w = labels.shape
    Image.fromarray(np.full((h, w, 3), 128, dtype=np.uint8)).save(img)
    Image.fromarray(labels.astype(np.uint8), mode).save(ann)


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    labels = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [255, 1, 1, 2]], dtype=np.uint8)
    _pair(tmp_path, "ADE_val_00000002", labels)
    _pair(tmp_path, "ADE_val_00000001", labels[:, ::-1])
    (tmp_path / "classes.txt").write_text("wall\n  building \n\nsky\n")
    return tmp_path


def _ds(root: Path, **kw: object) -> SemanticFolder:
    return SemanticFolder(
        root / "images" / "validation",
        root / "annotations" / "validation",
        root / "classes.txt",
        **kw,
    )


def test_reduce_zero_label_as_mmseg(ade: Path) -> None:
    ds = _ds(ade, reduce_zero_label=True)
    assert ds.class_names == ("wall", "building", "sky") and ds.num_things == 0
    assert len(ds) == 2 and ds[0].image_id == "ADE_val_00000001"  # sorted
    s = ds[1]
    # MMSeg: 0 -> 255, x -> x - 1, 255 stays 255
    want = torch.tensor([[255, 0, 1, 2], [2, 1, 0, 255], [255, 0, 0, 1]])
    assert torch.equal(s.semantic, want)
    assert s.image.shape == (3, 3, 4) and s.image.dtype == torch.float32


def test_without_reduction_labels_are_checked(ade: Path) -> None:
    ds = _ds(ade)  # labels 0..3 but only 3 classes
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png: labels \[3\] are neither"):
        ds[0]
    dirs = (ade / "images" / "validation", ade / "annotations" / "validation")
    s = SemanticFolder(*dirs, ["a", "b", "c", "d"])[1]
    assert s.semantic.tolist() == [[0, 1, 2, 3], [3, 2, 1, 0], [255, 1, 1, 2]]
    # ignore_index=0: zeros become 255, and a raw 255 is then an unknown label
    with pytest.raises(ValueError, match=r"labels \[255\] are neither .* ignore_index=0"):
        SemanticFolder(*dirs, ["a", "b", "c", "d"], ignore_index=0)[1]


def test_class_list_and_file(ade: Path, tmp_path: Path) -> None:
    assert read_class_names(ade / "classes.txt") == ("wall", "building", "sky")
    assert read_class_names(["a", "b"]) == ("a", "b")
    with pytest.raises(ValueError, match="unique"):
        read_class_names(["a", "a"])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty\.txt: expected at least one class name"):
        read_class_names(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match=r"nope\.txt: class names file not found"):
        read_class_names(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="at most 255 classes"):
        SemanticFolder(
            ade / "images" / "validation",
            ade / "annotations" / "validation",
            [f"c{i}" for i in range(256)],
        )


def test_missing_label_map(ade: Path, caplog: pytest.LogCaptureFixture) -> None:
    (ade / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"ADE_val_00000001\.png: label map not found"):
        _ds(ade)
    with caplog.at_level(logging.WARNING, logger="samkit.data"):
        ds = _ds(ade, strict=False, reduce_zero_label=True)
    assert len(ds) == 1 and len(ds.skipped) == 1
    assert "skipped 1 of 2" in caplog.text


def test_bad_label_files(ade: Path) -> None:
    ann = ade / "annotations" / "validation" / "ADE_val_00000001.png"
    Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(ann)
    with pytest.raises(ValueError, match="single-channel label PNG"):
        _ds(ade, reduce_zero_label=True)[0]
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(ann)
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.jpg: image is 3x4.*label map"):
        _ds(ade, reduce_zero_label=True)[0]
    ann.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png: not a readable label map"):
        _ds(ade, reduce_zero_label=True)[0]


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "i").mkdir()
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match=r"no images ending in '\.jpg'"):
        SemanticFolder(tmp_path / "i", tmp_path / "a", ["x"])
    with pytest.raises(FileNotFoundError, match="image_dir is not a folder"):
        SemanticFolder(tmp_path / "zz", tmp_path / "a", ["x"])


def test_16bit_labels(tmp_path: Path) -> None:
    labels = np.array([[0, 300], [2, 299]], dtype=np.uint16)
    img = tmp_path / "im" / "x.jpg"
    img.parent.mkdir()
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(img)
    (tmp_path / "an").mkdir()
    Image.fromarray(labels).save(tmp_path / "an" / "x.png")
    ds = SemanticFolder(tmp_path / "im", tmp_path / "an", ["a", "b", "c"], ignore_index=300)
    with pytest.raises(ValueError, match=r"labels \[299\]"):
        ds[0]


def test_dataloader_with_workers(ade: Path) -> None:
    ds = _ds(ade, reduce_zero_label=True, size=8)
    collate = partial(collate_semantic, class_names=ds.class_names)
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate))
    assert len(batches) == 1
    b = batches[0]
    assert b.class_names == ds.class_names and b.image_ids == [
        "ADE_val_00000001",
        "ADE_val_00000002",
    ]
    assert torch.equal(b.semantic[1], ds[1].semantic)
    assert b.semantic.shape == (2, 8, 8) and (b.semantic[:, 6:] == 255).all()  # padding
