from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samkit.data.synthetic import NUM_THING_CLASSES, generate_scene, oversegment
from samkit.losses.sam_cp import sam_cp_loss
from samkit.matching import build_patch_targets
from samkit.proposals import patches_from_masks
from samkit.systems.sam_cp import SAMCP, SAMCPConfig, build_sam_cp
from samkit.types import PanopticResult, Patches


@pytest.fixture(scope="module")
def model() -> SAMCP:
    torch.manual_seed(0)
    return build_sam_cp("tiny", build_proposer=False).eval()


def _scene_batch(n: int = 2, size: int = 64) -> tuple[torch.Tensor, list[Patches], list]:
    scenes = [generate_scene(i, size=size) for i in range(n)]
    images = torch.stack([s.image for s in scenes])
    patches = [
        patches_from_masks(oversegment(s.segment_masks, i).masks) for i, s in enumerate(scenes)
    ]
    return images, patches, scenes


class TestConfig:
    def test_paper_defaults(self) -> None:
        cfg = SAMCPConfig()
        assert (cfg.encoder_layers, cfg.decoder_layers, cfg.dim) == (6, 6, 256)
        assert len(cfg.thing_classes) == 80 and len(cfg.stuff_classes) == 53
        assert cfg.dynamic_cross_attention and cfg.affinity_refinement
        assert not cfg.query_enhancement
        assert (cfg.points_per_side, cfg.pred_iou_thresh, cfg.stability_score_thresh) == (
            48,
            0.8,
            0.9,
        )
        assert cfg.kappa == 0.4 and cfg.backbone == "resnet50"

    def test_build_from_dict_and_overrides(self) -> None:
        m = build_sam_cp({**SAMCPConfig.tiny().__dict__, "decoder_layers": 1}, build_proposer=False)
        assert len(m.decoder.layers) == 1
        with pytest.raises(ValueError, match="preset"):
            build_sam_cp("huge")

    @pytest.mark.parametrize(
        "field", ["affinity_threshold", "object_mask_threshold", "overlap_threshold", "kappa"]
    )
    def test_thresholds_outside_unit_interval(self, field: str) -> None:
        with pytest.raises(ValueError, match=field):
            build_sam_cp("tiny", build_proposer=False, **{field: 1.5})


