"""The size transform keeps masks aligned with the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from samkit.data import SyntheticPanopticDataset, SyntheticReferringDataset, resize_sample
from samkit.data.transforms import resize_image, resize_labels, resized_shape


def test_resized_shape() -> None:
    assert resized_shape(480, 640, 128) == (96, 128)
    assert resized_shape(37, 53, 29) == (20, 29)
    assert resized_shape(1, 500, 10) == (1, 10)
    with pytest.raises(ValueError, match="size"):
        resized_shape(4, 4, 0)


def test_labels_sample_pixel_centres_like_nearest_exact() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (37, 53), generator=g)
    for size in (29, 64, 100):
        h, w = resized_shape(37, 53, size)
        ref = F.interpolate(labels[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0]
        out = resize_labels(labels, size, fill=255)
        assert out.shape == (size, size)
        assert torch.equal(out[:h, :w], ref.long())
        assert (out[h:] == 255).all() and (out[:, w:] == 255).all()


def test_image_and_masks_stay_aligned() -> None:
    """An image painted from a label map, resized, still shows the resized label map."""
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 3, (6, 9), generator=g)
    labels = blocks.repeat_interleave(7, 0).repeat_interleave(6, 1)  # (42, 54) blocky map
    image = F.one_hot(labels, 3).permute(2, 0, 1).float()
    for size in (23, 40, 81):
        img = resize_image(image, size)
        lab = resize_labels(labels, size, fill=-1)
        h, w = resized_shape(42, 54, size)
        # pixels whose 3x3 neighbourhood has one label show that label as the brightest channel
        pad = F.pad(lab[None, None].float(), (1, 1, 1, 1), value=-2.0)
        nb = F.unfold(pad, 3)[0].view(9, size, size)
        interior = (nb == lab[None]).all(0) & (lab >= 0)
        assert interior.sum() > 0.15 * h * w
        assert torch.equal(img.argmax(0)[interior], lab[interior])
        assert (img[:, h:] == 0).all() and (img[:, :, w:] == 0).all()


def test_panoptic_sample() -> None:
    s = SyntheticPanopticDataset(num_scenes=1, size=(40, 56), parts=True)[0]
    r = resize_sample(s, 32)
    ids = torch.tensor([g.id for g in r.segments])
    assert torch.equal(r.segment_masks, r.panoptic[None] == ids[:, None, None])
    assert [g.area for g in r.segments] == r.segment_masks.flatten(1).sum(1).tolist()
    assert (r.semantic[23:] == 255).all() and (r.panoptic[23:] == 0).all()
    assert r.part_masks is not None and r.part_masks.shape[1:] == (32, 32)
    for m, c in zip(r.instance_masks, r.instance_classes, strict=True):
        assert (r.semantic[m] == c).all()


def test_referring_sample_union_commutes() -> None:
    ds = SyntheticReferringDataset(num_scenes=2, size=48)
    for i in range(len(ds)):
        s = ds[i]
        r = resize_sample(s, 20)
        union = (
            r.instance_masks[s.target_ids].any(0)
            if s.target_ids
            else torch.zeros(20, 20, dtype=torch.bool)
        )
        assert torch.equal(r.target_mask, union)
        if r.target_mask.any():
            ys, xs = torch.nonzero(r.target_mask, as_tuple=True)
            assert r.target_box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
