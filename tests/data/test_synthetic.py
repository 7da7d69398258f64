from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage
from torch.utils.data import DataLoader

from samkit.data.datasets import (
    SPLIT_OFFSETS,
    SyntheticPanopticDataset,
    SyntheticReferringDataset,
    SyntheticSemanticDataset,
    collate_panoptic,
    collate_referring,
    collate_semantic,
)
from samkit.data.synthetic import (
    CLASS_NAMES,
    COLOR_NAMES,
    COLORS,
    EXPRESSION_KINDS,
    NUM_CLASSES,
    NUM_THING_CLASSES,
    PLURALS,
    STUFF_CLASSES,
    STUFF_STYLES,
    TEXTURES,
    THING_CLASSES,
    VOCABULARY,
    Scene,
    generate_scene,
    oversegment,
)

SEEDS = st.integers(min_value=0, max_value=10**6)
SIZES = st.one_of(
    st.integers(min_value=16, max_value=80),
    st.tuples(st.integers(min_value=16, max_value=64), st.integers(min_value=16, max_value=64)),
)
SINGULAR = {v: k for k, v in PLURALS.items()}


def _centroids_areas(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    m = scene.instance_masks.numpy()
    areas = m.reshape(len(m), -1).sum(1).astype(np.float64)
    ys, xs = np.mgrid[0 : m.shape[1], 0 : m.shape[2]]
    cx = (m * xs).reshape(len(m), -1).sum(1) / areas
    cy = (m * ys).reshape(len(m), -1).sum(1) / areas
    return np.stack([cx, cy], 1), areas


def _interpret(text: str, scene: Scene) -> list[int]:
    """An independent reading of an expression: the instances it refers to."""
    words = text.split()
    kinds = [CLASS_NAMES[int(k)] for k in scene.instance_classes]
    colors = [COLOR_NAMES[int(c)] for c in scene.instance_colors]
    everyone = list(range(scene.num_instances))
    if words[0] == "all":
        if words[1:] == ["shapes"]:
            return everyone
        if len(words) == 3:
            assert words[2] == "shapes"
            return [i for i in everyone if colors[i] == words[1]]
        return [i for i in everyone if kinds[i] == SINGULAR[words[1]]]
    assert words[0] == "the"
    if len(words) == 2:
        return [i for i in everyone if kinds[i] == words[1]]
    adjective, noun = words[1], words[2]
    if adjective in COLOR_NAMES:
        return [i for i in everyone if kinds[i] == noun and colors[i] == adjective]
    group = [i for i in everyone if noun == "shape" or kinds[i] == noun]
    centroids, areas = _centroids_areas(scene)
    key = {
        "leftmost": lambda i: centroids[i, 0],
        "rightmost": lambda i: -centroids[i, 0],
        "topmost": lambda i: centroids[i, 1],
        "bottommost": lambda i: -centroids[i, 1],
        "smallest": lambda i: areas[i],
        "largest": lambda i: -areas[i],
    }[adjective]
    return [min(group, key=key)]


def _check_scene_invariants(scene: Scene) -> None:
    H, W = scene.size
    inst = scene.instance_masks
    assert inst.dtype == torch.bool and inst.shape[1:] == (H, W)
    # instance masks are disjoint and none is empty
    assert int(inst.sum(0).max()) <= 1 if len(inst) else True
    assert bool(inst.flatten(1).any(1).all())
    # semantic: fully labelled; thing pixels are exactly the instances, with their class
    sem = scene.semantic
    assert sem.shape == (H, W) and sem.dtype == torch.long
    assert int(sem.min()) >= 0 and int(sem.max()) < NUM_CLASSES
    union = inst.any(0) if len(inst) else torch.zeros(H, W, dtype=torch.bool)
    assert torch.equal(sem < NUM_THING_CLASSES, union)
    for m, k in zip(inst, scene.instance_classes, strict=True):
        assert int(k) < NUM_THING_CLASSES
        assert bool((sem[m] == k).all())
    # panoptic: ids match the segment list, each segment has one class and the right area
    ids = [s.id for s in scene.segments]
    assert len(set(ids)) == len(ids) and min(ids) >= 1
    assert set(scene.panoptic.unique().tolist()) == set(ids)
    things = [s for s in scene.segments if s.is_thing]
    assert len(things) == scene.num_instances
    for seg in scene.segments:
        m = scene.panoptic == seg.id
        assert int(m.sum()) == seg.area
        assert bool((sem[m] == seg.category_id).all())
        if seg.is_thing:
            assert torch.equal(m, inst[seg.instance])
            assert seg.category_id == int(scene.instance_classes[seg.instance])
        else:
            assert seg.instance == -1 and seg.category_id >= NUM_THING_CLASSES
    stuff_classes = [s.category_id for s in scene.segments if not s.is_thing]
    assert len(set(stuff_classes)) == len(stuff_classes)  # one segment per stuff class
    assert torch.equal(scene.segment_masks.sum(0), torch.ones(H, W, dtype=torch.long))


def _check_expressions(scene: Scene) -> None:
    for expr in scene.expressions:
        assert expr.kind in EXPRESSION_KINDS
        assert set(expr.text.split()) <= set(VOCABULARY) and expr.text == expr.text.lower()
        assert expr.target_ids == sorted(expr.target_ids)
        assert expr.target_ids == _interpret(expr.text, scene), expr.text
        expected = torch.zeros(scene.size, dtype=torch.bool)
        for i in expr.target_ids:
            expected |= scene.instance_masks[i]
        assert torch.equal(expr.target_mask, expected)
        n = expr.num_targets
        assert {"absent": n == 0, "plural": n >= 2}.get(expr.kind, n == 1), (expr.kind, n)
        assert expr.has_target == (n > 0)


class TestVocabulary:
    def test_classes(self) -> None:
        assert CLASS_NAMES == THING_CLASSES + STUFF_CLASSES
        assert len(THING_CLASSES) >= 4 and len(set(CLASS_NAMES)) == NUM_CLASSES
        assert set(STUFF_STYLES) == set(STUFF_CLASSES)
        assert {s.texture for s in STUFF_STYLES.values()} == set(TEXTURES)
        assert all(0.0 <= v <= 1.0 for c in COLORS.values() for v in c)
        assert VOCABULARY == tuple(sorted(VOCABULARY))


class TestGenerateScene:
    def test_smoke(self) -> None:
        scene = generate_scene(3)
        assert scene.size == (128, 128)
        assert scene.image.dtype == torch.float32 and scene.image.shape == (3, 128, 128)
        assert float(scene.image.min()) >= 0.0 and float(scene.image.max()) <= 1.0
        assert 1 <= scene.num_instances <= 5
        assert len(scene.expressions) == 4
        assert scene.instance_boxes.shape == (scene.num_instances, 4)
        assert len(scene.describe()) == scene.num_instances
        for box, m in zip(scene.instance_boxes, scene.instance_masks, strict=True):
            ys, xs = torch.nonzero(m, as_tuple=True)
            expected = [xs.min(), ys.min(), xs.max(), ys.max()]
            assert box.tolist() == [float(v) for v in expected]

    @pytest.mark.parametrize("size", [16, 33, (40, 64), (64, 24), 128])
    def test_shape(self, size: int | tuple[int, int]) -> None:
        scene = generate_scene(11, size=size)
        hw = (size, size) if isinstance(size, int) else size
        assert scene.size == hw and scene.semantic.shape == hw and scene.panoptic.shape == hw
        _check_scene_invariants(scene)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="at least 16 pixels"):
            generate_scene(0, size=8)
        with pytest.raises(ValueError, match="num_stuff"):
            generate_scene(0, num_stuff=(1, 9))
        with pytest.raises(ValueError, match="num_objects"):
            generate_scene(0, num_objects=(3, 2))
        with pytest.raises(ValueError, match="object_scale"):
            generate_scene(0, object_scale=(0.3, 0.2))
        with pytest.raises(ValueError, match="non-negative"):
            generate_scene(-1)
        with pytest.raises(ValueError, match="no_target_fraction"):
            generate_scene(0, no_target_fraction=1.5)

    def test_determinism(self) -> None:
        a, b, c = generate_scene(42), generate_scene(42), generate_scene(43)
        for name in ("image", "instance_masks", "instance_classes", "semantic", "panoptic"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert [e.text for e in a.expressions] == [e.text for e in b.expressions]
        assert a.segments == b.segments
        assert not torch.equal(a.image, c.image)

    @given(a=SEEDS, b=SEEDS, size=st.integers(min_value=16, max_value=48))
    def test_seeds_differ(self, a: int, b: int, size: int) -> None:
        same = torch.equal(generate_scene(a, size=size).image, generate_scene(b, size=size).image)
        assert same == (a == b)

    def test_no_global_rng(self) -> None:
        np_state, torch_state = np.random.get_state(), torch.get_rng_state()
        torch.manual_seed(123)
        np.random.seed(123)
        a = generate_scene(5)
        torch.manual_seed(999)
        np.random.seed(999)
        b = generate_scene(5)
        assert torch.equal(a.image, b.image)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        before = torch.get_rng_state()
        generate_scene(6)
        assert torch.equal(before, torch.get_rng_state())

    def test_instance_colours(self) -> None:
        # things are painted with their colour (plus small noise), so the mean matches
        for seed in range(10):
            scene = generate_scene(seed, size=64)
            for m, c in zip(scene.instance_masks, scene.instance_colors, strict=True):
                mean = scene.image[:, m].mean(1)
                ref = torch.tensor(COLORS[COLOR_NAMES[int(c)]])
                torch.testing.assert_close(mean, ref, atol=0.02, rtol=0.0)

    def test_occlusion_and_drops(self) -> None:
        # with five objects, some scenes lose objects to occlusion and some keep partly hidden ones
        counts = [generate_scene(s, size=64, num_objects=(5, 5)).num_instances for s in range(30)]
        assert min(counts) < 5 and max(counts) == 5
        strict = [
            generate_scene(s, size=64, num_objects=(5, 5), min_visible_fraction=1.0).num_instances
            for s in range(30)
        ]
        assert all(a <= b for a, b in zip(strict, counts, strict=True))
        assert sum(strict) < sum(counts)

    def test_stuff_regions(self) -> None:
        seen = set()
        for seed in range(40):
            scene = generate_scene(seed, size=48, num_objects=(0, 0), num_expressions=0)
            stuff = scene.semantic.unique().tolist()
            assert 1 <= len(stuff) <= 3 and min(stuff) >= NUM_THING_CLASSES
            seen.add(len(stuff))
            for cid in stuff:
                region = scene.image[:, scene.semantic == cid]
                if region.shape[1] < 50:
                    continue
                style = STUFF_STYLES[CLASS_NAMES[cid]]
                # muted base colour, visibly textured
                base = torch.tensor(style.color)
                assert (region.mean(1) - base).abs().max() < style.amplitude + 0.05
                assert float(region.std(1).mean()) > 0.1 * style.amplitude
        assert seen == {1, 2, 3}

    @given(seed=SEEDS, size=SIZES)
    def test_invariants(self, seed: int, size: int | tuple[int, int]) -> None:
        scene = generate_scene(seed, size=size, num_expressions=8)
        _check_scene_invariants(scene)
        _check_expressions(scene)

    def test_expression_mix(self) -> None:
        kinds: dict[str, int] = {}
        for seed in range(60):
            scene = generate_scene(seed, size=64, num_expressions=8, no_target_fraction=0.25)
            _check_expressions(scene)
            assert sum(not e.has_target for e in scene.expressions) == 2
            for e in scene.expressions:
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
        assert set(kinds) == set(EXPRESSION_KINDS)
        assert min(kinds.values()) >= 20  # every kind is well represented
        none = generate_scene(1, num_expressions=5, no_target_fraction=0.0)
        assert all(e.has_target for e in none.expressions)
        everyone = generate_scene(1, num_expressions=5, no_target_fraction=1.0)
        assert not any(e.has_target for e in everyone.expressions)

    def test_named_examples(self) -> None:
        # hand-checked readings of specific phrases on many scenes
        for seed in range(40):
            scene = generate_scene(seed, size=64, num_expressions=8)
            kinds = [CLASS_NAMES[int(k)] for k in scene.instance_classes]
            colors = [COLOR_NAMES[int(c)] for c in scene.instance_colors]
            for e in scene.expressions:
                w = e.text.split()
                if e.kind == "unique" and len(w) == 3:
                    (i,) = e.target_ids
                    assert (colors[i], kinds[i]) == (w[1], w[2])
                if e.kind == "absent" and len(w) == 3:
                    assert (w[1], w[2]) not in set(zip(colors, kinds, strict=True))
                if w[1] == "leftmost" and w[2] != "shape":
                    xs = _centroids_areas(scene)[0][:, 0]
                    same = [i for i, k in enumerate(kinds) if k == w[2]]
                    assert xs[e.target_ids[0]] == min(xs[same])

    def test_speed(self) -> None:
        generate_scene(0)
        start = time.perf_counter()
        for seed in range(20):
            generate_scene(seed)
        per_scene = (time.perf_counter() - start) / 20
        assert per_scene < 0.05, f"{per_scene * 1e3:.1f} ms per 128 px scene"


class TestOversegment:
    def test_smoke(self, device: torch.device) -> None:
        masks = generate_scene(2, size=48).segment_masks.to(device)
        parts = oversegment(masks, 0)
        assert parts.masks.device == masks.device and parts.parents.device == masks.device
        assert parts.masks.dtype == torch.bool and parts.parents.dtype == torch.long
        assert parts.masks.shape[1:] == masks.shape[1:] and len(parts.masks) >= len(masks)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"expected 3 dims \(S, H, W\)"):
            oversegment(torch.zeros(4, 4, dtype=torch.bool), 0)
        with pytest.raises(ValueError, match="max_parts"):
            oversegment(torch.zeros(1, 4, 4, dtype=torch.bool), 0, max_parts=0)

    def test_hand_cases(self) -> None:
        blob = torch.zeros(1, 20, 20, dtype=torch.bool)
        blob[0, 2:18, 2:18] = True
        whole = oversegment(blob, 0, max_parts=1)
        assert torch.equal(whole.masks, blob) and whole.parents.tolist() == [0]
        two = torch.zeros(1, 20, 20, dtype=torch.bool)
        two[0, :5, :5] = True
        two[0, 10:, 10:] = True
        split = oversegment(two, 0, max_parts=1)
        assert len(split.masks) == 2 and torch.equal(split.masks.any(0), two[0])
        empty = oversegment(torch.zeros(2, 8, 8, dtype=torch.bool), 0)
        assert empty.masks.shape == (0, 8, 8) and empty.parents.shape == (0,)
        tiny = torch.zeros(1, 8, 8, dtype=torch.bool)
        tiny[0, 0, :3] = True
        assert len(oversegment(tiny, 0, max_parts=4, min_part_area=8).masks) == 1

    def test_determinism(self) -> None:
        masks = generate_scene(9, size=64).segment_masks
        a, b = oversegment(masks, 3), oversegment(masks, 3)
        assert torch.equal(a.masks, b.masks) and torch.equal(a.parents, b.parents)
        counts = {len(oversegment(masks, s).masks) for s in range(8)}
        assert len(counts) > 1  # the split is random across seeds

    @given(seed=SEEDS, size=st.integers(min_value=16, max_value=64), max_parts=st.integers(1, 4))
    def test_partition(self, seed: int, size: int, max_parts: int) -> None:
        masks = generate_scene(seed, size=size, num_expressions=0).segment_masks
        parts = oversegment(masks, seed, max_parts=max_parts)
        assert int(parts.masks.sum(0).max()) == 1  # disjoint and covering the image
        for s, mask in enumerate(masks):
            mine = parts.masks[parts.parents == s]
            assert torch.equal(mine.any(0), mask)
            n_pieces = ndimage.label(mask.numpy())[1]
            assert n_pieces <= len(mine) <= max(max_parts, n_pieces)
            for part in mine:
                assert ndimage.label(part.numpy())[1] == 1  # 4-connected


