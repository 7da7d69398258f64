"""BatchAugment: one random transform per sample, on the image and every label, labels exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

from samkit.data import (
    AUGMENT_PRESETS,
    AugmentSpec,
    BatchAugment,
    PanopticBatch,
    SemanticBatch,
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    collate_panoptic,
    collate_referring,
)
from samkit.data.augment import swap_left_right

PRESETS = sorted(AUGMENT_PRESETS)


def _painted_batch(b: int = 6, seed: int = 0) -> SemanticBatch:
    """Blocky label maps with 3 classes and images whose channel k is the indicator of class k."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 3, (b, 6, 8), generator=g)
    labels = blocks.repeat_interleave(6, 1).repeat_interleave(5, 2)  # (b, 36, 40)
    images = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    return SemanticBatch(
        images=images, semantic=labels, class_names=("a", "b", "c"), scene_seeds=[0] * b
    )


def _panoptic_batch(n: int = 3) -> PanopticBatch:
    ds = SyntheticPanopticDataset(num_scenes=n, size=48, parts=True, seed=2)
    return collate_panoptic([ds[i] for i in range(n)])


def _no_jitter(preset: str) -> AugmentSpec:
    return dataclasses.replace(AUGMENT_PRESETS[preset], jitter=0.0)


@pytest.mark.parametrize("preset", PRESETS)
def test_labels_stay_aligned_with_the_image(preset: str) -> None:
    """Bilinear image, nearest labels: a pixel > 3/4 of class k's channel is labelled k."""
    batch = _painted_batch()
    augment = BatchAugment(_no_jitter(preset))
    moved = checked = 0
    for seed in range(3):
        torch.manual_seed(seed)
        out = augment(batch)
        assert out.semantic.dtype == batch.semantic.dtype
        strong, winner = out.images.max(1)
        valid = out.semantic != 255
        sure = (strong > 0.75) & valid
        assert torch.equal(out.semantic[sure], winner[sure])
        checked += int(sure.sum())
        moved += int((~torch.isclose(out.images, batch.images)).flatten(1).any(1).sum())
    assert checked > 0.6 * 3 * batch.semantic.numel()  # most pixels are checked
    assert moved >= 6  # the transform did move the images (and so the labels with them)


@pytest.mark.parametrize("preset", ["default", "affine"])
def test_photometric_jitter_touches_images_only(preset: str) -> None:
    batch = _painted_batch()
    torch.manual_seed(7)
    plain = BatchAugment(_no_jitter(preset))(batch)
    torch.manual_seed(7)
    jittered = BatchAugment(preset)(batch)  # the jitter draws after the geometry
    assert torch.equal(plain.semantic, jittered.semantic)
    assert not torch.allclose(plain.images, jittered.images)
    assert 0.0 <= float(jittered.images.min()) and float(jittered.images.max()) <= 1.0


def test_warps_make_void_and_crops_do_not() -> None:
    batch = _panoptic_batch()
    labels = set(batch.semantic.unique().tolist())
    ids = set(batch.panoptic.unique().tolist())
    assert 255 not in labels and 0 not in ids  # synthetic scenes have no void
    for preset in PRESETS:
        torch.manual_seed(1)
        out = BatchAugment(preset)(batch)
        got_labels = set(out.semantic.unique().tolist())
        got_ids = set(out.panoptic.unique().tolist())
        assert got_labels <= labels | {255} and got_ids <= ids | {0}
        assert out.semantic.dtype == batch.semantic.dtype
        assert out.panoptic.dtype == batch.panoptic.dtype
        void = out.semantic == 255
        assert torch.equal(void, out.panoptic == 0)  # both maps agree on the void pixels
        assert bool(void.any()) == (preset == "affine")


@pytest.mark.parametrize("preset", PRESETS)
def test_panoptic_annotations_stay_consistent(preset: str) -> None:
    batch = _panoptic_batch()
    torch.manual_seed(3)
    out = BatchAugment(preset)(batch)
    assert not torch.equal(out.panoptic, batch.panoptic)
    for b in range(len(out.segments)):
        pan, sem, masks = out.panoptic[b], out.semantic[b], out.segment_masks[b]
        assert masks.dtype == torch.bool and len(masks) == len(batch.segment_masks[b])
        for k, seg in enumerate(out.segments[b]):
            assert torch.equal(masks[k], pan == seg.id)
            assert seg.area == int(masks[k].sum())
            assert (sem[masks[k]] == seg.category_id).all()
            if seg.instance >= 0:
                inst = out.instance_masks[b][seg.instance]
                before = batch.instance_masks[b][seg.instance]
                assert inst.dtype == torch.bool
                # the relation between instance and segment holds after as it held before
                assert torch.equal(before, batch.segment_masks[b][k]) == torch.equal(inst, masks[k])
        parts, parents = out.part_masks[b], out.part_parents[b]
        assert len(parts) == len(parents) and parts.flatten(1).any(1).all()  # no empty part
        for part, parent in zip(parts, parents.tolist(), strict=True):
            assert not (part & ~masks[parent]).any()  # a part stays inside its segment
        # no non-empty part was dropped: the parts still cover the segments
        assert torch.equal(parts.any(0), masks.any(0))


def test_crops_drop_parts_that_leave_the_image() -> None:
    batch = _panoptic_batch()
    spec = AugmentSpec(hflip=0.0, crop_scale=(0.1, 0.1))  # small crops lose some parts
    torch.manual_seed(0)
    out = BatchAugment(spec)(batch)
    assert sum(len(p) for p in out.part_masks) < sum(len(p) for p in batch.part_masks)
    assert any(s.area == 0 for segs in out.segments for s in segs)  # segments are kept


