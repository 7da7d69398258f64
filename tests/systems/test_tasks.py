"""The engine tasks compute what the example scripts compute, and behave as the engine needs.

For each system: `training_step` equals the example's loss on the same batch, `predict` plus the
task's metrics equal the example's `evaluate`, every trainable parameter gets a gradient (DDP
without `find_unused_parameters`), predictions do not depend on the rest of the batch, the task is
a `samkit.engine.task.Task`, and bad vocabularies are clear errors. SSP-SAM encodes each distinct
image of a batch once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from samkit.data.datasets import (
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
    collate_panoptic,
)
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES
from samkit.engine.task import Task
from samkit.losses.referring import ReferringLoss
from samkit.losses.sam_cp import SAMCPLoss
from samkit.losses.sam_mi import SAMMILoss
from samkit.matching import build_patch_targets
from samkit.systems.sam_cp import build_sam_cp
from samkit.systems.sam_cp_task import SAMCPTask
from samkit.systems.sam_mi import build_sam_mi
from samkit.systems.sam_mi_task import SAMMITask
from samkit.systems.ssp_sam import build_ssp_sam
from samkit.systems.ssp_sam_task import SSPSAMTask, distinct_images
from samkit.systems.tasks import TASKS, build_task
from tests._examples import load_example

# the examples' own loops before they called the engine: the reference the tasks must equal
PRE_ENGINE = Path(__file__).parent / "pre_engine_examples"


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _batches(task: Any, ds: Any, size: int) -> Iterator[Any]:
    for start in range(0, len(ds), size):
        yield task.collate([ds[i] for i in range(start, min(start + size, len(ds)))])


def _evaluate(task: Any, ds: Any, batch_size: int) -> dict[str, float]:
    task.model.eval()
    metrics = task.metrics()
    with torch.no_grad():
        for batch in _batches(task, ds, batch_size):
            task.update_metrics(metrics, task.predict(batch), batch)
    return task.summarize(metrics)


def _no_grad_params(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def _check_groups(groups: Sequence[dict[str, Any]], model: torch.nn.Module) -> None:
    """The groups hold exactly the parameters that require grad, each once."""
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- registry


def test_build_task_registry_and_protocol() -> None:
    models = {
        "ssp_sam": build_ssp_sam("tiny"),
        "sam_cp": build_sam_cp("tiny", build_proposer=False),
        "sam_mi": build_sam_mi("tiny"),
    }
    assert set(TASKS) == set(models)
    for name, model in models.items():
        task = build_task(
            name.replace("_", "-"), model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES
        )
        assert isinstance(task, TASKS[name]) and isinstance(task, Task)
        assert task.model is model
    with pytest.raises(ValueError, match="system: expected one of"):
        build_task("mask2former", models["sam_mi"], class_names=CLASS_NAMES)
    with pytest.raises(TypeError, match="model: expected a SAMMI"):
        build_task("sam_mi", models["sam_cp"], class_names=CLASS_NAMES)


# ---------------------------------------------------------------------------- SSP-SAM

SSP_OVERRIDES = {"target_head": True}


@pytest.fixture(scope="module")
def ssp_example() -> Any:
    return load_example("train_ssp_sam", PRE_ENGINE)


@pytest.fixture(scope="module")
def ssp_data() -> SyntheticReferringDataset:
    return SyntheticReferringDataset(num_scenes=3, size=64, split="val", seed=1)


def test_ssp_sam_training_step_equals_example(ssp_example: Any, ssp_data: Any) -> None:
    torch.manual_seed(0)
    model = build_ssp_sam("tiny", **SSP_OVERRIDES)
    task = SSPSAMTask(model, presence_weight=0.5)
    task.configure_stage(0)
    texts = ssp_example.TextCache()
    split = ssp_example.build_split(model, ssp_data, texts, torch.device("cpu"))
    text = texts.build(model, torch.device("cpu"))
    idx = torch.tensor([0, 5, 1, 9, 4])  # scenes 0, 1, 0, 2, 1: repeated images
    model.train()
    torch.manual_seed(1)  # the adapters' dropout draws the same masks in both
    out = ssp_example.run_batch(model, split, text, idx, upsample=False)
    ref = ReferringLoss(presence_weight=0.5)(
        out.low_res_logits.float(),
        split.masks[idx, None].float(),
        out.boxes.float(),
        split.boxes[idx],
        out.target_logits.float(),
        split.has_target[idx],
    )
    torch.manual_seed(1)
    losses = task.training_step(task.collate([ssp_data[int(i)] for i in idx]), 0)
    for key in ("dice", "focal", "l1", "giou", "presence"):
        assert torch.allclose(losses[key], getattr(ref, key), atol=1e-6), key
    assert torch.allclose(losses["loss"], ref.total, atol=1e-5)


def test_ssp_sam_evaluation_equals_example(ssp_example: Any, ssp_data: Any) -> None:
    torch.manual_seed(0)
    model = build_ssp_sam("tiny", has_target_min_fraction=0.0)  # the mask decides: not all empty
    texts = ssp_example.TextCache()
    split = ssp_example.build_split(model, ssp_data, texts, torch.device("cpu"))
    ref = ssp_example.evaluate(model, split, texts.build(model, torch.device("cpu")), 5)
    task = SSPSAMTask(model)
    got = _evaluate(task, ssp_data, 5)
    assert set(got) == set(ref)
    assert all(_close(got[k], ref[k]) for k in ref), (got, ref)
    assert 0 < got["count_target"] < got["count"] == len(ssp_data)


@pytest.mark.parametrize("clip_trainable", ["none", "visual"])
def test_ssp_sam_every_trainable_parameter_gets_a_gradient(
    ssp_data: Any, clip_trainable: str
) -> None:
    model = build_ssp_sam("tiny", target_head=True, clip_trainable=clip_trainable)
    task = SSPSAMTask(model)
    groups = task.configure_stage(0)
    _check_groups(groups, model)
    names = {g["name"] for g in groups}
    assert {"rest", "vl_transformer", "mask_decoder"} <= names
    assert ("clip" in names) == (clip_trainable == "visual")
    model.train()
    task.training_step(task.collate([ssp_data[i] for i in (0, 4, 5)]), 0)["loss"].backward()
    assert _no_grad_params(model) == []


def test_ssp_sam_encodes_each_distinct_image_once(
    ssp_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_ssp_sam("tiny", target_head=True).eval()
    task = SSPSAMTask(model)
    batch = task.collate([ssp_data[i] for i in (0, 1, 4, 2, 8, 5)])  # scenes 0 0 1 0 2 1
    first, inverse = distinct_images(batch.images)
    assert first.tolist() == [0, 2, 4] and inverse.tolist() == [0, 0, 1, 0, 2, 1]
    with torch.no_grad():
        clip, emb = task.encode_images(batch.images)
        ref_clip, ref_emb = model.encode_clip(batch.images), model.sam.encode(batch.images)
    assert torch.allclose(clip.features, ref_clip.features, atol=1e-6)
    assert torch.allclose(clip.cls, ref_clip.cls, atol=1e-6)
    assert torch.allclose(emb.embeddings, ref_emb.embeddings, atol=1e-6)
    assert (emb.input_size, emb.original_size) == (ref_emb.input_size, ref_emb.original_size)

    encoded: dict[str, list[int]] = {"sam": [], "clip": []}
    sam_encode, encode_clip = model.sam.encode, model.encode_clip

    def spy_sam(images: torch.Tensor) -> Any:
        encoded["sam"].append(images.shape[0])
        return sam_encode(images)

    def spy_clip(images: torch.Tensor) -> Any:
        encoded["clip"].append(images.shape[0])
        return encode_clip(images)

    monkeypatch.setattr(model.sam, "encode", spy_sam)
    monkeypatch.setattr(model, "encode_clip", spy_clip)
    with torch.no_grad():
        task.predict(batch)
    task.configure_stage(0)
    model.train()
    task.training_step(batch, 0)
    assert encoded == {"sam": [3, 3], "clip": [3, 3]}


def test_distinct_images_compares_pixels_not_sums() -> None:
    x = torch.rand(3, 8, 8)
    flipped = x.flip(-1)  # same pixel sum, different image
    first, inverse = distinct_images(torch.stack([x, flipped, x.clone(), flipped]))
    assert first.tolist() == [0, 1] and inverse.tolist() == [0, 1, 0, 1]


def test_ssp_sam_prediction_does_not_depend_on_the_batch(ssp_data: Any) -> None:
    model = build_ssp_sam("tiny", has_target_min_fraction=0.0).eval()
    task = SSPSAMTask(model)
    with torch.no_grad():
        together = task.predict(task.collate([ssp_data[i] for i in (0, 4, 5, 8)]))
        alone = task.predict(task.collate([ssp_data[5]]))[0]
    assert torch.equal(together[2].mask, alone.mask)
    assert together[2].has_target == alone.has_target
    assert together[2].mask.shape == (64, 64) and together[2].mask.dtype == torch.bool


# ---------------------------------------------------------------------------- SAM-CP


@pytest.fixture(scope="module")
def cp_example() -> Any:
    return load_example("train_sam_cp", PRE_ENGINE)


@pytest.fixture(scope="module")
def cp_data() -> SyntheticPanopticDataset:
    return SyntheticPanopticDataset(num_scenes=4, size=64, parts=True, split="val")


def _cp_task(model: Any, **options: Any) -> SAMCPTask:
    return SAMCPTask(model, class_names=CLASS_NAMES, num_things=NUM_THING_CLASSES, **options)


def test_sam_cp_training_step_equals_example(cp_example: Any, cp_data: Any) -> None:
    torch.manual_seed(0)
    model = build_sam_cp("tiny", build_proposer=False).train()
    task = _cp_task(model, class_weight=1.5)
    batch = task.collate([cp_data[0], cp_data[2], cp_data[3]])
    patches = cp_example.batch_patches(model, batch, "oracle")
    targets = [
        build_patch_targets(
            p,
            batch.segment_masks[b],
            batch.segment_classes[b],
            num_things=NUM_THING_CLASSES,
            num_stuff=cp_example.NUM_STUFF,
        )
        for b, p in enumerate(patches)
    ]
    torch.manual_seed(1)
    ref = SAMCPLoss(class_weight=1.5)(model(batch.images, patches), targets)
    torch.manual_seed(1)
    got = task.training_step(batch, 0)
    assert set(got) == set(ref)
    for key in ref:
        assert torch.allclose(got[key], ref[key], atol=1e-6), key


def test_sam_cp_evaluation_equals_example(cp_example: Any, cp_data: Any) -> None:
    torch.manual_seed(0)
    # low thresholds: the random model keeps segments, so the metrics are not all zero
    model = build_sam_cp(
        "tiny", build_proposer=False, object_mask_threshold=0.0, affinity_threshold=0.0
    )
    loader = DataLoader(cp_data, batch_size=3, collate_fn=collate_panoptic)
    ref = cp_example.evaluate(model, loader, torch.device("cpu"), "oracle")
    got = _evaluate(_cp_task(model), cp_data, 3)
    names = {"miou": "mIoU"}
    for key, value in ref.items():
        assert _close(got[names.get(key, key)], value), (key, got, ref)
    assert got["mask_ap"] > 0  # (PQ and mIoU of the untrained model are 0 in both)


def test_sam_cp_every_trainable_parameter_gets_a_gradient(cp_data: Any) -> None:
    model = build_sam_cp("tiny", build_proposer=False).train()
    task = _cp_task(model)
    groups = task.configure_stage(0)
    _check_groups(groups, model)
    task.training_step(task.collate([cp_data[0], cp_data[1]]), 0)["loss"].backward()
    assert _no_grad_params(model) == []


def test_sam_cp_prediction_does_not_depend_on_the_batch(cp_data: Any) -> None:
    model = build_sam_cp(
        "tiny", build_proposer=False, object_mask_threshold=0.0, affinity_threshold=0.0
    ).eval()
    task = _cp_task(model)
    together = task.predict(task.collate([cp_data[0], cp_data[1], cp_data[2]]))[1]
    alone = task.predict(task.collate([cp_data[1]]))[0]
    assert torch.equal(together.panoptic, alone.panoptic)
    assert torch.equal(together.semantic, alone.semantic)
    assert torch.equal(together.instance_masks, alone.instance_masks)
    assert len(together.segments) == len(alone.segments) > 0
    for a, b in zip(together.segments, alone.segments, strict=True):
        assert {**a, "score": 0} == {**b, "score": 0}
        assert math.isclose(a["score"], b["score"], abs_tol=1e-6)


def test_sam_cp_uses_the_task_vocabulary(cp_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_sam_cp("tiny", build_proposer=False).eval()
    names = ("disc", "box", "wedge", "star", "lawn", "air", "lake", "beach", "brick")
    seen: list[tuple[str, ...]] = []
    embed = model.text_embeddings

    def spy(class_names: Sequence[str]) -> torch.Tensor:
        seen.append(tuple(class_names))
        return embed(class_names)

    monkeypatch.setattr(model, "text_embeddings", spy)
    task = SAMCPTask(model, class_names=names, num_things=4)
    task.predict(task.collate([cp_data[0]]))
    assert seen and set(seen) == {names}


def test_sam_cp_vocabulary_errors(cp_data: Any) -> None:
    model = build_sam_cp("tiny", build_proposer=False)
    with pytest.raises(ValueError, match="distinct class names"):
        SAMCPTask(model, class_names=["a", "b", "a"], num_things=1)
    with pytest.raises(ValueError, match=r"num_things: expected 0..2"):
        SAMCPTask(model, class_names=["a", "b"], num_things=3)
    with pytest.raises(ValueError, match="config's, which has 4 thing classes"):
        SAMCPTask(model, class_names=CLASS_NAMES, num_things=2)
    with pytest.raises(ValueError, match="give num_things"):
        SAMCPTask(model, class_names=["a", "b"])
    with pytest.raises(ValueError, match="build_proposer=True"):
        _cp_task(model, patches="sam")
    with pytest.raises(ValueError, match="patches: expected"):
        _cp_task(model, patches="slic")
    small = SAMCPTask(model, class_names=["circle", "grass"], num_things=1)
    with pytest.raises(
        ValueError, match=r"segment_classes\[0\]: expected class indices in \[0, 2\)"
    ):
        small.training_step(small.collate([cp_data[0]]), 0)
    no_parts = SyntheticPanopticDataset(num_scenes=1, size=64)
    with pytest.raises(ValueError, match="no part masks and the model no SAM proposer"):
        _cp_task(model).predict(collate_panoptic([no_parts[0]]))


# ---------------------------------------------------------------------------- SAM-MI


@pytest.fixture(scope="module")
def mi_example() -> Any:
    return load_example("train_sam_mi", PRE_ENGINE)


@pytest.fixture(scope="module")
def mi_data() -> SyntheticSemanticDataset:
    return SyntheticSemanticDataset(num_scenes=3, size=32, split="val", seed=0)


@pytest.mark.parametrize("stage", [0, 1])
def test_sam_mi_training_step_equals_example(mi_example: Any, mi_data: Any, stage: int) -> None:
    torch.manual_seed(0)
    model = build_sam_mi("tiny")
    task = SAMMITask(model, class_names=CLASS_NAMES)
    task.configure_stage(stage)
    model.train()
    data = mi_example.load_split("val", 3, 32, 0)
    crit = SAMMILoss(g_p=model.config.g_p, m_p=model.config.m_p)
    torch.manual_seed(1)
    if stage == 0:
        ref = crit(model.prompter(data.images, data.class_names), data.labels, stage=1)
    else:
        ref = crit(model(data.images, data.class_names), data.labels, stage=2)
    torch.manual_seed(1)
    got = task.training_step(task.collate([mi_data[i] for i in range(3)]), stage)
    assert torch.allclose(got["loss"], ref, atol=1e-6)


def test_sam_mi_evaluation_equals_example(mi_example: Any, mi_data: Any) -> None:
    torch.manual_seed(0)
    model = build_sam_mi("tiny")
    ref = mi_example.evaluate(model, mi_example.load_split("val", 3, 32, 0), 2, torch.device("cpu"))
    got = _evaluate(SAMMITask(model, class_names=CLASS_NAMES), mi_data, 2)
    names = {"miou": "mIoU", "pixel_acc": "aAcc"}
    for key, value in ref.items():
        assert _close(got[names.get(key, key)], value), (key, got, ref)
    assert got["segments"] > 0 and got["points_per_image"] > 0


@pytest.mark.parametrize("clip_finetune", ["all", "attention_qv"])
def test_sam_mi_every_trainable_parameter_gets_a_gradient(mi_data: Any, clip_finetune: str) -> None:
    model = build_sam_mi("tiny", clip_finetune=clip_finetune)
    task = SAMMITask(model, class_names=CLASS_NAMES)
    batch = task.collate([mi_data[0], mi_data[1]])
    for stage, name in enumerate(task.stages):
        groups = task.configure_stage(stage)
        _check_groups(groups, model)
        assert all(g["weight_decay"] == model.config.weight_decay for g in groups)
        assert ("clip" in {g["name"] for g in groups}) == (name == "full")
        model.zero_grad(set_to_none=True)
        model.train()
        task.training_step(batch, stage)["loss"].backward()
        assert _no_grad_params(model) == [], name
    assert not model.clip.model.logit_scale.requires_grad


def test_sam_mi_prediction_does_not_depend_on_the_batch(mi_data: Any) -> None:
    model = build_sam_mi("tiny").eval()  # seeded Bernoulli point sampling
    task = SAMMITask(model, class_names=CLASS_NAMES)
    with torch.no_grad():
        together = task.predict(task.collate([mi_data[0], mi_data[1], mi_data[2]]))
        alone = task.predict(task.collate([mi_data[2]]))[0]
    assert torch.equal(together[2].points, alone.points)
    assert torch.equal(together[2].semantic, alone.semantic)
    assert together[2].semantic.shape == (32, 32)


def test_sam_mi_stages_without_a_prompter() -> None:
    model = build_sam_mi("tiny", prompting="grid", use_smagg=False)
    task = SAMMITask(model, class_names=CLASS_NAMES)
    assert task.stages == ("full",)
    assert "tspp" not in {g["name"] for g in task.configure_stage(0)}
    with pytest.raises(ValueError, match="stage: expected 0..0"):
        task.configure_stage(1)


def test_sam_mi_uses_the_task_vocabulary(mi_data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_sam_mi("tiny").eval()
    names = ("sky", "grass", "circle")
    seen: list[tuple[str, ...]] = []
    encode = model.encode_text

    def spy(class_names: Sequence[str]) -> torch.Tensor:
        seen.append(tuple(class_names))
        return encode(class_names)

    monkeypatch.setattr(model, "encode_text", spy)
    task = SAMMITask(model, class_names=names)
    batch = task.collate([mi_data[0]])
    assert batch.class_names == names
    with torch.no_grad():
        pred = task.predict(batch)[0]
    assert set(seen) == {names}
    assert int(pred.semantic.max()) < len(names)


def test_sam_mi_vocabulary_errors(mi_data: Any) -> None:
    model = build_sam_mi("tiny")
    with pytest.raises(ValueError, match="distinct class names"):
        SAMMITask(model, class_names=["sky", "sky"])
    with pytest.raises(ValueError, match="class_names"):
        SAMMITask(model, class_names=[])
    with pytest.raises(ValueError, match=r"num_things: expected 0..2"):
        SAMMITask(model, class_names=["sky", "sea"], num_things=5)
    small = SAMMITask(model, class_names=["circle", "square"])
    with pytest.raises(ValueError, match=r"batch.semantic: expected labels in \[0, 2\)"):
        small.training_step(small.collate([mi_data[0]]), 0)
    other = SAMMITask(model, class_names=CLASS_NAMES).collate([mi_data[0]])
    with pytest.raises(ValueError, match="batch.class_names: expected the task's 2 classes"):
        small.training_step(other, 1)


def test_sam_cp_crowd_segments_are_no_targets_and_crowd_flags_reach_mask_ap(
    cp_data: Any,
) -> None:
    import dataclasses

    torch.manual_seed(0)
    model = build_sam_cp(
        "tiny", build_proposer=False, object_mask_threshold=0.0, affinity_threshold=0.0
    )
    task = _cp_task(model)
    batch = task.collate([cp_data[0], cp_data[1]])
    # the data readers' Segment has `iscrowd`; mark segment 0 of image 0 as a crowd
    segments = [list(s) for s in batch.segments]
    segments[0][0] = dataclasses.replace(segments[0][0], iscrowd=True)
    crowd = dataclasses.replace(batch, segments=segments)
    without = dataclasses.replace(
        batch,
        segments=[segments[0][1:], segments[1]],
        segment_masks=[batch.segment_masks[0][1:], batch.segment_masks[1]],
        segment_classes=[batch.segment_classes[0][1:], batch.segment_classes[1]],
    )
    model.train()
    torch.manual_seed(1)
    got = task.training_step(crowd, 0)["loss"]
    torch.manual_seed(1)
    ref = task.training_step(without, 0)["loss"]
    assert torch.allclose(got, ref, atol=1e-6)

    model.eval()
    preds = task.predict(batch)
    plain, flagged = task.metrics(), task.metrics()
    task.update_metrics(plain, preds, batch)
    batch.instance_iscrowd = [torch.ones(len(m), dtype=torch.bool) for m in batch.instance_masks]  # type: ignore[attr-defined]
    task.update_metrics(flagged, preds, batch)
    assert task.summarize(plain)["mask_ap"] > 0
    assert task.summarize(flagged)["mask_ap"] == -1.0  # every ground truth is a crowd
