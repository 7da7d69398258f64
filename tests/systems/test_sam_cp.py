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
from samkit.types import Patches


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


torch.manual_seed(0)
_MODEL = build_sam_cp("tiny", build_proposer=False).eval()
_BATCH = _scene_batch(1)
