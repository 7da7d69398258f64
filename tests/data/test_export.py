"""Synthetic scenes -> files in each standard format -> readers: the same masks and classes."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from samkit.data import (
    CLASS_NAMES,
    NUM_THING_CLASSES,
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
    collate_panoptic,
    export_synthetic,
    load_data_file,
)

pytest.importorskip("pycocotools")
N, SIZE, SPLIT = 3, 40, "val"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    for fmt in ("coco_panoptic", "coco_instances", "semantic_folder", "refcoco"):
        export_synthetic(out, fmt, num_scenes=N, size=SIZE, split=SPLIT, seed=3)
    return out


def _synthetic_panoptic() -> SyntheticPanopticDataset:
    return SyntheticPanopticDataset(num_scenes=N, size=SIZE, split=SPLIT, seed=3)


def _close_images(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() <= 0.5 / 255 + 1e-6)


def test_coco_panoptic_round_trip(exported: Path) -> None:
    ds = load_data_file(exported / "coco_panoptic_val.yaml")
    assert ds.class_names == CLASS_NAMES and ds.num_things == NUM_THING_CLASSES
    ref = _synthetic_panoptic()
    assert len(ds) == N
    for i in range(N):
        a, b = ref[i], ds[i]
        assert _close_images(a.image, b.image)
        for field in (
            "panoptic",
            "semantic",
            "instance_masks",
            "instance_classes",
            "segment_masks",
            "segment_classes",
        ):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
        assert [(s.id, s.category_id, s.is_thing, s.area, s.instance) for s in a.segments] == [
            (s.id, s.category_id, s.is_thing, s.area, s.instance) for s in b.segments
        ]
        assert b.image_id == a.scene_seed and not b.instance_iscrowd.any()


def test_coco_instances_round_trip(exported: Path) -> None:
    ds = load_data_file(exported / "coco_instances_val.yaml")
    assert ds.class_names == CLASS_NAMES[:NUM_THING_CLASSES]
    ref = _synthetic_panoptic()
    for i in range(N):
        a, b = ref[i], ds[i]
        assert torch.equal(a.instance_masks, b.instance_masks)
        assert torch.equal(a.instance_classes, b.instance_classes)
        things = a.semantic < NUM_THING_CLASSES
        assert torch.equal(b.semantic[things], a.semantic[things])
        assert (b.semantic[~things] == 255).all() and (b.panoptic[~things] == 0).all()


def test_semantic_folder_round_trip(exported: Path) -> None:
    ds = load_data_file(exported / "semantic_folder_val.yaml")
    ref = SyntheticSemanticDataset(num_scenes=N, size=SIZE, split=SPLIT, seed=3)
    assert ds.class_names == CLASS_NAMES and ds.num_things == 0
    for i in range(N):
        assert torch.equal(ref[i].semantic, ds[i].semantic)
        assert _close_images(ref[i].image, ds[i].image)


def test_refcoco_round_trip(exported: Path) -> None:
    ds = load_data_file(exported / "refcoco_val.yaml")
    ref = SyntheticReferringDataset(num_scenes=N, size=SIZE, split=SPLIT, seed=3)
    assert len(ds) == len(ref)
    assert any(not ref[i].has_target for i in range(len(ref)))
    for i in range(len(ref)):
        a, b = ref[i], ds[i]
        assert (a.text, a.has_target, a.target_ids) == (b.text, b.has_target, b.target_ids)
        assert torch.equal(a.target_mask, b.target_mask)
        assert torch.equal(a.target_box, b.target_box)
        assert torch.equal(a.instance_masks, b.instance_masks)
        assert b.image_id == a.scene_seed


def test_dataloader_with_workers_and_pickling(exported: Path) -> None:
    ds = load_data_file(exported / "coco_panoptic_val.yaml")
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[1].panoptic, ds[1].panoptic)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_panoptic)
    batches = list(loader)
    assert [len(b.image_ids) for b in batches] == [2, 1]
    assert torch.equal(batches[1].panoptic[0], ds[2].panoptic)
    assert batches[0].image_ids == [ds[0].image_id, ds[1].image_id]


def test_size_in_data_file(exported: Path) -> None:
    text = (exported / "coco_panoptic_val.yaml").read_text() + "size: 24\n"
    (exported / "small.yaml").write_text(text)
    s = load_data_file(exported / "small.yaml")[0]
    assert s.image.shape == (3, 24, 24) and s.panoptic.shape == (24, 24)


def test_unknown_format() -> None:
    with pytest.raises(ValueError, match="format: expected one of"):
        export_synthetic("/nonexistent", "voc")
