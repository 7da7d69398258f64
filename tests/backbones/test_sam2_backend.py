"""SAM 2 backend: equivalence with `sam2.SAM2ImagePredictor`, checkpoints, systems, gradients."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import Tensor

from samkit.backbones.sam import SamLike, build_sam_backbone
from samkit.types import Prompts
from tests.backbones import _backend_checks as checks

sam2 = pytest.importorskip("sam2")
from sam2.build_sam import build_sam2  # noqa: E402
from sam2.modeling.backbones.hieradet import Hiera  # noqa: E402
from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: E402

from samkit.backbones.sam2_backend import (  # noqa: E402
    SAM2_VARIANTS,
    Sam2Backbone,
    build_sam2_backbone,
)

TINY = "sam2-tiny-random"
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def _tiny_overrides() -> list[str]:
    """Hydra overrides that turn SAM 2.1 Hiera-T into the `sam2-tiny-random` architecture."""
    spec = SAM2_VARIANTS[TINY]
    trunk = "++model.image_encoder.trunk."
    neck = "++model.image_encoder.neck."
    return [
        f"++model.image_size={spec.image_size}",
        f"{trunk}embed_dim={spec.embed_dim}",
        f"{trunk}num_heads={spec.num_heads}",
        f"{trunk}stages={list(spec.stages)}",
        f"{trunk}global_att_blocks={list(spec.global_att_blocks)}",
        f"{trunk}window_spec={list(spec.window_spec)}",
        f"{trunk}window_pos_embed_bkg_spatial_size={list(spec.window_pos_embed_bkg_spatial_size)}",
        f"{neck}d_model={spec.prompt_dim}",
        f"{neck}position_encoding.num_pos_feats={spec.prompt_dim}",
        f"{neck}backbone_channel_list={spec.channel_list}",
    ]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Sam2Backbone, Path]:
    """An upstream SAM2Base built by `build_sam2` (random weights) and samkit's backbone loaded
    from its checkpoint file, written in the official layout (`{"model": state_dict}`)."""
    torch.manual_seed(0)
    upstream = build_sam2(CONFIG, None, device="cpu", hydra_overrides_extra=_tiny_overrides())
    path = tmp_path_factory.mktemp("sam2") / "sam2_tiny_random.pt"
    torch.save({"model": upstream.state_dict()}, path)
    ours = build_sam_backbone(TINY, path)
    assert isinstance(ours, Sam2Backbone)
    return upstream, ours, path


def _predictor(upstream: Any, images: list[np.ndarray]) -> SAM2ImagePredictor:
    predictor = SAM2ImagePredictor(upstream)
    grid = upstream.image_size // 16
    # the predictor hard-codes the feature sizes of a 1024 px input
    predictor._bb_feat_sizes = [(4 * grid, 4 * grid), (2 * grid, 2 * grid), (grid, grid)]
    if len(images) == 1:
        predictor.set_image(images[0])
    else:
        predictor.set_image_batch(images)
    return predictor


def _as_tensor(images: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _max_diff(a: Tensor, b: Any) -> float:
    return float((a.detach() - torch.as_tensor(b)).abs().max())


class TestBuild:
    def test_is_samlike_and_shapes(self) -> None:
        sam = build_sam2_backbone(TINY)
        assert isinstance(sam, SamLike)
        assert (sam.img_size, sam.prompt_dim, sam.embedding_size) == (256, 32, (16, 16))
        assert not sam.training

    @pytest.mark.parametrize("variant", sorted(v for v in SAM2_VARIANTS if v != TINY))
    def test_official_specs_match_sam2_configs(self, variant: str) -> None:
        """Every official preset has the trunk and neck numbers of the package's own YAML."""
        stem = variant.replace("_base_plus", "_b+").replace("_tiny", "_t")
        stem = stem.replace("_small", "_s").replace("_large", "_l")
        folder = "sam2.1" if variant.startswith("sam2.1") else "sam2"
        path = Path(sam2.__file__).parent / "configs" / folder / f"{stem}.yaml"
        model = yaml.safe_load(path.read_text())["model"]
        trunk = model["image_encoder"]["trunk"]
        defaults = {k: v.default for k, v in inspect.signature(Hiera.__init__).parameters.items()}
        spec = SAM2_VARIANTS[variant]

        def get(key: str) -> Any:
            value = trunk.get(key, defaults[key])
            return tuple(value) if isinstance(value, list | tuple) else value

        assert spec.embed_dim == get("embed_dim") and spec.num_heads == get("num_heads")
        assert spec.stages == get("stages")
        assert spec.global_att_blocks == get("global_att_blocks")
        assert spec.window_spec == get("window_spec")
        assert spec.window_pos_embed_bkg_spatial_size == get("window_pos_embed_bkg_spatial_size")
        neck = model["image_encoder"]["neck"]
        assert spec.prompt_dim == neck["d_model"]
        assert spec.channel_list == neck["backbone_channel_list"]
        assert spec.image_size == model["image_size"]

    def test_official_checkpoint_layout_loads_strictly(self, tmp_path: Path) -> None:
        """A `build_sam2` SAM 2.1 Hiera-T checkpoint (full video model) loads by path."""
        torch.manual_seed(1)
        upstream = build_sam2(CONFIG, None, device="cpu")
        path = tmp_path / "sam2.1_hiera_tiny.pt"
        torch.save({"model": upstream.state_dict()}, path)
        ours = build_sam_backbone("sam2.1_hiera_tiny", path)
        sd = upstream.state_dict()
        for key, value in ours.state_dict().items():
            src = key.replace("prompt_encoder.", "sam_prompt_encoder.", 1)
            src = src.replace("mask_decoder.", "sam_mask_decoder.", 1)
            assert torch.equal(value, sd[src]), key
        # the checkpoint of another variant is refused
        with pytest.raises(RuntimeError, match="missing keys"):
            build_sam_backbone("sam2.1_hiera_small", path)

    def test_unexpected_and_missing_keys_are_listed(
        self, pair: tuple[Any, Sam2Backbone, Path], tmp_path: Path
    ) -> None:
        upstream = pair[0]
        sd = dict(upstream.state_dict())
        sd["sam_mask_decoder.extra.weight"] = torch.zeros(1)
        del sd["no_mem_embed"]
        bad = tmp_path / "bad.pt"
        torch.save({"model": sd}, bad)
        with pytest.raises(RuntimeError, match=r"no_mem_embed.*mask_decoder\.extra\.weight"):
            build_sam_backbone(TINY, bad)

    def test_unknown_variant_lists_families(self) -> None:
        with pytest.raises(ValueError, match=r"SAM 2.*sam2\.1_hiera_tiny"):
            build_sam_backbone("sam2.1_hiera_huge")

    def test_missing_package_names_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        checks.assert_missing_package_names_extra(monkeypatch, "sam2", TINY, "sam2")


