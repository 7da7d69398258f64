"""Prediction writers: files that pycocotools, panopticapi-style readers and PIL read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.data import (
    CocoPanoptic,
    CocoPanopticWriter,
    CocoResultsWriter,
    Segment,
    write_image,
    write_mask_png,
    write_semantic_png,
)

coco_api = pytest.importorskip("pycocotools.coco")


def test_coco_results_load_with_pycocotools(tmp_path: Path) -> None:
    gt = {
        "images": [{"id": 5, "file_name": "x.jpg", "height": 10, "width": 12}],
        "categories": [{"id": 3, "name": "a"}, {"id": 11, "name": "b"}],
        "annotations": [],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    masks = torch.zeros(2, 10, 12, dtype=torch.bool)
    masks[0, 1:4, 2:9] = True
    masks[1, 5:10, 0:3] = True
    w = CocoResultsWriter(tmp_path / "res.json", category_ids=[3, 11])
    w.add(5, masks, torch.tensor([1, 0]), torch.tensor([0.9, 0.25]))
    path = w.write()
    coco = coco_api.COCO(str(tmp_path / "gt.json"))
    res = coco.loadRes(str(path))
    anns = sorted(res.anns.values(), key=lambda a: -a["score"])
    assert [a["category_id"] for a in anns] == [11, 3]
    assert [a["score"] for a in anns] == pytest.approx([0.9, 0.25])
    for a, m in zip(anns, masks, strict=True):
        assert np.array_equal(res.annToMask(a).astype(bool), m.numpy())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files
    with pytest.raises(ValueError, match="class index"):
        w.add(5, masks, torch.tensor([0, 2]), torch.tensor([0.1, 0.2]))


def test_coco_panoptic_writer_round_trip(tmp_path: Path) -> None:
    pan = torch.zeros(6, 7, dtype=torch.long)
    pan[:3] = 70000  # id using two channels
    pan[3:, :4] = 2
    pan[3:, 4:] = 9  # not listed: written as void
    segs = [Segment(70000, 2, False, 21), {"id": 2, "category_id": 0, "score": 0.5}]
    w = CocoPanopticWriter(
        tmp_path, class_names=("car", "sky", "road"), num_things=1, category_ids=[7, 40, 41]
    )
    png = w.add(12, pan, segs, file_name="im12.png", image_file_name="im12.jpg")
    rgb = np.asarray(Image.open(png)).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert ids[0, 0] == 70000 and ids[5, 0] == 2 and ids[5, 6] == 0
    path = w.write()
    data = json.loads(path.read_text())
    info = data["annotations"][0]["segments_info"]
    assert [(s["id"], s["category_id"], s["area"]) for s in info] == [(70000, 41, 21), (2, 7, 12)]
    assert info[1]["score"] == 0.5 and info[1]["bbox"] == [0.0, 3.0, 4.0, 3.0]
    assert data["categories"][0] == {"id": 7, "name": "car", "isthing": 1}
    # the samkit reader reads the written files back
    write_image(tmp_path / "images" / "im12.jpg", torch.rand(3, 6, 7))
    s = CocoPanoptic(tmp_path / "images", path, tmp_path / "panoptic_pred")[0]
    assert s.segment_classes.tolist() == [2, 0] and s.segments[1].is_thing
    assert torch.equal(s.segment_masks[0], pan == 70000)


def test_label_and_mask_pngs(tmp_path: Path) -> None:
    labels = torch.tensor([[0, 1], [255, 7]])
    p = write_semantic_png(tmp_path / "l.png", labels)
    im = Image.open(p)
    assert im.mode == "L" and np.array_equal(np.asarray(im), labels.numpy())
    big = torch.tensor([[0, 300], [1000, 2]])
    assert np.array_equal(
        np.asarray(Image.open(write_semantic_png(tmp_path / "b.png", big))), big.numpy()
    )
    with pytest.raises(ValueError, match="ids in"):
        write_semantic_png(tmp_path / "n.png", torch.tensor([[-1]]))
    mask = torch.tensor([[True, False], [False, True]])
    m = np.asarray(Image.open(write_mask_png(tmp_path / "m.png", mask)))
    assert m.tolist() == [[255, 0], [0, 255]]
    with pytest.raises(ValueError, match=r"\.png, \.jpg or \.jpeg"):
        write_mask_png(tmp_path / "m.bmp", mask)
