"""Scene families for pretraining: determinism, annotations, and the held-out split."""

from __future__ import annotations

import pytest
import torch

from samkit.data import scenes
from samkit.data.scenes import (
    HELDOUT_FAMILY,
    PRETRAIN_FAMILIES,
    SCENE_FAMILIES,
    generate_family_scene,
    generate_object_crop,
)
from samkit.data.synthetic import COLOR_NAMES, THING_CLASSES


@pytest.mark.parametrize("family", SCENE_FAMILIES)
def test_family_scenes_are_deterministic_and_fully_annotated(family: str) -> None:
    for seed in (0, 7, 123):
        a = generate_family_scene(family, seed, size=96)
        b = generate_family_scene(family, seed, size=96)
        assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
        assert a.image.shape == (3, 96, 96) and a.image.dtype == torch.float32
        assert 0.0 <= float(a.image.min()) and float(a.image.max()) <= 1.0
        # Disjoint, non-empty segments, things first.
        assert int(a.masks.sum(0).max()) <= 1
        assert bool((a.masks.flatten(1).sum(1) >= 12).all())
        things = a.is_thing.tolist()
        assert things == sorted(things, reverse=True)
        # Almost every pixel belongs to a segment (only sub-12-pixel slivers are dropped).
        assert float(a.masks.any(0).float().mean()) > 0.97
    assert not torch.equal(
        generate_family_scene(family, 1, size=64).image,
        generate_family_scene(family, 2, size=64).image,
    )


def test_heldout_family_is_not_pretrained_on_and_looks_different() -> None:
    assert HELDOUT_FAMILY in SCENE_FAMILIES and HELDOUT_FAMILY not in PRETRAIN_FAMILIES
    held, train = scenes._STYLES[HELDOUT_FAMILY], scenes._STYLES["polygons"]
    assert not set(held.shapes) & set(train.shapes)
    assert not set(held.textures) & set(train.textures)
    assert held.layout != train.layout
    # Its objects are pastel: low saturation, high value, unlike any pretraining palette.
    assert held.object_sat[1] <= train.object_sat[0]


def test_polygon_scenes_are_varied() -> None:
    counts = [int(generate_family_scene("polygons", s, size=96).is_thing.sum()) for s in range(40)]
    assert min(counts) <= 2 and max(counts) >= 7  # from sparse scenes to clutter
    areas = torch.cat(
        [
            generate_family_scene("polygons", s, size=96).masks.flatten(1).sum(1).float()
            for s in range(40)
        ]
    )
    assert float(areas.min()) < 60 and float(areas.max()) > 2000  # tiny to large


def test_object_crops_respect_the_allowed_combinations() -> None:
    allowed = frozenset({("red", "circle"), ("blue", "star")})
    names = {
        generate_object_crop(s, size=32, allowed=allowed, stuff_fraction=0.0).name
        for s in range(60)
    }
    assert names == {"red circle", "blue star"}
    crop = generate_object_crop(5, size=48, stuff_fraction=0.0)
    assert crop.color in COLOR_NAMES and crop.shape in THING_CLASSES
    assert crop.mask.shape == (48, 48) and 0 < int(crop.mask.sum()) < 48 * 48
    # The object's pixels carry its colour.
    from samkit.data.synthetic import COLORS

    mean = crop.image[:, crop.mask].mean(1)
    assert torch.allclose(mean, torch.tensor(COLORS[crop.color]), atol=0.08)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"family": "nope", "seed": 0}, "family"),
        ({"family": "polygons", "seed": -1}, "seed"),
        ({"family": "polygons", "seed": 0, "size": 8}, "size"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_family_scene(**kwargs)


def test_bad_crop_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="allowed"):
        generate_object_crop(0, allowed=frozenset({("red", "hexagon")}))
    with pytest.raises(ValueError, match="stuff_fraction"):
        generate_object_crop(0, stuff_fraction=2.0)
