"""`sync()` of the streaming metrics: two gloo processes equal one process with all the data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from samkit.engine.task import Metric
from samkit.metrics import MaskAP, PanopticQuality, ReferringMetrics, SemanticIoU

NUM_IMAGES = 7
SPLIT = 2  # rank 0 gets images [0, SPLIT), rank 1 the rest: an uneven split
THINGS, STUFF = [0, 1], [2, 3]
H = W = 24


# ---------------------------------------------------------------------- deterministic data
def _semantic(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    target = torch.randint(0, 5, (2, H, W), generator=g)
    target[target == 4] = 255  # ignored pixels
    wrong = torch.randint(0, 4, (1,), generator=g)
    pred = torch.where(torch.rand(2, H, W, generator=g) < 0.7, target.clamp_max(3), wrong)
    return pred, target


def _referring(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + i)
    target = torch.rand(3, H, W, generator=g) < 0.3
    target[0] = False  # a no-target expression
    pred = target ^ (torch.rand(3, H, W, generator=g) < 0.1)
    if i % 2:
        pred[0] = False  # correctly predicted "no target"
    return pred, target


def _boxes(g: torch.Generator, n: int) -> list[tuple[int, int, int, int]]:
    out = []
    for _ in range(n):
        y, x = (int(v) for v in torch.randint(0, H - 8, (2,), generator=g))
        h, w = (int(v) for v in torch.randint(4, 9, (2,), generator=g))
        out.append((y, x, h, w))
    return out


def _panoptic(i: int) -> tuple[torch.Tensor, list[dict], torch.Tensor, list[dict]]:
    """Ground truth with stuff, things and a crowd region; a prediction that perturbs it."""
    g = torch.Generator().manual_seed(300 + i)
    gt = torch.full((H, W), 1, dtype=torch.long)  # stuff 1 on the top half, stuff 2 below
    gt[H // 2 :] = 2
    gt_segs = [{"id": 1, "category_id": 2}, {"id": 2, "category_id": 3}]
    for k, (y, x, h, w) in enumerate(_boxes(g, 3)):
        gt[y : y + h, x : x + w] = 3 + k
        gt_segs.append({"id": 3 + k, "category_id": k % 2, "iscrowd": int(k == 2)})
    pred = gt.clone()
    noise = torch.rand(H, W, generator=g) < 0.15
    pred[noise] = 1
    pred_segs = [{"id": s["id"], "category_id": s["category_id"]} for s in gt_segs]
    y, x, h, w = _boxes(g, 1)[0]  # a stray thing: FP unless it lies on void or a crowd
    pred[y : y + h, x : x + w] = 9
    pred_segs.append({"id": 9, "category_id": int(i % 2)})
    pred[0, :3] = 0  # a few void pixels
    return pred, pred_segs, gt, gt_segs


def _instances(i: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(400 + i)
    n_gt = 1 + i % 3
    gt = torch.zeros(n_gt, H, W, dtype=torch.bool)
    for k, (y, x, h, w) in enumerate(_boxes(g, n_gt)):
        gt[k, y : y + h, x : x + w] = True
    gt_labels = torch.randint(0, 3, (n_gt,), generator=g)
    crowd = torch.zeros(n_gt, dtype=torch.long)
    crowd[-1] = int(i % 3 == 2)
    pred = gt.clone()
    pred[:, : H // 3] = False  # imperfect masks
    extra = torch.zeros(1, H, W, dtype=torch.bool)
    y, x, h, w = _boxes(g, 1)[0]
    extra[0, y : y + h, x : x + w] = True
    pred = torch.cat([pred, extra])
    scores = torch.rand(n_gt + 1, generator=g)
    labels = torch.cat([gt_labels, torch.randint(0, 3, (1,), generator=g)])
    return pred, scores, labels, gt, gt_labels, crowd


def _metrics() -> dict[str, Any]:
    return {
        "semantic": SemanticIoU(num_classes=4, class_names=["a", "b", "c", "d"]),
        "referring": ReferringMetrics(),
        "panoptic": PanopticQuality(things=THINGS, stuff=STUFF),
        "instance": MaskAP(),
    }


def _update_one(name: str, metric: Any, images: range) -> None:
    for i in images:
        if name == "semantic":
            metric.update(*_semantic(i))
        elif name == "referring":
            metric.update(*_referring(i))
        elif name == "panoptic":
            metric.update(*_panoptic(i))
        else:
            metric.update(*_instances(i))


def _result(name: str, metric: Any) -> Any:
    return metric.compute_all() if name == "semantic" else metric.compute()


def _update(metrics: dict[str, Any], images: range) -> None:
    for name, metric in metrics.items():
        _update_one(name, metric, images)


def _results(metrics: dict[str, Any]) -> dict[str, Any]:
    return {name: _result(name, metric) for name, metric in metrics.items()}


def _worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metrics = _metrics()
        _update(metrics, range(SPLIT) if rank == 0 else range(SPLIT, NUM_IMAGES))
        for m in metrics.values():
            m.sync()
        errors = {}
        for name, m in metrics.items():
            try:
                m.sync()
            except RuntimeError as err:
                errors[name] = str(err)
        result = {"results": _results(metrics), "second_sync": errors}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == pytest.approx(b, abs=1e-12, rel=0), path


def test_two_gloo_processes_equal_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = _metrics()
    _update(single, range(NUM_IMAGES))
    expected = json.loads(json.dumps(_results(single)))  # the same float round trip as the ranks
    assert expected["panoptic"]["all"]["n"] == len(THINGS + STUFF)  # the data exercise PQ fully
    assert 0 < expected["instance"]["ap"] < 1
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        _close(got["results"], expected)
        assert sorted(got["second_sync"]) == sorted(expected)  # every metric refused twice
        assert all("already" in msg for msg in got["second_sync"].values())
    # a rank alone sees something else (the test is not vacuous)
    half = _metrics()
    _update(half, range(SPLIT))
    assert _results(half)["instance"] != expected["instance"]


def test_mask_ap_sync_exact_and_ids_unique(tmp_path: Path) -> None:
    # MaskAP gathers per-image records: the merged lists equal one process's lists exactly
    import torch.multiprocessing as mp

    mp.spawn(_ap_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = MaskAP()
    for i in range(NUM_IMAGES):
        single.update(*_instances(i))
    for rank in (0, 1):
        got = json.loads((tmp_path / f"ap{rank}.json").read_text())
        assert got["images"] == [im["id"] for im in single.images]
        assert got["gts"] == [[a["id"], a["image_id"]] for a in single.gts]
        assert got["dets"] == [d["image_id"] for d in single.dets]
        assert got["stats"] == single.compute()  # exact


def _ap_worker(rank: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        m = MaskAP()
        for i in range(SPLIT) if rank == 0 else range(SPLIT, NUM_IMAGES):
            m.update(*_instances(i))
        m.sync()
        out = {
            "images": [im["id"] for im in m.images],
            "gts": [[a["id"], a["image_id"]] for a in m.gts],
            "dets": [d["image_id"] for d in m.dets],
            "stats": m.compute(),
        }
        Path(out_dir, f"ap{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["semantic", "referring", "panoptic", "instance"])
def test_sync_alone_is_a_no_op_and_one_shot(name: str) -> None:
    metric = _metrics()[name]
    assert isinstance(metric, Metric)
    _update_one(name, metric, range(3))
    before = json.dumps(_result(name, metric))
    metric.sync()  # no process group: nothing to merge
    assert json.dumps(_result(name, metric)) == before
    with pytest.raises(RuntimeError, match="already"):
        metric.sync()
    with pytest.raises(RuntimeError, match="after sync"):
        _update_one(name, metric, range(1))
    metric.reset()  # a new evaluation may update and sync again
    _update_one(name, metric, range(3))
    metric.sync()
    assert json.dumps(_result(name, metric)) == before