class TestDatasets:
    def test_referring(self) -> None:
        ds = SyntheticReferringDataset(num_scenes=6, size=48, expressions_per_scene=4)
        assert len(ds) == 24
        item = ds[5]
        scene = generate_scene(ds.scene_seed(1), size=48)
        expr = scene.expressions[1]
        assert item.text == expr.text and torch.equal(item.target_mask, expr.target_mask)
        assert torch.equal(item.image, scene.image) and item.scene_seed == 1
        assert torch.equal(ds[-1].image, ds[23].image)
        # exactly a quarter of the expressions have no target
        assert sum(not ds[i].has_target for i in range(len(ds))) == 6
        for i in range(len(ds)):
            s = ds[i]
            if s.has_target:
                ys, xs = torch.nonzero(s.target_mask, as_tuple=True)
                box = [xs.min(), ys.min(), xs.max(), ys.max()]
                assert s.target_box.tolist() == [float(v) for v in box]
            else:
                assert not s.target_mask.any() and not s.target_box.any()
        with pytest.raises(IndexError, match="out of range"):
            ds[24]

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="split"):
            SyntheticSemanticDataset(num_scenes=2, split="dev")
        with pytest.raises(ValueError, match="expressions_per_scene"):
            SyntheticReferringDataset(num_scenes=2, expressions_per_scene=0)
        with pytest.raises(ValueError, match="at least one sample"):
            collate_semantic([])

    def test_splits_disjoint_and_deterministic(self) -> None:
        train = SyntheticSemanticDataset(num_scenes=3, size=32)
        val = SyntheticSemanticDataset(num_scenes=3, size=32, split="val")
        assert val.scene_seed(0) == SPLIT_OFFSETS["val"]
        train_seeds = {train.scene_seed(i) for i in range(3)}
        assert train_seeds.isdisjoint({val.scene_seed(i) for i in range(3)})
        assert not torch.equal(train[0].image, val[0].image)
        again = SyntheticSemanticDataset(num_scenes=3, size=32)
        assert all(torch.equal(train[i].semantic, again[i].semantic) for i in range(3))

    def test_collate_referring(self, device: torch.device) -> None:
        ds = SyntheticReferringDataset(num_scenes=2, size=32)
        loader = DataLoader(ds, batch_size=3, collate_fn=collate_referring)
        batch = next(iter(loader)).to(device)
        assert batch.images.shape == (3, 3, 32, 32) and batch.images.device == device
        assert batch.target_masks.shape == (3, 32, 32) and batch.target_boxes.shape == (3, 4)
        assert batch.has_target.dtype == torch.bool and len(batch.texts) == 3
        assert all(m.device == device for m in batch.instance_masks)
        assert torch.equal(batch.has_target, batch.target_masks.flatten(1).any(1).cpu())
        assert [len(ids) > 0 for ids in batch.target_ids] == batch.has_target.tolist()

    def test_panoptic(self) -> None:
        ds = SyntheticPanopticDataset(num_scenes=3, size=40, parts=True, max_parts=3)
        sample = ds[1]
        assert len(sample.segments) == len(sample.segment_masks) == len(sample.segment_classes)
        assert sample.part_masks is not None and sample.part_parents is not None
        for s, mask in enumerate(sample.segment_masks):
            assert torch.equal(sample.part_masks[sample.part_parents == s].any(0), mask)
        assert torch.equal(ds[1].part_masks, sample.part_masks)  # deterministic parts
        batch = collate_panoptic([ds[0], ds[1], ds[2]])
        assert batch.images.shape == (3, 3, 40, 40) and batch.panoptic.shape == (3, 40, 40)
        assert batch.part_masks is not None and len(batch.part_masks) == 3
        plain = SyntheticPanopticDataset(num_scenes=1, size=40)[0]
        assert plain.part_masks is None
        assert collate_panoptic([plain]).part_masks is None

    def test_semantic(self) -> None:
        ds = SyntheticSemanticDataset(num_scenes=4, size=32)
        batch = collate_semantic([ds[i] for i in range(4)])
        assert batch.semantic.shape == (4, 32, 32) and batch.semantic.dtype == torch.long
        assert batch.class_names == CLASS_NAMES == ds.class_names
        assert batch.scene_seeds == [0, 1, 2, 3]