class TestSAMCP:
    def test_forward_shapes(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch()
        out = model(images, patches)
        n = max(p.num_patches for p in patches)
        s, t = len(model.config.stuff_classes), len(model.class_names)
        assert out.affinities.shape == (2, 2, s + n, n)
        assert out.class_logits.shape == (2, 2, s + n, t)
        assert out.num_semantic == s and out.num_things == NUM_THING_CLASSES

    def test_predict(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch()
        results = model.predict(images, patches)
        assert len(results) == 2
        for r in results:
            assert r.panoptic.shape == r.semantic.shape == (64, 64)
            ids = set(r.panoptic.unique().tolist()) - {0}
            assert ids == {s["id"] for s in r.segments}
            assert r.instance_masks.shape[1:] == (64, 64)

    def test_predict_with_proposer(self) -> None:
        m = build_sam_cp("tiny", points_per_side=3).eval()
        out = m.predict(torch.rand(1, 3, 64, 64))
        assert out[0].panoptic.shape == (64, 64)
        no_prop = build_sam_cp("tiny", build_proposer=False)
        with pytest.raises(RuntimeError, match="build_proposer"):
            no_prop.predict(torch.rand(1, 3, 64, 64))

    def test_open_vocabulary_predict(self) -> None:
        m = build_sam_cp("tiny", build_proposer=False, open_vocabulary=True).eval()
        images, patches, _ = _scene_batch(1)
        names = ["ring", "box", "wedge", "sun", "moss", "cloud"]
        out = m.predict(images, patches, names, num_things=4)
        assert all(s["category_id"] < 6 for s in out[0].segments)

    def test_exception(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch()
        with pytest.raises(ValueError, match="patches"):
            model(images, patches[:1])
        with pytest.raises(ValueError, match="num_things"):
            model(images, patches, ["a", "b"])
        with pytest.raises(ValueError, match="images"):
            model(images[:, :2], patches)

    def test_zero_and_one_patch(self, model: SAMCP) -> None:
        images = torch.rand(2, 3, 64, 64)
        one = patches_from_masks(torch.ones(1, 64, 64))
        zero = patches_from_masks(torch.zeros(0, 64, 64))
        out = model(images, [one, zero])
        assert out.affinities.shape[-1] == 1 and torch.isfinite(out.affinities).all()
        assert torch.isfinite(out.class_logits).all()
        res = model.predict(images, [zero, zero])
        assert all(r.segments == [] or r.segments[0]["isthing"] is False for r in res)

    def test_grad_flow(self) -> None:
        m = build_sam_cp("tiny", build_proposer=False, query_enhancement=True).train()
        images, patches, scenes = _scene_batch()
        targets = [
            build_patch_targets(p, s.segment_masks, s.segment_classes, num_things=4, num_stuff=5)
            for p, s in zip(patches, scenes, strict=True)
        ]
        sam_cp_loss(m(images, patches), targets)["loss"].backward()
        for name, prm in m.named_parameters():
            if name.startswith("clip."):
                assert prm.grad is None, name
            else:
                assert prm.grad is not None and torch.isfinite(prm.grad).all(), name

    @settings(max_examples=3)
    @given(st.data())
    def test_permuting_class_names_permutes_semantic_outputs(self, data: st.DataObject) -> None:
        m = _MODEL
        images, patches, _ = _BATCH
        names = list(m.class_names)
        stuff_perm = data.draw(st.permutations(range(5)))
        thing_perm = data.draw(st.permutations(range(4)))
        perm = list(thing_perm) + [4 + i for i in stuff_perm]
        ref = m(images, patches)
        out = m(images, patches, [names[i] for i in perm], num_things=4)
        s = 5
        torch.testing.assert_close(
            out.class_logits[:, :, s:], ref.class_logits[:, :, s:][..., perm], atol=1e-5, rtol=1e-4
        )
        q = torch.tensor(stuff_perm)
        torch.testing.assert_close(
            out.class_logits[:, :, :s], ref.class_logits[:, :, q][..., perm], atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(
            out.affinities[:, :, :s], ref.affinities[:, :, q], atol=1e-5, rtol=1e-4
        )


def _busy_model() -> SAMCP:
    """A random tiny model whose fusion keeps candidates (every threshold 0)."""
    torch.manual_seed(0)
    return build_sam_cp(
        "tiny",
        build_proposer=False,
        object_mask_threshold=0.0,
        affinity_threshold=0.0,
        overlap_threshold=0.0,
    ).eval()


def _mixed_batch() -> tuple[torch.Tensor, list[torch.Tensor], list[Patches], list[tuple[int, int]]]:
    """Three images of different sizes and patch counts, padded bottom/right to 64 x 64."""
    sizes = [(50, 61), (64, 64), (37, 45)]
    images, patches = [], []
    for i, (h, w) in enumerate(sizes):
        scene = generate_scene(i, size=64)
        masks = oversegment(scene.segment_masks, i).masks[:, :h, :w]
        images.append(scene.image[:, :h, :w])
        patches.append(patches_from_masks(masks[masks.flatten(1).any(1)]))
    canvas = torch.zeros(3, 3, 64, 64)
    for i, img in enumerate(images):
        canvas[i, :, : img.shape[1], : img.shape[2]] = img
    return canvas, images, patches, sizes


def _assert_same_result(got: PanopticResult, ref: PanopticResult) -> None:
    assert got.panoptic.shape == ref.panoptic.shape
    assert torch.equal(got.panoptic, ref.panoptic)
    assert torch.equal(got.semantic, ref.semantic)
    assert len(got.segments) == len(ref.segments)
    for a, b in zip(got.segments, ref.segments, strict=True):
        assert {k: v for k, v in a.items() if k != "score"} == {
            k: v for k, v in b.items() if k != "score"
        }
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert torch.equal(got.instance_masks, ref.instance_masks)
    torch.testing.assert_close(got.instance_scores, ref.instance_scores, atol=1e-5, rtol=0)
    assert torch.equal(got.instance_labels, ref.instance_labels)


class TestBatchIndependence:
    def test_padded_queries_never_become_instances(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(3)
        counts = [p.num_patches for p in patches]
        assert len(set(counts)) > 1  # different patch counts -> padding in the batch
        batch = model.predict(images, patches)
        t = NUM_THING_CLASSES
        for i, p in enumerate(patches):
            alone = model.predict(images[i : i + 1], [p])[0]
            assert len(batch[i].instance_scores) == min(p.num_patches * t, 100)
            _assert_same_result(batch[i], alone)

    def test_mixed_sizes_match_each_image_alone(self) -> None:
        m = _busy_model()
        canvas, images, patches, sizes = _mixed_batch()
        assert len({p.num_patches for p in patches}) == 3
        out = m(canvas, patches, image_sizes=sizes)
        results = m.predict(canvas, patches, image_sizes=sizes)
        assert out.sizes == sizes
        for i, (img, p) in enumerate(zip(images, patches, strict=True)):
            one = m(img[None], [p])
            n = p.num_patches
            k = out.num_semantic + n
            torch.testing.assert_close(
                out.affinities[:, i, :k, :n], one.affinities[:, 0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                out.class_logits[:, i, :k], one.class_logits[:, 0], atol=1e-5, rtol=0
            )
            alone = m.predict(img[None], [p])[0]
            assert results[i].panoptic.shape == sizes[i]
            assert len(alone.segments) > 0 and len(alone.instance_scores) > 0
            _assert_same_result(results[i], alone)

    def test_padding_is_marked_and_zero(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(3)
        out = model(images, patches)
        qpad = out.query_padding_mask
        assert qpad.shape == out.class_logits.shape[1:3]
        assert not qpad[:, : out.num_semantic].any()
        assert torch.equal(qpad[:, out.num_semantic :], out.padding_mask)
        assert (out.class_logits[:, qpad] == 0).all()
        assert (out.affinities.transpose(-1, -2)[:, out.padding_mask] == 0).all()

    def test_image_without_patches_in_a_batch(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(2)
        zero = patches_from_masks(torch.zeros(0, 64, 64))
        out = model(images, [patches[0], zero])
        alone = model(images[1:], [zero])
        s = out.num_semantic
        torch.testing.assert_close(
            out.class_logits[:, 1, :s], alone.class_logits[:, 0], atol=1e-5, rtol=0
        )


class TestVocabularies:
    def test_stuff_only(self, model: SAMCP) -> None:
        images, patches, scenes = _scene_batch(2)
        stuff = list(model.config.stuff_classes)
        out = model(images, patches, stuff, num_things=0)
        n = max(p.num_patches for p in patches)
        assert out.class_logits.shape == (2, 2, 5 + n, 5) and out.num_things == 0
        for r in model.predict(images, patches, stuff, num_things=0):
            assert r.instance_masks.shape == (0, 64, 64) and r.instance_labels.numel() == 0
            assert all(not sg["isthing"] for sg in r.segments)
        targets = []
        for p, sc in zip(patches, scenes, strict=True):
            keep = sc.segment_classes >= NUM_THING_CLASSES
            labels = sc.segment_classes[keep] - NUM_THING_CLASSES
            targets.append(
                build_patch_targets(p, sc.segment_masks[keep], labels, num_things=0, num_stuff=5)
            )
        loss = sam_cp_loss(out, targets)["loss"]
        assert torch.isfinite(loss) and loss > 0

    def test_things_only(self) -> None:
        m = _busy_model()
        images, patches, scenes = _scene_batch(2)
        things = list(m.config.thing_classes)
        out = m(images, patches, things, num_things=4)
        n = max(p.num_patches for p in patches)
        assert out.class_logits.shape == (2, 2, n, 4) and out.num_semantic == 0
        for r in m.predict(images, patches, things, num_things=4):
            assert all(sg["isthing"] for sg in r.segments)
            assert len(r.instance_scores) > 0 and (r.instance_labels < 4).all()
        targets = []
        for p, sc in zip(patches, scenes, strict=True):
            keep = sc.segment_classes < NUM_THING_CLASSES
            targets.append(
                build_patch_targets(
                    p, sc.segment_masks[keep], sc.segment_classes[keep], num_things=4, num_stuff=0
                )
            )
        assert torch.isfinite(sam_cp_loss(out, targets)["loss"])


class TestInputContract:
    def test_float_dtypes_give_the_float32_result(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(1)
        ref = model(images, patches)
        for dtype, tol in ((torch.float64, 1e-6), (torch.float16, 5e-3), (torch.bfloat16, 5e-2)):
            out = model(images.to(dtype), patches)
            assert out.affinities.dtype == torch.float32
            torch.testing.assert_close(out.affinities, ref.affinities, atol=tol, rtol=0)
        res = model.predict(images.double(), patches)[0]
        assert torch.equal(res.panoptic, model.predict(images, patches)[0].panoptic)

    def test_uint8_images_are_scaled(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(1)
        u8 = (images * 255).round().to(torch.uint8)
        out = model(u8, patches)
        torch.testing.assert_close(out.affinities, model(u8.float() / 255, patches).affinities)

    @pytest.mark.parametrize("value", [255.0, -0.5, float("nan")])
    def test_out_of_range_images(self, model: SAMCP, value: float) -> None:
        images, patches, _ = _scene_batch(1)
        images[0, 0, 0, 0] = value
        with pytest.raises(ValueError, match="images"):
            model(images, patches)
        with pytest.raises(ValueError, match="images"):
            model.predict(images, patches)

    def test_empty_batch(self, model: SAMCP) -> None:
        out = model(torch.zeros(0, 3, 64, 64), [])
        assert out.affinities.shape == (2, 0, 5, 0)
        assert out.class_logits.shape == (2, 0, 5, 9)
        assert out.patch_boxes.shape == (0, 0, 4) and out.padding_mask.shape == (0, 0)
        assert model.predict(torch.zeros(0, 3, 64, 64), []) == []
        with_sam = build_sam_cp("tiny", points_per_side=2).eval()
        assert with_sam.predict(torch.zeros(0, 3, 64, 64)) == []

    def test_str_class_name_is_one_class(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(1)
        out = model(images, patches, "ring", num_things=1)
        assert out.class_logits.shape[-1] == 1 and out.num_semantic == 0
        assert len(model.predict(images, patches, "moss", num_things=0)) == 1
        with pytest.raises(ValueError, match="class_names"):
            model(images, patches, [], num_things=0)

    def test_patch_masks_at_another_size(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(2)
        small = patches_from_masks(torch.ones(2, 32, 32))
        with pytest.raises(ValueError, match=r"patches\[1\].*\(64, 64\)"):
            model(images, [patches[0], small])
        with pytest.raises(ValueError, match=r"patches\[1\]"):
            model.predict(images, [patches[0], small])
        with pytest.raises(ValueError, match=r"patches\[0\]"):
            model(images, patches, image_sizes=[(60, 64), (64, 64)])

    def test_bad_image_sizes(self, model: SAMCP) -> None:
        images, patches, _ = _scene_batch(2)
        with pytest.raises(ValueError, match="image_sizes"):
            model(images, patches, image_sizes=[(64, 64)])
        with pytest.raises(ValueError, match=r"image_sizes\[1\]"):
            model(images, patches, image_sizes=[(64, 64), (65, 64)])

    def test_proposer_on_mixed_sizes(self) -> None:
        m = build_sam_cp("tiny", points_per_side=3).eval()
        canvas, images, _, sizes = _mixed_batch()
        results = m.predict(canvas, image_sizes=sizes)
        for i, img in enumerate(images):
            assert results[i].panoptic.shape == sizes[i]
            _assert_same_result(results[i], m.predict(img[None])[0])


torch.manual_seed(0)
_MODEL = build_sam_cp("tiny", build_proposer=False).eval()
_BATCH = _scene_batch(1)
