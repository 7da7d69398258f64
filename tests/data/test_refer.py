"""RefCoco on hand-made REFER pickles and gRefCOCO JSON; the restricted unpickler."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.data import RefCoco, collate_referring, read_plain_pickle

coco_api = pytest.importorskip("pycocotools.coco")

H, W = 24, 32


@pytest.fixture
def refer(tmp_path: Path) -> tuple[Path, Path, dict[str, Any]]:
    """Two images, three annotations (polygons) in a COCO instances file."""
    root = tmp_path / "train2014"
    root.mkdir()
    for name in ("COCO_train2014_000000000009.jpg", "COCO_train2014_000000000025.jpg"):
        Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(root / name)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]

    data = {
        "images": [
            {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": H, "width": W},
            {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {
                "id": 100,
                "image_id": 9,
                "category_id": 18,
                "segmentation": box(2, 2, 10, 10),
                "iscrowd": 0,
            },
            {
                "id": 101,
                "image_id": 9,
                "category_id": 1,
                "segmentation": box(12, 4, 30, 20),
                "iscrowd": 0,
            },
            {
                "id": 200,
                "image_id": 25,
                "category_id": 1,
                "segmentation": box(0, 0, 8, 8),
                "iscrowd": 0,
            },
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return root, path, data


def _ann_mask(path: Path, ann_id: int) -> torch.Tensor:
    coco = coco_api.COCO(str(path))
    return torch.from_numpy(coco.annToMask(coco.anns[ann_id]).astype(bool))


def test_refer_pickle_of_plain_dicts(
    refer: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, inst, _ = refer
    refs = [
        {
            "ref_id": 0,
            "ann_id": 101,
            "image_id": 9,
            "split": "train",
            "category_id": 1,
            "sentences": [
                {"sent": "man on the right", "raw": "Man on the right", "sent_id": 0},
                {"sent": "right guy", "raw": "right guy", "sent_id": 1},
            ],
        },
        {
            "ref_id": 1,
            "ann_id": 100,
            "image_id": 9,
            "split": "val",
            "category_id": 18,
            "sentences": [{"sent": "dog", "sent_id": 2}],
        },
        {
            "ref_id": 2,
            "ann_id": 200,
            "image_id": 25,
            "split": "train",
            "category_id": 1,
            "sentences": [{"sent": "person top left", "sent_id": 3}],
        },
    ]
    p = tmp_path / "refs(unc).p"
    p.write_bytes(pickle.dumps(refs, protocol=2))
    ds = RefCoco(root, p, inst, "train")
    assert len(ds) == 3  # one per sentence of the train refs
    assert [ds[i].text for i in range(3)] == ["man on the right", "right guy", "person top left"]
    s = ds[1]
    assert s.has_target and s.kind == "single-target" and s.image_id == 9
    assert s.target_ids == [1] and s.instance_masks.shape == (2, H, W)
    assert torch.equal(s.target_mask, _ann_mask(inst, 101))
    assert torch.equal(s.instance_masks[0], _ann_mask(inst, 100))
    ys, xs = torch.nonzero(s.target_mask, as_tuple=True)
    assert s.target_box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert s.instance_classes.tolist() == [1, 0]  # dog (18) -> 1, person (1) -> 0
    assert ds.class_names == ("person", "dog")
    val = RefCoco(root, p, inst, "val")
    assert len(val) == 1 and val[0].text == "dog"
    with pytest.raises(
        ValueError, match=r"no ref has split 'testA' \(splits: \['train', 'val'\]\)"
    ):
        RefCoco(root, p, inst, "testA")


def test_grefcoco_json(refer: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    root, inst, _ = refer
    grefs = [
        {
            "ref_id": 0,
            "ann_id": [100, 101],
            "image_id": 9,
            "split": "val",
            "no_target": False,
            "sentences": [{"sent": "everything", "raw": "everything", "sent_id": 0}],
        },
        {
            "ref_id": 1,
            "ann_id": [-1],
            "image_id": 25,
            "split": "val",
            "no_target": True,
            "sentences": [{"sent": "the cat", "sent_id": 1}],
        },
    ]
    p = tmp_path / "grefs(unc).json"
    p.write_text(json.dumps(grefs))
    ds = RefCoco(root, p, inst, "val", size=16)
    multi, none = ds[0], ds[1]
    assert multi.kind == "multi-target" and multi.target_ids == [0, 1]
    assert torch.equal(multi.target_mask, multi.instance_masks.any(0))
    assert multi.target_mask.shape == (16, 16)
    assert not none.has_target and none.kind == "no-target" and none.target_ids == []
    assert not none.target_mask.any() and none.target_box.tolist() == [0, 0, 0, 0]
    batch = collate_referring([multi, none])
    assert batch.image_ids == [9, 25] and batch.has_target.tolist() == [True, False]


def test_bad_refs(refer: tuple[Path, Path, dict[str, Any]], tmp_path: Path) -> None:
    root, inst, _ = refer
    p = tmp_path / "grefs.json"
    ref = {
        "ref_id": 5,
        "ann_id": [999],
        "image_id": 9,
        "split": "val",
        "sentences": [{"sent": "x"}],
    }
    p.write_text(json.dumps([ref, {**ref, "ref_id": 6, "ann_id": [100]}]))
    with pytest.raises(ValueError, match=r"grefs\.json: ref 5: ann_id 999 is not in"):
        RefCoco(root, p, inst, "val")
    ds = RefCoco(root, p, inst, "val", strict=False)
    assert len(ds) == 1 and len(ds.skipped) == 1
    p.write_text(json.dumps([{**ref, "ann_id": [200]}]))
    with pytest.raises(ValueError, match="ann_id 200 belongs to image 25, not 9"):
        RefCoco(root, p, inst, "val")
    p.write_text(json.dumps([{**ref, "ann_id": [100], "no_target": True}]))
    with pytest.raises(ValueError, match="has no_target set but names annotations"):
        RefCoco(root, p, inst, "val")
    p.write_text(json.dumps([{**ref, "ann_id": [100], "image_id": 77}]))
    with pytest.raises(ValueError, match="image_id 77 is not in"):
        RefCoco(root, p, inst, "val")
    (root / "COCO_train2014_000000000009.jpg").unlink()
    p.write_text(json.dumps([{**ref, "ann_id": [100]}]))
    with pytest.raises(FileNotFoundError, match=r"000000000009\.jpg: image not found"):
        RefCoco(root, p, inst, "val")


# ---------------------------------------------------------------- the restricted unpickler
class _RunsCode:
    """Unpickling this calls `func(*args)`."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


