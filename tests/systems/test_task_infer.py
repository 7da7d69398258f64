"""`task.infer(images)` (what `samkit predict` runs on image files) equals `task.predict(batch)`.

SAM-CP's `predict` uses the batch's patches; its `infer` asks the SAM proposer, so the
comparison uses a batch without part masks (the proposer's patches in both).
"""

from __future__ import annotations

import pytest
import torch

from samkit.data.datasets import (
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
)
from samkit.data.synthetic import CLASS_NAMES, NUM_THING_CLASSES
from samkit.systems.tasks import build_task

SIZE = 48


def _task_and_batch(system: str) -> tuple[object, object]:
    from samkit.systems import build_system

    torch.manual_seed(0)
    kw = {"size": SIZE, "seed": 3, "split": "val"}
    if system == "ssp_sam":
        ds = SyntheticReferringDataset(num_scenes=2, **kw)
        model = build_system("ssp_sam", "tiny").eval()
        task = build_task(system, model, class_names=None)
    elif system == "sam_cp":
        ds = SyntheticPanopticDataset(num_scenes=2, **kw)
        model = build_system("sam_cp", "tiny", points_per_side=4).eval()
        task = build_task(
            system, model, class_names=list(CLASS_NAMES), num_things=NUM_THING_CLASSES
        )
    else:
        ds = SyntheticSemanticDataset(num_scenes=2, **kw)
        model = build_system("sam_mi", "tiny").eval()
        task = build_task(system, model, class_names=list(CLASS_NAMES))
    batch = task.collate([ds[i] for i in range(2)])  # type: ignore[attr-defined]
    return task, batch


@pytest.mark.parametrize("system", ["ssp_sam", "sam_cp", "sam_mi"])
def test_infer_equals_predict(system: str) -> None:
    task, batch = _task_and_batch(system)
    texts = getattr(batch, "texts", None)
    with torch.no_grad():
        expected = task.predict(batch)  # type: ignore[attr-defined]
        got = task.infer(batch.images, texts=texts)  # type: ignore[attr-defined]
    assert len(got) == len(expected) == 2
    for g, e in zip(got, expected, strict=True):
        if system == "ssp_sam":
            assert torch.equal(g.mask, e.mask) and g.has_target == e.has_target
        else:
            assert torch.equal(g.semantic, e.semantic)
        if system == "sam_cp":
            assert torch.equal(g.panoptic, e.panoptic)
            assert torch.equal(g.instance_masks, e.instance_masks)


@pytest.mark.parametrize("system", ["ssp_sam", "sam_cp", "sam_mi"])
def test_infer_rejects_wrong_texts(system: str) -> None:
    task, batch = _task_and_batch(system)
    with pytest.raises(ValueError, match="texts"):
        if system == "ssp_sam":
            task.infer(batch.images, texts=["only one"])  # type: ignore[attr-defined]
        else:
            task.infer(batch.images, texts=["a", "b"])  # type: ignore[attr-defined]


def test_sam_cp_trains_on_an_image_where_the_proposer_finds_nothing() -> None:
    """Real data with SAM patches: an image may get no patch at all (regression: IndexError)."""
    from samkit.proposals import patches_from_masks
    from samkit.types import Patches

    task, batch = _task_and_batch("sam_cp")
    empty = Patches(torch.zeros(0, SIZE, SIZE, dtype=torch.bool), torch.zeros(0, 4), torch.zeros(0))
    parts = patches_from_masks(batch.segment_masks[1])  # type: ignore[attr-defined]
    task.patches = lambda b: [empty, parts]  # type: ignore[attr-defined]
    task.model.train()  # type: ignore[attr-defined]
    losses = task.training_step(batch, 0)  # type: ignore[attr-defined]
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