class TestEquivalence:
    """samkit's batched pipeline equals `SAM2ImagePredictor` on the same random weights."""

    TOL = 1e-5

    def _compare(self, pred: Any, ref: tuple[Any, Any, Any], name: str) -> None:
        masks, iou, low = ref  # upsampled logits, IoU, low-res logits clamped to [-32, 32]
        got = {
            "logits": _max_diff(pred.logits, masks),
            "iou": _max_diff(pred.iou_scores, iou),
            "low_res": _max_diff(pred.low_res_logits.clamp(-32, 32), low),
        }
        for key, diff in got.items():
            assert diff <= self.TOL, f"{name} {key}: max |diff| {diff:.2e}"

    def test_one_image(self, pair: tuple[Any, Sam2Backbone, Path]) -> None:
        upstream, ours, _ = pair
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (72, 104, 3), dtype=np.uint8)
        predictor = _predictor(upstream, [image])
        emb = ours.encode(_as_tensor([image]))
        ref_emb = predictor._features
        assert _max_diff(emb.embeddings, ref_emb["image_embed"]) <= self.TOL
        for a, b in zip(emb.intermediates, ref_emb["high_res_feats"], strict=True):
            assert _max_diff(a, b) <= self.TOL
        size = (72, 104)
        pts = np.array([[30.0, 40.0], [80.0, 10.0]], dtype=np.float32)
        box = np.array([10.0, 5.0, 90.0, 60.0], dtype=np.float32)
        cases = {
            "point, multimask": (pts[:1], np.array([1]), None, True),
            "two points, single (stability rule)": (pts, np.array([1, 0]), None, False),
            "box, single": (None, None, box, False),
            "box, multimask": (None, None, box, True),
            "point + box, single": (pts[:1], np.array([1]), box, False),
            "point + box, multimask": (pts[:1], np.array([1]), box, True),
        }
        for name, (p, lab, b, multi) in cases.items():
            ref = predictor.predict(
                point_coords=p, point_labels=lab, box=b, multimask_output=multi, return_logits=True
            )
            prompts = Prompts(
                points=None
                if p is None
                else ours.transform_coords(torch.from_numpy(p), size)[None, None],
                labels=None if lab is None else torch.from_numpy(lab)[None, None].float(),
                boxes=None
                if b is None
                else ours.transform_boxes(torch.from_numpy(b), size)[None, None],
            )
            pred = ours.predict(emb, prompts, multimask=multi)
            self._compare(_first(pred), ref, name)

    def test_batch_of_images_with_several_prompts(
        self, pair: tuple[Any, Sam2Backbone, Path]
    ) -> None:
        upstream, ours, _ = pair
        rng = np.random.default_rng(1)
        images = [rng.integers(0, 256, (64, 48, 3), dtype=np.uint8) for _ in range(2)]
        predictor = _predictor(upstream, images)
        pts = rng.uniform(0, 48, (2, 3, 1, 2)).astype(np.float32)  # (B, K, N, 2)
        labels = np.ones((2, 3, 1), dtype=np.int64)
        boxes = np.array([[[2, 3, 40, 50]] * 3, [[5, 1, 30, 60]] * 3], dtype=np.float32)
        emb = ours.encode(_as_tensor(images))
        for multi in (True, False):
            masks, iou, low = predictor.predict_batch(
                list(pts),
                list(labels),
                box_batch=list(boxes),
                multimask_output=multi,
                return_logits=True,
            )
            prompts = Prompts(
                points=ours.transform_coords(torch.from_numpy(pts), (64, 48)),
                labels=torch.from_numpy(labels).float(),
                boxes=ours.transform_boxes(torch.from_numpy(boxes), (64, 48)),
            )
            pred = ours.predict(emb, prompts, multimask=multi)
            for i in range(2):
                self._compare(
                    _first(pred, i), (masks[i], iou[i], low[i]), f"image {i}, multimask={multi}"
                )

    def test_predict_points_equals_predict(self, pair: tuple[Any, Sam2Backbone, Path]) -> None:
        ours = pair[1]
        emb = ours.encode(torch.rand(2, 3, 50, 70))
        points = torch.rand(2, 41, 2) * 256
        got = ours.predict_points(emb, points, batch_size=16)
        ref = ours.predict(
            emb,
            Prompts(points=points[:, :, None], labels=torch.ones(2, 41, 1)),
            upsample=False,
            multimask=True,
        )
        assert _max_diff(got.low_res_logits, ref.low_res_logits) <= 1e-5
        assert got.low_res_logits.shape == (2, 41, 3, 64, 64)