@pytest.mark.parametrize("via", ["os.system", "exec"])
def test_malicious_pickle_runs_nothing(tmp_path: Path, via: str) -> None:
    marker = tmp_path / "pwned"
    if via == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
    else:
        payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').write('x')")
    evil = tmp_path / "refs(unc).p"
    # a list of refs with the payload inside, as a crafted refs file would be
    evil.write_bytes(pickle.dumps([{"ref_id": 0, "sentences": payload}], protocol=2))
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: refused to unpickle: it references"):
        read_plain_pickle(evil)
    inst = tmp_path / "instances.json"
    inst.write_text(
        json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
    )
    with pytest.raises(ValueError, match="refused to unpickle"):
        RefCoco(tmp_path, evil, inst, "train")
    assert not marker.exists()
    # the payload is real: an ordinary unpickler would have run it
    pickle.loads(evil.read_bytes())
    assert marker.exists()


def test_plain_pickle_accepts_plain_data(tmp_path: Path) -> None:
    data = {"a": [1, 2.5, None, True, "é", (1, 2), 10**30], "b": {3: {"c": []}}}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        p = tmp_path / f"p{protocol}.p"
        p.write_bytes(pickle.dumps(data, protocol=protocol))
        assert read_plain_pickle(p) == data
    # Python 2 byte strings (REFER's pickles were written by Python 2): SHORT_BINSTRING 'abc'
    (tmp_path / "py2.p").write_bytes(b"\x80\x02]q\x00U\x03abcq\x01a.")
    assert read_plain_pickle(tmp_path / "py2.p") == ["abc"]
    (tmp_path / "t.p").write_bytes(pickle.dumps(data)[:-5])
    with pytest.raises(ValueError, match=r"t\.p: not a readable pickle"):
        read_plain_pickle(tmp_path / "t.p")