def test_each_sample_gets_its_own_transform() -> None:
    one = _panoptic_batch(1)
    batch = collate_panoptic(
        [SyntheticPanopticDataset(num_scenes=1, size=48, parts=True, seed=2)[0] for _ in range(8)]
    )
    assert torch.equal(batch.panoptic[0], one.panoptic[0])
    torch.manual_seed(0)
    out = BatchAugment("default")(batch)
    distinct = {tuple(p.flatten().tolist()) for p in out.panoptic}
    assert len(distinct) == 8


def test_same_seed_same_result_other_seed_other_result() -> None:
    batch = _panoptic_batch()
    augment = BatchAugment("affine")
    results = []
    for seed in (4, 4, 5):
        torch.manual_seed(seed)
        results.append(augment(batch))
    a, b, c = results
    assert torch.equal(a.images, b.images) and torch.equal(a.panoptic, b.panoptic)
    assert all(torch.equal(x, y) for x, y in zip(a.segment_masks, b.segment_masks, strict=True))
    assert not torch.equal(a.panoptic, c.panoptic)


def _referring_batch() -> tuple[SyntheticReferringDataset, list[int]]:
    ds = SyntheticReferringDataset(num_scenes=3, size=40, seed=3, expressions_per_scene=4)
    return ds, list(range(len(ds)))


def test_referring_flip_moves_masks_boxes_and_words() -> None:
    ds, items = _referring_batch()
    batch = collate_referring([ds[i] for i in items])
    out = BatchAugment(AugmentSpec(hflip=1.0))(batch)
    assert torch.equal(out.images, batch.images.flip(-1))
    assert torch.equal(out.target_masks, batch.target_masks.flip(-1))
    for before, after in zip(batch.instance_masks, out.instance_masks, strict=True):
        assert torch.equal(after, before.flip(-1))
    for i in range(len(items)):
        if batch.has_target[i]:
            want = masks_to_boxes(out.target_masks[i][None])[0]
            assert torch.equal(out.target_boxes[i], want)
        else:
            assert not out.target_boxes[i].any()
    assert out.texts == [swap_left_right(t) for t in batch.texts]
    spatial = [t for t in batch.texts if "leftmost" in t or "rightmost" in t]
    assert spatial, "the synthetic expressions should include left/right ones"
    assert out.kinds == batch.kinds and torch.equal(out.has_target, batch.has_target)


def test_referring_gets_no_crop_and_one_transform_per_image() -> None:
    ds, items = _referring_batch()
    batch = collate_referring([ds[i] for i in items])
    torch.manual_seed(0)
    out = BatchAugment(_no_jitter("affine"))(batch)
    flipped = []
    for i in range(len(items)):
        mirrored = torch.equal(out.images[i], batch.images[i].flip(-1))
        assert mirrored != torch.equal(out.images[i], batch.images[i])  # flip only: no warp
        want = batch.target_masks[i].flip(-1) if mirrored else batch.target_masks[i]
        assert torch.equal(out.target_masks[i], want)
        assert out.texts[i] == (swap_left_right(batch.texts[i]) if mirrored else batch.texts[i])
        flipped.append(mirrored)
    assert flipped == [f for f in flipped[::4] for _ in range(4)]  # per scene, not per text
    assert any(flipped) and not all(flipped)
    torch.manual_seed(0)
    out = BatchAugment("affine")(batch)
    for scene in range(3):  # the 4 expressions of a scene share their (jittered) image
        group = out.images[4 * scene : 4 * scene + 4]
        assert all(torch.equal(group[0], g) for g in group[1:])
    distinct = {tuple(im.flatten().tolist()) for im in out.images}
    assert len(distinct) == 3


def test_uint8_images_keep_their_dtype() -> None:
    batch = _painted_batch()
    batch = dataclasses.replace(batch, images=(batch.images * 255).to(torch.uint8))
    torch.manual_seed(0)
    out = BatchAugment(AugmentSpec(hflip=1.0))(batch)
    assert out.images.dtype == torch.uint8
    assert torch.equal(out.images, batch.images.flip(-1))
    torch.manual_seed(0)
    out = BatchAugment("default")(batch)
    assert out.images.dtype == torch.uint8 and out.images.shape == batch.images.shape


def test_swap_left_right() -> None:
    assert swap_left_right("the leftmost star") == "the rightmost star"
    assert (
        swap_left_right("Right of the LEFT cube, left-hand") == "Left of the RIGHT cube, right-hand"
    )
    assert swap_left_right("leftover righteous rights") == "leftover righteous rights"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="spec: expected one of"):
        BatchAugment("strong")
    with pytest.raises(TypeError, match="spec"):
        BatchAugment(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ReferringBatch, PanopticBatch or SemanticBatch"):
        BatchAugment("flip")((torch.zeros(1, 3, 4, 4), torch.zeros(1)))  # type: ignore[type-var]
    with pytest.raises(ValueError, match=r"batch.images: expected \(B, 3, H, W\)"):
        BatchAugment("flip")(dataclasses.replace(_painted_batch(), images=torch.zeros(6, 36, 40)))
    with pytest.raises(ValueError, match="batch.semantic"):
        BatchAugment("flip")(dataclasses.replace(_painted_batch(), semantic=torch.zeros(6, 4, 4)))
    for bad, name in [
        (dict(hflip=1.5), "hflip"),
        (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
        (dict(crop_ratio=(2.0, 1.0)), "crop_ratio"),
        (dict(degrees=-1.0), "degrees"),
        (dict(translate=1.0), "translate"),
        (dict(scale=(1.2, 0.8)), "scale"),
        (dict(jitter=1.0), "jitter"),
    ]:
        with pytest.raises(ValueError, match=name):
            AugmentSpec(**bad)  # type: ignore[arg-type]
