"""SAM pretraining: SAM's recipe pieces, learning, quality measures and the command."""

from __future__ import annotations

import json

import pytest
import torch

from samkit.backbones.sam import SAM_VARIANTS, build_sam_backbone
from samkit.metrics import MeanMetric
from samkit.pretrain.quality import centre_points, grid_recall, mask_iou, prompt_quality
from samkit.pretrain.sam import FamilySceneDataset, SamPretrainTask, _sample_points
from samkit.types import Prompts


def _task(**kwargs) -> SamPretrainTask:
    torch.manual_seed(0)
    return SamPretrainTask(build_sam_backbone("tiny"), **kwargs)


def test_points_are_drawn_inside_their_masks() -> None:
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 15, 29] = True
    masks[2, 10:20, 0:2] = True
    for _ in range(5):
        xy = _sample_points(masks)
        for m, (x, y) in zip(masks, xy.tolist(), strict=True):
            assert m[int(y), int(x)]
            assert x % 1 == 0.5 and y % 1 == 0.5  # pixel centres


def test_correction_click_is_positive_in_a_miss_and_negative_in_a_spill() -> None:
    task = _task()
    h = w = 128
    gt = torch.zeros(1, 2, h, w, dtype=torch.bool)
    gt[0, 0, 10:60, 10:60] = True
    gt[0, 1, 10:60, 10:60] = True
    logits = torch.full((1, 2, 1, 64, 64), -10.0)
    # Prompt 0 predicted nothing (a miss); prompt 1 predicted its segment plus a spill.
    logits[0, 1, 0, 5:30, 5:30] = 10.0
    logits[0, 1, 0, 40:60, 40:60] = 10.0
    prompts = Prompts(points=torch.full((1, 2, 1, 2), 30.0), labels=torch.ones(1, 2, 1))
    out = task._correct(prompts, logits, gt, (h, w))
    assert out.points is not None and out.labels is not None and out.masks is not None
    assert out.points.shape == (1, 2, 2, 2) and torch.equal(out.masks, logits)
    (x0, y0), (x1, y1) = out.points[0, :, 1].tolist()
    assert out.labels[0, 0, 1] == 1 and gt[0, 0, int(y0), int(x0)]
    pred1 = torch.zeros(h, w, dtype=torch.bool)
    pred1[10:60, 10:60] = True
    pred1[80:120, 80:120] = True
    if out.labels[0, 1, 1] == 0:  # a spill click lies outside the segment
        assert not gt[0, 1, int(y1), int(x1)]
    else:  # a miss click lies inside it
        assert gt[0, 1, int(y1), int(x1)]


def test_training_step_reaches_every_parameter_and_learns() -> None:
    task = _task(prompts_per_image=4, correction_rounds=1)
    groups = task.configure_stage(0)
    data = FamilySceneDataset(length=4, size=128)
    batch = task.collate([data[i] for i in range(4)])
    task.model.train()
    out = task.training_step(batch, 0)
    out["loss"].backward()
    missing = [n for n, p in task.model.named_parameters() if p.grad is None]
    # The prompt encoder's `not_a_point_embed` only serves padding points, which this recipe
    # never uses.
    assert all("not_a_point" in n for n in missing), missing
    opt = torch.optim.AdamW(groups, lr=3e-3)
    first = float(out["loss"])
    torch.manual_seed(1)
    for _ in range(25):
        opt.zero_grad()
        loss = task.training_step(batch, 0)["loss"]
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first


def test_quality_measures_on_an_oracle() -> None:
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 5:16, 5:26] = True
    masks[1, 20:40, 30:50] = True
    xy = centre_points(masks)
    assert xy[0].tolist() == [15.5, 10.5]  # the middle of an 11 x 21 rectangle
    assert bool(masks[1, int(xy[1, 1]), int(xy[1, 0])])
    ious = mask_iou(masks[:, None], masks[None])
    assert torch.equal(ious, torch.eye(2, dtype=torch.float64))
    m = MeanMetric()
    m.update(torch.tensor([0.5, 1.0]))
    m.update(torch.tensor([0.0]))
    assert m.compute()["mean"] == pytest.approx(0.5)


def test_prompt_quality_and_grid_recall_run_on_a_random_sam() -> None:
    torch.manual_seed(0)
    sam = build_sam_backbone("tiny")
    scene = FamilySceneDataset(("polygons",), length=1, size=128)[0]
    q = prompt_quality(sam, scene.image, scene.masks)
    for v in q.values():
        assert v.shape == (scene.masks.shape[0],) and bool(((v >= 0) & (v <= 1)).all())
    assert bool((q["point_best"] >= q["point_choice"]).all())
    r, s, p = grid_recall(
        sam,
        scene.image,
        scene.masks,
        points_per_side=4,
        pred_iou_thresh=-10.0,
        stability_score_thresh=0.0,
    )
    assert s == scene.masks.shape[0] and 0 <= r <= s and p >= 0


def test_custom_sam_size_is_public() -> None:
    from dataclasses import replace

    spec = replace(SAM_VARIANTS["tiny"], encoder_embed_dim=48, encoder_num_heads=3)
    sam = build_sam_backbone(spec)
    assert sam.image_encoder.patch_embed.proj.out_channels == 48


def test_pretrain_command_writes_weights_recipe_and_report(tmp_path) -> None:
    from samkit.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "sam",
                "--out",
                str(out),
                "--steps",
                "2",
                "--eval-scenes",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((out / "quality.json").read_text())
    assert set(report["in_family"]) >= {"point_best", "point_choice", "box", "grid_recall"}
    assert json.loads((out / "recipe.json").read_text())["steps"] == 2
    import hashlib

    assert (
        hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest() == report["sha256"]
    )
    # The exported float16 weights load into the architecture strictly.
    sam = build_sam_backbone("tiny-synth", checkpoint=out / "weights.safetensors")
    assert sam.prompt_dim == 128
