"""train -> eval -> predict through the command line, on data sets written in the standard formats.

`export_synthetic` writes generated scenes as COCO panoptic, COCO instances, ADE-style folders
and gRefCOCO files; every command reads them back through its data file. `samkit eval`'s mask
AP is checked against pycocotools' COCOeval on the COCO results file it writes, and its PQ
against an independent PQ computation (panopticapi's rules, written here with numpy) on the
COCO panoptic PNGs and JSON it writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from samkit.cli import main
from samkit.data import export_synthetic

SIZE = 32
SYSTEM_FORMAT = {"sam-cp": "coco_panoptic", "sam-mi": "semantic_folder", "ssp-sam": "refcoco"}
# Tiny SAM-CP proposes patches from an 8 x 8 grid with the quality filters off, so that the
# random-weight model has patches (and predictions) to evaluate.
SAM_CP_SET = [
    "--set", "points_per_side=8",
    "--set", "pred_iou_thresh=0.0",
    "--set", "stability_score_thresh=0.0",
    "--set", "object_mask_threshold=0.0",
    "--set", "affinity_threshold=0.0",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("data")
    out: dict[str, dict[str, Path]] = {}
    for fmt in ("coco_panoptic", "coco_instances", "semantic_folder", "refcoco"):
        out[fmt] = {
            split: export_synthetic(root / fmt, fmt, num_scenes=n, size=SIZE, seed=5, split=split)
            for split, n in (("train", 4), ("val", 3))
        }
    return out


def _train(system: str, files: dict[str, Path], run: Path, *extra: str) -> int:
    steps = "2,2" if system == "sam-mi" else "2"
    args = ["train", system, "--train", str(files["train"]), "--val", str(files["val"])]
    args += ["--out", str(run), "--steps", steps, "--batch-size", "2", "--no-progress"]
    args += ["--checkpoint-every", "1", "--lr", "1e-3"]
    if system == "sam-cp":
        args += SAM_CP_SET
    return main([*args, *extra])


def _images(files: dict[str, Path]) -> list[Path]:
    return sorted((files["val"].parent / "images" / "val").glob("*.png"))[:2]


@pytest.fixture(scope="module")
def runs(
    data: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for system, fmt in SYSTEM_FORMAT.items():
        assert _train(system, data[fmt], root / system) == 0
        out[system] = root / system
    return out


@pytest.mark.parametrize("system", list(SYSTEM_FORMAT))
def test_train_writes_a_complete_run(system: str, runs: dict[str, Path]) -> None:
    run = runs[system]
    info = json.loads((run / "run.json").read_text())
    assert info["system"] == system.replace("-", "_") and info["finished"] is True
    assert (run / "model" / "config.json").is_file()
    assert (run / "model" / "model.safetensors").is_file()
    assert list((run / "checkpoints").glob("*.pt"))
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows, "log.jsonl is empty"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics and all(isinstance(v, (int, float)) for v in metrics.values())


@pytest.mark.parametrize("system", list(SYSTEM_FORMAT))
def test_eval_reproduces_the_final_validation(
    system: str,
    runs: dict[str, Path],
    data: dict[str, dict[str, Path]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The saved model, reloaded, gives the metrics that training printed for the same data."""
    run = runs[system]
    out = tmp_path / "metrics.json"
    val = data[SYSTEM_FORMAT[system]]["val"]
    assert main(["eval", str(run), "--data", str(val), "--out", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert set(got) == set(trained)
    for key, value in trained.items():
        assert (math.isnan(value) and math.isnan(got[key])) or got[key] == pytest.approx(
            value, abs=1e-6
        ), key
    printed = capsys.readouterr().out
    assert str(out) in printed


@pytest.mark.parametrize("system", list(SYSTEM_FORMAT))
def test_predict_writes_overlays_and_standard_files(
    system: str, runs: dict[str, Path], data: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    images = _images(data[SYSTEM_FORMAT[system]])
    extra = ["--text", "the red circle", "--text", "all squares"] if system == "ssp-sam" else []
    out = tmp_path / "pred"
    args = ["predict", str(runs[system]), *map(str, images), "--out", str(out), "--no-progress"]
    assert main([*args, *extra]) == 0
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == len(images) * (2 if system == "ssp-sam" else 1)
    for path in overlays:  # a title bar and a legend around the image
        h, w = Image.open(path).size[::-1]
        assert h > SIZE and w > SIZE
    if system == "ssp-sam":
        records = json.loads((out / "referring.json").read_text())
        assert [r["text"] for r in records] == ["the red circle", "all squares"] * 2
        for r in records:
            mask = np.asarray(Image.open(out / r["mask_file"]))
            assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
            assert bool(mask.any()) <= r["has_target"]
    else:
        for image in images:
            sem = np.asarray(Image.open(out / "semantic" / f"{image.stem}.png"))
            assert sem.shape == (SIZE, SIZE)
    if system == "sam-cp":
        pan = json.loads((out / "panoptic_pred.json").read_text())
        assert len(pan["annotations"]) == len(images)
        assert isinstance(json.loads((out / "instances_results.json").read_text()), list)


def test_predict_with_an_open_vocabulary(runs: dict[str, Path], data: dict, tmp_path: Path) -> None:
    images = _images(data["semantic_folder"])
    out = tmp_path / "pred"
    args = ["predict", str(runs["sam-mi"]), *map(str, images), "--out", str(out)]
    assert main([*args, "--classes", "cat,dog,sky", "--no-progress"]) == 0
    assert (out / "classes.txt").read_text().split() == ["cat", "dog", "sky"]
    for image in images:
        assert np.asarray(Image.open(out / "semantic" / f"{image.stem}.png")).max() < 3


# ---------------------------------------------------------------- metrics vs independent tools


def test_sam_cp_mask_ap_equals_pycocotools(data: dict, tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    files = data["coco_instances"]
    run = tmp_path / "run"
    assert _train("sam-cp", files, run) == 0
    preds = tmp_path / "preds"
    metrics_file = tmp_path / "metrics.json"
    args = ["eval", str(run), "--data", str(files["val"]), "--predictions", str(preds)]
    assert main([*args, "--out", str(metrics_file), "--no-progress"]) == 0
    metrics = json.loads(metrics_file.read_text())
    results = json.loads((preds / "instances_results.json").read_text())
    assert results, "no predictions to compare"
    gt = COCO(str(files["val"].parent / "annotations" / "instances_val.json"))
    ev = COCOeval(gt, gt.loadRes(results), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert metrics["mask_ap"] == pytest.approx(float(ev.stats[0]), abs=1e-9)
    assert metrics["mask_ap50"] == pytest.approx(float(ev.stats[1]), abs=1e-9)


def _jittered_ground_truth(task: Any, batch: Any) -> list[Any]:
    """Predictions that score: ground-truth instances shifted by a pixel, some mislabelled."""
    import torch

    from samkit.types import PanopticResult

    gen = torch.Generator().manual_seed(0)
    out = []
    for b, masks in enumerate(batch.instance_masks):
        masks = torch.roll(masks.cpu(), shifts=1, dims=-1)
        labels = batch.instance_classes[b].cpu().clone()
        labels[::3] = (labels[::3] + 1) % task.num_things
        scores = torch.rand(len(labels), generator=gen)
        panoptic = torch.zeros(masks.shape[-2:], dtype=torch.long)
        segments = []
        for k, (m, c) in enumerate(zip(masks, labels, strict=True)):
            panoptic[m] = k + 1
            segments.append({"id": k + 1, "category_id": int(c), "isthing": True})
        semantic = torch.full(masks.shape[-2:], 255, dtype=torch.long)
        out.append(PanopticResult(panoptic, segments, semantic, masks, scores, labels))
    return out


def test_eval_mask_ap_equals_pycocotools_on_predictions_that_score(
    runs: dict[str, Path], data: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same check with predictions that reach a mask AP far from 0 and 1."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from samkit.systems.sam_cp_task import SAMCPTask

    monkeypatch.setattr(SAMCPTask, "predict", _jittered_ground_truth)
    files = data["coco_instances"]
    preds, metrics_file = tmp_path / "preds", tmp_path / "metrics.json"
    args = ["eval", str(runs["sam-cp"]), "--data", str(files["val"]), "--predictions", str(preds)]
    assert main([*args, "--out", str(metrics_file), "--no-progress"]) == 0
    metrics = json.loads(metrics_file.read_text())
    gt = COCO(str(files["val"].parent / "annotations" / "instances_val.json"))
    ev = COCOeval(
        gt, gt.loadRes(json.loads((preds / "instances_results.json").read_text())), "segm"
    )
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0.05 < metrics["mask_ap"] < 0.95
    for k, key in enumerate(["mask_ap", "mask_ap50", "mask_ap75"]):
        assert metrics[key] == pytest.approx(float(ev.stats[k]), abs=1e-9), key


def _rgb2id(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _independent_pq(gt_json: Path, gt_dir: Path, pred_json: Path, pred_dir: Path) -> float:
    """PQ with panopticapi's rules (`pq_compute_single_core`), from the files alone."""
    gt = json.loads(gt_json.read_text())
    pred = {a["image_id"]: a for a in json.loads(pred_json.read_text())["annotations"]}
    isthing = {c["id"]: c["isthing"] for c in gt["categories"]}
    stats: dict[int, list[float]] = {c: [0.0, 0, 0, 0] for c in isthing}  # iou, tp, fp, fn
    for ann in gt["annotations"]:
        p = pred[ann["image_id"]]
        g_ids, p_ids = _rgb2id(gt_dir / ann["file_name"]), _rgb2id(pred_dir / p["file_name"])
        g_segs = {s["id"]: s for s in ann["segments_info"]}
        p_segs = {s["id"]: s for s in p["segments_info"]}
        g_area = {k: int((g_ids == k).sum()) for k in g_segs}
        p_area = {k: int((p_ids == k).sum()) for k in p_segs}
        pairs: dict[tuple[int, int], int] = {}
        for gk, pk in zip(g_ids.ravel(), p_ids.ravel(), strict=True):
            pairs[(int(gk), int(pk))] = pairs.get((int(gk), int(pk)), 0) + 1
        g_matched, p_matched = set(), set()
        for (gk, pk), inter in pairs.items():
            if gk not in g_segs or pk not in p_segs or g_segs[gk]["iscrowd"]:
                continue
            if g_segs[gk]["category_id"] != p_segs[pk]["category_id"]:
                continue
            union = p_area[pk] + g_area[gk] - inter - pairs.get((0, pk), 0)
            iou = inter / union
            if iou > 0.5:
                st = stats[g_segs[gk]["category_id"]]
                st[0] += iou
                st[1] += 1
                g_matched.add(gk)
                p_matched.add(pk)
        crowd = {s["category_id"]: k for k, s in g_segs.items() if s["iscrowd"]}
        for gk, s in g_segs.items():
            if gk not in g_matched and not s["iscrowd"]:
                stats[s["category_id"]][3] += 1
        for pk, s in p_segs.items():
            if pk in p_matched:
                continue
            ignored = pairs.get((0, pk), 0)
            if s["category_id"] in crowd:
                ignored += pairs.get((crowd[s["category_id"]], pk), 0)
            if ignored / p_area[pk] > 0.5:
                continue
            stats[s["category_id"]][2] += 1
    pqs = [
        iou / (tp + 0.5 * fp + 0.5 * fn) for iou, tp, fp, fn in stats.values() if tp + fp + fn > 0
    ]
    return float(np.mean(pqs)) if pqs else 0.0


def test_sam_cp_pq_equals_an_independent_computation(
    runs: dict[str, Path], data: dict, tmp_path: Path
) -> None:
    files = data["coco_panoptic"]
    preds = tmp_path / "preds"
    metrics_file = tmp_path / "metrics.json"
    args = ["eval", str(runs["sam-cp"]), "--data", str(files["val"]), "--predictions", str(preds)]
    assert main([*args, "--out", str(metrics_file), "--no-progress"]) == 0
    metrics = json.loads(metrics_file.read_text())
    ann = files["val"].parent / "annotations"
    expected = _independent_pq(
        ann / "panoptic_val.json",
        ann / "panoptic_val",
        preds / "panoptic_pred.json",
        preds / "panoptic_pred",
    )
    assert metrics["pq"] == pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- resume and errors


def test_resume_continues_the_run(data: dict, tmp_path: Path) -> None:
    files = data["semantic_folder"]
    run = tmp_path / "run"
    assert _train("sam-mi", files, run) == 0
    assert _train("sam-mi", files, run, "--resume", "--steps", "2,3") == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in rows) >= 5


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_a_one_line_error(
    runs: dict[str, Path], data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(runs["sam-mi"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    _error(capsys, ["predict", run, str(broken), "--out", str(tmp_path / "o")], "broken.png")
    _error(capsys, ["predict", run, str(tmp_path / "nope.jpg"), "--out", str(tmp_path)], "nope")
    bad_format = tmp_path / "bad.yaml"
    bad_format.write_text("format: pascal_voc\n")
    _error(capsys, ["eval", run, "--data", str(bad_format)], "bad.yaml", "pascal_voc")
    _error(capsys, ["eval", str(tmp_path), "--data", str(bad_format)], "run.json")
    files = data["semantic_folder"]
    _error(capsys, ["train", "ssp-sam", "--train", str(files["train"]), "--out", run, "--resume"],
           "sam-mi")  # fmt: skip
    _error(capsys, ["train", "sam-mi", "--train", str(files["train"]), "--out", run], "--resume")
    _error(capsys, ["train", "yolo", "--train", str(files["train"]), "--out", str(tmp_path)],
           "yolo")  # fmt: skip
    image = str(_images(files)[0])
    _error(capsys, ["predict", run, image, "--out", str(tmp_path), "--text", "x"], "--text")
    _error(capsys, ["predict", str(runs["ssp-sam"]), image, "--out", str(tmp_path)], "--text")


def test_torchrun_trains_one_run_with_two_processes(data: dict, tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m samkit.cli train ...`: one run, written by rank 0 once."""
    import os
    import subprocess
    import sys

    files = data["semantic_folder"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "samkit.cli", "train", "sam-mi",
           "--train", str(files["train"]), "--val", str(files["val"]), "--out", str(run),
           "--steps", "1,1", "--batch-size", "1", "--no-progress", "--device", "cpu",
           "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 reports, rank 1 stays quiet
    info = json.loads((run / "run.json").read_text())
    assert info["finished"] is True
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [(r["stage"], r["step"]) for r in rows if r.get("kind") == "train"]
    assert len(steps) == len(set(steps)) == 2  # one row per step, not one per process
    assert (run / "model" / "model.safetensors").is_file()


def test_seed_fixes_the_whole_run(data: dict, tmp_path: Path) -> None:
    """Same `--seed`: identical trained weights, whatever the process's RNG did before."""
    import torch
    from safetensors.torch import load_file

    files = data["refcoco"]
    weights = []
    for k, seed in enumerate(["0", "0", "1"]):
        torch.manual_seed(100 + k)  # disturb the global RNG between runs
        assert _train("ssp-sam", files, tmp_path / str(k), "--seed", seed) == 0
        weights.append(load_file(str(tmp_path / str(k) / "model" / "model.safetensors")))
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])
    assert any(not torch.equal(weights[0][n], weights[2][n]) for n in weights[0])


@pytest.mark.parametrize("system", list(SYSTEM_FORMAT))
def test_predict_batches_do_not_change_results(
    system: str, runs: dict[str, Path], data: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    """Images run one at a time and as one batch give the same files (`--batch-size`)."""
    images = _images(data[SYSTEM_FORMAT[system]])
    extra = ["--text", "the red circle", "--text", "all squares"] if system == "ssp-sam" else []
    outs = []
    for batch in ("1", "8"):
        out = tmp_path / f"pred{batch}"
        args = ["predict", str(runs[system]), *map(str, images), "--out", str(out)]
        assert main([*args, "--no-progress", "--batch-size", batch, *extra]) == 0
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for rel in files:
        if rel.suffix == ".json":  # scores are floats: equal up to float32 round-off
            a, b = (json.loads((o / rel).read_text()) for o in outs)
            assert _close(a, b), rel
        else:
            assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_predict_rejects_a_bad_batch_size(
    runs: dict[str, Path], data: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(_images(data["semantic_folder"])[0])
    args = ["predict", str(runs["sam-mi"]), image, "--out", str(tmp_path), "--batch-size", "0"]
    _error(capsys, args, "--batch-size: expected an int >= 1, got 0")