class _Pred:
    def __init__(self, logits: Tensor, iou: Tensor, low: Tensor) -> None:
        self.logits, self.iou_scores, self.low_res_logits = logits, iou, low


def _first(pred: Any, image: int = 0) -> _Pred:
    """Image `image` of a `(B, K, M, ...)` prediction, squeezed like the upstream predictor
    (which drops `K` when it is 1)."""
    assert pred.logits is not None
    logits, iou, low = pred.logits[image], pred.iou_scores[image], pred.low_res_logits[image]
    if logits.shape[0] == 1:
        logits, iou, low = logits[0], iou[0], low[0]
    return _Pred(logits, iou, low)


class TestBehaviour:
    def test_empty_batch(self) -> None:
        sam = build_sam2_backbone(TINY)
        emb = sam.encode(torch.zeros(0, 3, 32, 32))
        assert emb.embeddings.shape == (0, 32, 16, 16)
        pred = sam.predict(emb, Prompts(points=torch.zeros(0, 2, 1, 2), labels=torch.ones(0, 2, 1)))
        assert pred.low_res_logits.shape == (0, 2, 1, 64, 64)

    def test_batch_independence(self) -> None:
        sam = build_sam2_backbone(TINY)
        images = torch.rand(3, 3, 40, 40)
        prompts = Prompts(points=torch.rand(3, 2, 1, 2) * 256, labels=torch.ones(3, 2, 1))
        full = sam(images, prompts, multimask=True)
        one = sam(
            images[1:2],
            Prompts(points=prompts.points[1:2], labels=prompts.labels[1:2]),
            multimask=True,
        )
        assert _max_diff(full.low_res_logits[1:2], one.low_res_logits) <= 1e-5

    def test_stability_rule_switch(self) -> None:
        """With the rule off, single-mask output is always mask token 0 (and in train mode)."""
        sam = build_sam2_backbone(TINY)
        emb = sam.encode(torch.rand(1, 3, 32, 32))
        prompts = Prompts(points=torch.rand(1, 8, 1, 2) * 256, labels=torch.ones(1, 8, 1))
        sparse, dense = sam.embed_prompts(prompts)
        masks, _, _ = sam._predict_masks(emb.embeddings, emb.intermediates, sparse, dense)
        sam.dynamic_multimask = False
        off = sam.predict(emb, prompts, upsample=False)
        assert torch.allclose(off.low_res_logits[:, :, 0], masks[:, :, 0], atol=1e-6)
        sam.dynamic_multimask = True
        on = sam.predict(emb, prompts, upsample=False)
        candidates = masks[:, :, :, None]  # (b, k, 4, 1, h, w)
        hit = (candidates - on.low_res_logits[:, :, None]).abs().flatten(3).amax(-1) < 1e-6
        assert bool(hit.any(dim=2).all())  # every output is one of the four masks

    def test_errors(self) -> None:
        sam = build_sam2_backbone(TINY)
        emb = sam.encode(torch.rand(1, 3, 32, 32))
        with pytest.raises(ValueError, match="input_size"):
            sam.postprocess_masks(torch.zeros(1, 64, 64), (200, 256), (32, 32))
        emb.intermediates = []
        with pytest.raises(ValueError, match="high-resolution"):
            sam.predict(emb, Prompts(points=torch.zeros(1, 1, 1, 2), labels=torch.ones(1, 1, 1)))
        with pytest.raises(ValueError, match="labels"):
            sam.predict_points(
                sam.encode(torch.rand(1, 3, 32, 32)), torch.zeros(1, 2, 2), torch.full((1, 2), 5.0)
            )

    def test_gradients_reach_the_decoder(self) -> None:
        sam = build_sam2_backbone(TINY)
        # the object-score head only feeds SAM 2's video memory; the image path never runs it
        got = checks.decoder_gradients(sam, skip=("pred_obj_score_head",))
        missing = [n for n, ok in got.items() if not ok]
        assert not missing, missing
        assert sam.no_mem_embed.grad is not None

    def test_dense_pe_equals_upstream_and_works_in_bfloat16(self) -> None:
        sam = build_sam2_backbone(TINY)
        assert _max_diff(sam.dense_pe(), sam.prompt_encoder.get_dense_pe()) <= 1e-6
        # sam2's get_dense_pe multiplies float32 coordinates by the (bf16) Gaussian matrix
        half = copy.deepcopy(sam).to(torch.bfloat16)
        assert half.dense_pe().dtype == torch.bfloat16
        images = torch.rand(1, 3, 32, 32)
        prompts = Prompts(points=torch.rand(1, 2, 1, 2) * 256, labels=torch.ones(1, 2, 1))
        with torch.no_grad():
            ref = sam(images, prompts).low_res_logits
            out = half(images, prompts).low_res_logits
        assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())
        assert ((out.float() - ref).norm() / ref.norm()).item() < 0.1

    def test_freeze(self) -> None:
        sam = build_sam2_backbone(TINY)
        names = sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)
        assert names and all(n.startswith("mask_decoder.") for n in names)
        assert not sam.no_mem_embed.requires_grad


class TestSystems(checks.SystemsChecks):
    variant = TINY
