"""COCO panoptic and instances readers on hand-made files in the official formats."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.data import CocoInstances, CocoPanoptic, collate_panoptic, decode_coco_segmentation
from samkit.metrics.instance import MaskAP
from samkit.metrics.panoptic import PanopticQuality

mask_utils = pytest.importorskip("pycocotools.mask")
coco_api = pytest.importorskip("pycocotools.coco")


def _image(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE, computed here (column-major runs, starting with zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


# ---------------------------------------------------------------- COCO instances
H, W = 20, 30


@pytest.fixture
def instances(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Two images; a polygon, an uncompressed RLE and a compressed-RLE crowd annotation."""
    root = tmp_path / "images"
    _image(root / "a.jpg", H, W, 0)
    _image(root / "b.png", 12, 14, 1)
    blob = np.zeros((H, W), dtype=bool)
    blob[3:15, 18:27] = True
    blob[10:13, 5:20] = True
    crowd = np.zeros((H, W), dtype=bool)
    crowd[12:20, 0:10] = True
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
    data = {
        "images": [
            {"id": 42, "file_name": "a.jpg", "height": H, "width": W},
            {"id": 7, "file_name": "b.png", "height": 12, "width": 14},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush", "supercategory": "x"},
            {"id": 5, "name": "airplane", "supercategory": "x"},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 42,
                "category_id": 90,
                "segmentation": [[2.0, 2.0, 12.5, 2.0, 12.5, 9.5, 2.0, 9.5]],
                "area": 80.0,
                "bbox": [2, 2, 10.5, 7.5],
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 42,
                "category_id": 5,
                "segmentation": _uncompressed_rle(blob),
                "area": float(blob.sum()),
                "bbox": [5, 3, 22, 12],
                "iscrowd": 0,
            },
            {
                "id": 3,
                "image_id": 42,
                "category_id": 5,
                "segmentation": {"size": [H, W], "counts": crowd_rle["counts"].decode()},
                "area": float(crowd.sum()),
                "bbox": [0, 12, 10, 8],
                "iscrowd": 1,
            },
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return root, path, data


class TestCocoInstances:
    def test_masks_equal_pycocotools(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, data = instances
        ds = CocoInstances(root, path)
        coco = coco_api.COCO(str(path))
        assert len(ds) == 2
        sample = ds[0]
        assert sample.image_id == 42
        for i, ann in enumerate(data["annotations"]):
            want = torch.from_numpy(coco.annToMask(ann).astype(bool))
            assert sample.instance_masks[i].sum() > 0
            assert torch.equal(sample.instance_masks[i], want), ann["id"]
        # things sorted by category id: airplane (5), toothbrush (90)
        assert ds.class_names == ("airplane", "toothbrush")
        assert ds.category_ids == (5, 90) and ds.category_to_index == {5: 0, 90: 1}
        assert ds.num_things == 2
        assert sample.instance_classes.tolist() == [1, 0, 0]
        assert sample.instance_iscrowd.tolist() == [False, False, True]
        assert [s.iscrowd for s in sample.segments] == [False, False, True]

    def test_panoptic_view(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, _ = instances
        s = CocoInstances(root, path)[0]
        # non-crowd instances are painted over the crowd region, later over earlier
        m = s.instance_masks
        assert torch.equal(s.panoptic == 2, m[1])
        assert torch.equal(s.panoptic == 1, m[0] & ~m[1])
        assert torch.equal(s.panoptic == 3, m[2] & ~m[0] & ~m[1])
        assert (s.semantic[s.panoptic == 0] == 255).all()
        assert (s.semantic[s.panoptic == 1] == 1).all()
        assert [seg.area for seg in s.segments] == [int((s.panoptic == k).sum()) for k in (1, 2, 3)]
        assert torch.equal(s.segment_masks, s.panoptic[None] == torch.arange(1, 4)[:, None, None])

    def test_image_without_annotations(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, _ = instances
        s = CocoInstances(root, path)[1]
        assert s.instance_masks.shape == (0, 12, 14) and s.segments == []
        assert (s.semantic == 255).all() and (s.panoptic == 0).all()

    def test_crowd_is_honoured_by_mask_ap(
        self, instances: tuple[Path, Path, dict[str, Any]]
    ) -> None:
        root, path, _ = instances
        s = CocoInstances(root, path)[0]
        keep = ~s.instance_iscrowd
        scores = torch.tensor([0.9, 0.8])
        # perfect predictions of the two non-crowd objects, nothing on the crowd region
        args = (s.instance_masks[keep], scores, s.instance_classes[keep])
        honoured, ignored = MaskAP(), MaskAP()
        gt = (s.instance_masks, s.instance_classes)
        honoured.update(*args, *gt, gt_iscrowd=s.instance_iscrowd)
        ignored.update(*args, *gt)
        assert honoured.compute()["ap"] == pytest.approx(1.0)
        assert ignored.compute()["ap"] < 0.9  # the crowd would be a missed airplane

    def test_degenerate_polygons_add_nothing(self) -> None:
        square = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]
        want = decode_coco_segmentation([square], 8, 8, source="t")
        assert want.sum() > 0
        # a 2-point "polygon" first would make pycocotools read the list as boxes
        got = decode_coco_segmentation([[0.0, 0.0, 7.0, 7.0], square, []], 8, 8, source="t")
        assert np.array_equal(got, want)
        with pytest.raises(ValueError, match="t: bad segmentation: a polygon must be"):
            decode_coco_segmentation([[1.0, 2.0, 3.0]], 8, 8, source="t")

    def test_size_mismatch_names_the_image(
        self, instances: tuple[Path, Path, dict[str, Any]]
    ) -> None:
        root, path, data = instances
        data["images"][0]["height"] = H + 1
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"a\.jpg.*20x30.*21x30"):
            CocoInstances(root, path)[0]

    def test_rle_size_mismatch(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, data = instances
        data["annotations"][2]["segmentation"]["size"] = [H, W + 1]
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"instances\.json \(annotation 3.*RLE size"):
            CocoInstances(root, path)[0]

    def test_unknown_category(
        self, instances: tuple[Path, Path, dict[str, Any]], caplog: pytest.LogCaptureFixture
    ) -> None:
        root, path, data = instances
        data["annotations"][0]["category_id"] = 1234
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"instances\.json.*category_id 1234"):
            CocoInstances(root, path)
        with caplog.at_level(logging.WARNING, logger="samkit.data"):
            ds = CocoInstances(root, path, strict=False)
        assert len(ds) == 1 and ds[0].image_id == 7
        assert len(ds.skipped) == 1 and "1234" in ds.skipped[0]
        assert "skipped 1 of 2" in caplog.text

    def test_missing_image(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, _ = instances
        (root / "b.png").unlink()
        with pytest.raises(FileNotFoundError, match=r"b\.png: image not found"):
            CocoInstances(root, path)
        ds = CocoInstances(root, path, strict=False)
        assert len(ds) == 1 and len(ds.skipped) == 1

    def test_unreadable_image(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, _ = instances
        (root / "a.jpg").write_bytes(b"not a jpeg at all")
        with pytest.raises(ValueError, match=r"a\.jpg: not a readable image"):
            CocoInstances(root, path)[0]

    def test_bad_json(self, tmp_path: Path) -> None:
        bad = tmp_path / "x.json"
        bad.write_text("{not json")
        with pytest.raises(ValueError, match=r"x\.json: not a readable COCO instances JSON"):
            CocoInstances(tmp_path, bad)
        with pytest.raises(FileNotFoundError, match="missing.json"):
            CocoInstances(tmp_path, tmp_path / "missing.json")

    def test_pickles(self, instances: tuple[Path, Path, dict[str, Any]]) -> None:
        root, path, _ = instances
        ds = CocoInstances(root, path, size=16)
        again = pickle.loads(pickle.dumps(ds))
        a, b = ds[0], again[0]
        assert torch.equal(a.instance_masks, b.instance_masks) and torch.equal(a.image, b.image)
        assert a.image.shape == (3, 16, 16)


# ---------------------------------------------------------------- COCO panoptic
def _rgb_id(r: int, g: int, b: int) -> int:
    return r + 256 * g + 256 * 256 * b


@pytest.fixture
def panoptic(tmp_path: Path) -> tuple[Path, Path, Path, dict[str, Any]]:
    """One 16x16 image whose PNG ids use all three channels, with a crowd segment."""
    h, w = 16, 16
    root = tmp_path / "val2017"
    _image(root / "000000000139.jpg", h, w)
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    rgb[:8, :8] = (1, 2, 3)  # a car
    rgb[:, 8:] = (200, 0, 0)  # wall (stuff)
    rgb[8:12, :8] = (0, 0, 1)  # a crowd of cars
    # rows 12..15, cols 0..7 stay void
    png_root = tmp_path / "panoptic_val2017"
    png_root.mkdir()
    Image.fromarray(rgb).save(png_root / "000000000139.png")
    data = {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": h, "width": w}],
        "categories": [
            {"id": 3, "name": "wall", "isthing": 0, "supercategory": "s"},
            {"id": 7, "name": "car", "isthing": 1, "supercategory": "t"},
            {"id": 1, "name": "person", "isthing": 1, "supercategory": "t"},
        ],
        "annotations": [
            {
                "image_id": 139,
                "file_name": "000000000139.png",
                "segments_info": [
                    {"id": _rgb_id(200, 0, 0), "category_id": 3, "iscrowd": 0},
                    {"id": _rgb_id(1, 2, 3), "category_id": 7, "iscrowd": 0},
                    {"id": _rgb_id(0, 0, 1), "category_id": 7, "iscrowd": 1},
                ],
            }
        ],
    }
    path = tmp_path / "panoptic_val2017.json"
    path.write_text(json.dumps(data))
    return root, path, png_root, data


class TestCocoPanoptic:
    def test_reads_explicit_rgb_ids(
        self, panoptic: tuple[Path, Path, Path, dict[str, Any]]
    ) -> None:
        root, path, png_root, _ = panoptic
        ds = CocoPanoptic(root, path, png_root)
        assert ds.class_names == ("person", "car", "wall") and ds.num_things == 2
        assert ds.category_ids == (1, 7, 3)
        s = ds[0]
        assert s.image_id == 139 and s.part_masks is None
        # ids renumbered 1..S in segments_info order
        want = torch.zeros(16, 16, dtype=torch.long)
        want[:, 8:] = 1
        want[:8, :8] = 2
        want[8:12, :8] = 3
        assert torch.equal(s.panoptic, want)
        sem = torch.full((16, 16), 255)
        sem[:, 8:] = 2
        sem[:12, :8] = 1
        assert torch.equal(s.semantic, sem)
        got = [(g.id, g.category_id, g.is_thing, g.area, g.instance, g.iscrowd) for g in s.segments]
        assert got == [
            (1, 2, False, 128, -1, False),
            (2, 1, True, 64, 0, False),
            (3, 1, True, 32, 1, True),
        ]
        assert s.instance_classes.tolist() == [1, 1]
        assert s.instance_iscrowd.tolist() == [False, True]
        assert torch.equal(s.instance_masks, s.segment_masks[1:])

    def test_crowd_is_honoured_by_pq(
        self, panoptic: tuple[Path, Path, Path, dict[str, Any]]
    ) -> None:
        root, path, png_root, _ = panoptic
        s = CocoPanoptic(root, path, png_root)[0]
        # a prediction that copies the non-crowd segments and leaves the crowd region void
        pred = torch.where(s.panoptic == 3, 0, s.panoptic)
        pred_segs = [{"id": g.id, "category_id": g.category_id} for g in s.segments[:2]]
        pq = PanopticQuality(things=range(2), stuff=[2])
        pq.update(pred, pred_segs, s.panoptic, s.segments)
        assert pq.compute()["all"]["pq"] == pytest.approx(1.0)
        assert pq.stats[1].fn == 0
        not_crowd = [dict(vars(g), iscrowd=False) for g in s.segments]
        control = PanopticQuality(things=range(2), stuff=[2])
        control.update(pred, pred_segs, s.panoptic, not_crowd)
        assert control.stats[1].fn == 1

    def test_png_id_without_segment(
        self, panoptic: tuple[Path, Path, Path, dict[str, Any]]
    ) -> None:
        root, path, png_root, data = panoptic
        del data["annotations"][0]["segments_info"][1]
        path.write_text(json.dumps(data))
        ds = CocoPanoptic(root, path, png_root)
        with pytest.raises(ValueError, match=r"000000000139\.png: pixel id 197121 \(RGB 1, 2, 3\)"):
            ds[0]

    def test_unknown_category(self, panoptic: tuple[Path, Path, Path, dict[str, Any]]) -> None:
        root, path, png_root, data = panoptic
        data["annotations"][0]["segments_info"][0]["category_id"] = 99
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"panoptic_val2017\.json: image 139.*category_id 99"):
            CocoPanoptic(root, path, png_root)
        ds = CocoPanoptic(root, path, png_root, strict=False)
        assert len(ds) == 0 and len(ds.skipped) == 1

    def test_missing_files(self, panoptic: tuple[Path, Path, Path, dict[str, Any]]) -> None:
        root, path, png_root, _ = panoptic
        (png_root / "000000000139.png").unlink()
        with pytest.raises(FileNotFoundError, match=r"000000000139\.png: panoptic PNG not found"):
            CocoPanoptic(root, path, png_root)
        (root / "000000000139.jpg").unlink()
        with pytest.raises(FileNotFoundError, match=r"000000000139\.jpg: image not found"):
            CocoPanoptic(root, path, png_root)

    def test_size_mismatch(self, panoptic: tuple[Path, Path, Path, dict[str, Any]]) -> None:
        root, path, png_root, data = panoptic
        Image.fromarray(np.zeros((16, 15, 3), dtype=np.uint8)).save(png_root / "000000000139.png")
        with pytest.raises(ValueError, match=r"000000000139\.jpg: image is 16x16.*panoptic PNG"):
            CocoPanoptic(root, path, png_root)[0]

    def test_grey_png_is_refused(self, panoptic: tuple[Path, Path, Path, dict[str, Any]]) -> None:
        root, path, png_root, _ = panoptic
        Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(png_root / "000000000139.png")
        with pytest.raises(ValueError, match="expected an RGB panoptic PNG"):
            CocoPanoptic(root, path, png_root)[0]

    def test_missing_isthing(self, panoptic: tuple[Path, Path, Path, dict[str, Any]]) -> None:
        root, path, png_root, data = panoptic
        del data["categories"][0]["isthing"]
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"category 3 \(wall\) has no 'isthing'"):
            CocoPanoptic(root, path, png_root)

    def test_collate_keeps_crowd_and_ids(
        self, panoptic: tuple[Path, Path, Path, dict[str, Any]]
    ) -> None:
        root, path, png_root, _ = panoptic
        ds = CocoPanoptic(root, path, png_root)
        batch = collate_panoptic([ds[0], ds[0]])
        assert batch.image_ids == [139, 139]
        assert batch.instance_iscrowd is not None
        assert batch.instance_iscrowd[1].tolist() == [False, True]
