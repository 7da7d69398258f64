"""HQ-SAM backend: equivalence with `segment_anything_hq.SamPredictor`, checkpoints, systems."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from samkit.backbones._sam_build import PIXEL_MEAN, PIXEL_STD, SAM_VARIANTS
from samkit.backbones.sam import SamLike, build_sam_backbone
from samkit.types import Prompts
from tests.backbones import _backend_checks as checks

with warnings.catch_warnings():  # timm's notes about the TinyViT names the package registers
    warnings.simplefilter("ignore")
    hq = pytest.importorskip("segment_anything_hq")
    from segment_anything_hq import SamPredictor, sam_model_registry
    from segment_anything_hq.modeling import (
        ImageEncoderViT,
        MaskDecoderHQ,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )
    from segment_anything_hq.modeling.tiny_vit_sam import TinyViT

from samkit.backbones.hq_sam import (  # noqa: E402
    HQ_SAM_VARIANTS,
    HQSamBackbone,
    LightHQSamBackbone,
    build_hq_sam_backbone,
)
from samkit.backbones.mobile_sam import MOBILE_SAM_VARIANTS  # noqa: E402

TINY = "hq-tiny-random"
LIGHT_TINY = "hq_vit_tiny-tiny-random"
ORIG = (60, 100)


def _upstream_tiny() -> Any:
    """segment_anything_hq's `Sam`, wired as its `_build_sam`, at SAM's `tiny` sizes."""
    spec = SAM_VARIANTS["tiny"]
    grid = spec.img_size // spec.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=spec.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.img_size, spec.img_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
            vit_dim=spec.encoder_embed_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    ).eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, HQSamBackbone]:
    """Upstream HQ-SAM (random weights, perturbed so the HQ branch matters) and samkit's
    backbone loaded from its checkpoint file (a plain state dict, as `sam_hq_vit_b.pth`)."""
    torch.manual_seed(0)
    upstream = _upstream_tiny()
    with torch.no_grad():  # the HQ layers of a fresh decoder are small; make them count
        for p in upstream.mask_decoder.hf_mlp.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("hq") / "sam_hq_tiny.pth"
    torch.save(upstream.state_dict(), path)
    ours = build_sam_backbone(TINY, path)
    assert isinstance(ours, HQSamBackbone)
    return upstream, ours


def _predictor(upstream: Any, image: Tensor) -> Any:
    """An HQ-SAM predictor with `image` (1, 3, H, W) in [0, 1] set (torch resize, as samkit)."""
    return checks.set_resized_image(SamPredictor(upstream), image, 128)


class TestBuild:
    def test_is_samlike(self) -> None:
        sam = build_hq_sam_backbone(TINY)
        assert isinstance(sam, SamLike)
        assert (sam.img_size, sam.prompt_dim, sam.embedding_size) == (128, 32, (16, 16))

    def test_official_layout_matches_sam_model_registry(self) -> None:
        """`hq_vit_b` has exactly the keys and shapes of segment_anything_hq's `vit_b`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            upstream = sam_model_registry["vit_b"]()
        ours = build_hq_sam_backbone("hq_vit_b")
        want = {k: tuple(v.shape) for k, v in upstream.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert got == want

    def test_checkpoint_mismatch_is_refused(self, tmp_path: Path) -> None:
        sd = _upstream_tiny().state_dict()
        del sd["mask_decoder.hf_token.weight"]
        path = tmp_path / "bad.pth"
        torch.save(sd, path)
        with pytest.raises(RuntimeError, match=r"missing keys.*hf_token"):
            build_sam_backbone(TINY, path)

    def test_variants_and_errors(self) -> None:
        assert set(HQ_SAM_VARIANTS) == {
            "hq_vit_b",
            "hq_vit_l",
            "hq_vit_h",
            "hq_vit_tiny",
            TINY,
            LIGHT_TINY,
        }
        with pytest.raises(ValueError, match="HQ-SAM"):
            build_sam_backbone("hq_vit_x")

    def test_missing_package_names_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        checks.assert_missing_package_names_extra(monkeypatch, "segment_anything_hq", TINY, "hq")


class TestEquivalence:
    """samkit's batched HQ pipeline equals `segment_anything_hq.SamPredictor.predict_torch`."""

    def _check(self, upstream: Any, ours: HQSamBackbone, image: Tensor, i: int, **kw: Any) -> None:
        """Decoder equivalence: the predictor decodes samkit's own image features, so the
        prompt encoding, HQ fusion, decoding and upsampling are compared at 1e-5 (the encoder
        is compared on its own, below)."""
        predictor = _predictor(upstream, image[i : i + 1])
        emb = ours.encode(image)
        predictor.features = emb.embeddings[i : i + 1]
        predictor.interm_features = [emb.intermediates[0][i : i + 1].permute(0, 2, 3, 1)]
        points, labels, boxes = kw.get("points"), kw.get("labels"), kw.get("boxes")
        for hq_only in (False, True):
            for multi in (False, True):
                ref = predictor.predict_torch(
                    None if points is None else points[i],
                    None if labels is None else labels[i],
                    None if boxes is None else boxes[i],
                    multimask_output=multi,
                    return_logits=True,
                    hq_token_only=hq_only,
                )
                ours.hq_token_only = hq_only
                pred = ours.predict(
                    emb, Prompts(points=points, labels=labels, boxes=boxes), multimask=multi
                )
                name = f"image {i}, hq_token_only={hq_only}, multimask={multi}"
                checks.assert_matches_predictor(pred, ref, i, name)
        ours.hq_token_only = False

    def test_points_boxes_and_both_on_a_batch(self, pair: tuple[Any, HQSamBackbone]) -> None:
        upstream, ours = pair
        torch.manual_seed(1)
        images = torch.rand(2, 3, *ORIG)
        tf = partial(ours.transform_coords, original_size=ORIG)
        points = tf(torch.rand(2, 3, 2, 2) * torch.tensor([100.0, 60.0]))
        labels = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]] * 2)
        boxes = ours.transform_boxes(
            torch.tensor([[[5.0, 5.0, 60.0, 40.0]] * 3, [[10.0, 0.0, 90.0, 55.0]] * 3]), ORIG
        )
        for i in range(2):
            self._check(upstream, ours, images, i, points=points, labels=labels)
            self._check(upstream, ours, images, i, boxes=boxes)
            self._check(upstream, ours, images, i, points=points, labels=labels, boxes=boxes)

    def test_encoder_and_end_to_end(self, pair: tuple[Any, HQSamBackbone]) -> None:
        """The image features match upstream's encoder at 1e-5; end to end, the logits match
        to float32 rounding relative to their magnitude."""
        upstream, ours = pair
        torch.manual_seed(2)
        image = torch.rand(1, 3, *ORIG)
        predictor = _predictor(upstream, image)
        emb = ours.encode(image)
        assert checks.max_diff(emb.embeddings, predictor.features) <= checks.TOL
        early = predictor.interm_features[0].permute(0, 3, 1, 2)
        assert checks.max_diff(emb.intermediates[0], early) <= checks.TOL
        points = ours.transform_coords(torch.tensor([[[[30.0, 20.0]]]]), ORIG)
        labels = torch.ones(1, 1, 1)
        ref = predictor.predict_torch(points[0], labels[0], return_logits=True)
        pred = ours.predict(emb, Prompts(points=points, labels=labels), multimask=True)
        assert pred.logits is not None
        scale = float(ref[0].abs().max())
        assert checks.max_diff(pred.logits[0], ref[0]) <= checks.TOL + 1e-6 * scale
        assert checks.max_diff(pred.iou_scores[0], ref[1]) <= checks.TOL

    def test_hq_branch_changes_the_mask(self, pair: tuple[Any, HQSamBackbone]) -> None:
        """The HQ mask is not negligible, so the equivalence above tests the fusion too."""
        ours = pair[1]
        emb = ours.encode(torch.rand(1, 3, *ORIG))
        prompts = Prompts(points=torch.rand(1, 2, 1, 2) * 100, labels=torch.ones(1, 2, 1))
        both = ours.predict(emb, prompts, upsample=False).low_res_logits
        ours.hq_token_only = True
        hq_only = ours.predict(emb, prompts, upsample=False).low_res_logits
        ours.hq_token_only = False
        assert checks.max_diff(both, hq_only) > 1e-2 and hq_only.abs().max() > 1e-2


class TestBehaviour:
    def test_multimask_gives_one_mask(self) -> None:
        sam = build_hq_sam_backbone(TINY)
        emb = sam.encode(torch.rand(2, 3, 32, 48))
        pred = sam.predict_points(emb, torch.rand(2, 41, 2) * 128, batch_size=16)
        assert pred.low_res_logits.shape == (2, 41, 1, 64, 64)
        assert pred.tokens is not None and pred.tokens.shape == (2, 41, 1, 32)

    def test_empty_batch_and_missing_feature(self) -> None:
        sam = build_hq_sam_backbone(TINY)
        emb = sam.encode(torch.zeros(0, 3, 32, 32))
        assert emb.intermediates[0].shape == (0, 32, 16, 16)
        pred = sam.predict(emb, Prompts(points=torch.zeros(0, 2, 1, 2), labels=torch.ones(0, 2, 1)))
        assert pred.low_res_logits.shape == (0, 2, 1, 64, 64)
        emb = sam.encode(torch.rand(1, 3, 32, 32))
        emb.intermediates = []
        with pytest.raises(ValueError, match="early ViT feature"):
            sam.predict(emb, Prompts(points=torch.zeros(1, 1, 1, 2), labels=torch.ones(1, 1, 1)))

    def test_gradients_reach_the_decoder(self) -> None:
        sam = build_hq_sam_backbone(TINY)
        got = checks.decoder_gradients(sam)
        assert {n.split(".")[0] for n in got} >= set(HQSamBackbone.HQ_PARAMETERS)
        # HQ-SAM's multimask output keeps one of the three ambiguity masks per prompt, so
        # only the chosen tokens' hypernetworks get a gradient
        ambiguity = tuple(f"output_hypernetworks_mlps.{i}." for i in (1, 2, 3))
        missing = [n for n, ok in got.items() if not ok and not n.startswith(ambiguity)]
        assert not missing, missing
        assert any(ok for n, ok in got.items() if n.startswith(ambiguity))

    def test_hq_parameters(self) -> None:
        sam = build_hq_sam_backbone(TINY)
        sam.freeze()
        for p in sam.hq_parameters():
            p.requires_grad_(True)
        names = [n for n, p in sam.named_parameters() if p.requires_grad]
        assert names and all(n.split(".")[1] in HQSamBackbone.HQ_PARAMETERS for n in names)


class TestSystems(checks.SystemsChecks):
    variant = TINY


def _upstream_light_tiny() -> Any:
    """segment_anything_hq's Light HQ-SAM, wired as its `build_sam_vit_t`, on the TinyViT of
    `mobile_sam-tiny-random`."""
    spec = MOBILE_SAM_VARIANTS["mobile_sam-tiny-random"]
    return Sam(
        image_encoder=checks.upstream_tiny_vit(TinyViT, spec),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=256,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
            vit_dim=spec.embed_dims[2],
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


class TestLightHQSam:
    """Light HQ-SAM (`hq_vit_tiny`): TinyViT + HQ decoder, against segment_anything_hq."""

    def test_official_layout_matches_sam_model_registry(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            upstream = sam_model_registry["vit_tiny"]()
        ours = build_hq_sam_backbone("hq_vit_tiny")
        assert isinstance(ours, LightHQSamBackbone)
        want = {k: tuple(v.shape) for k, v in upstream.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        assert got == want

    def test_equals_the_predictor(self, tmp_path: Path) -> None:
        """Encoder (features and the fused early feature) at 1e-5 and decoder, end to end
        through the checkpoint file, for point, box and point + box prompts, with and without
        multimask, SAM + HQ mask and HQ mask alone, at 1e-5 relative to the logits' magnitude
        (measured 6e-5 at logits of ~110 with the predictor fed samkit's own features)."""
        torch.manual_seed(0)
        upstream = _upstream_light_tiny()
        with torch.no_grad():
            for name, p in upstream.image_encoder.named_parameters():
                if name.endswith("attention_biases"):
                    p.normal_()
            for p in upstream.mask_decoder.hf_mlp.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        checks.perturb_batchnorm_statistics(upstream.image_encoder)
        upstream.eval()
        path = tmp_path / "sam_hq_vit_tiny.pth"
        torch.save(upstream.state_dict(), path)
        ours = build_sam_backbone(LIGHT_TINY, path)
        assert isinstance(ours, LightHQSamBackbone)
        orig = (48, 64)
        image = torch.rand(1, 3, *orig)
        predictor = checks.set_resized_image(SamPredictor(upstream), image, 1024)
        emb = ours.encode(image)
        assert checks.max_diff(emb.embeddings, predictor.features) <= checks.TOL
        early = predictor.interm_features[0].permute(0, 3, 1, 2)
        assert checks.max_diff(emb.intermediates[0], early) <= checks.TOL
        points = ours.transform_coords(torch.tensor([[[[20.0, 30.0], [50.0, 10.0]]]]), orig)
        labels = torch.tensor([[[1.0, 0.0]]])
        box = ours.transform_boxes(torch.tensor([[[4.0, 6.0, 50.0, 40.0]]]), orig)
        # the HQ logits reach ~100 here, so float32 rounding alone is ~1e-5: relative tolerance
        checks.assert_prompt_cases_match(ours, emb, predictor, points, labels, box, relative=True)
        ours.hq_token_only = True
        ref = predictor.predict_torch(
            points[0, :, :1],
            labels[0, :, :1],
            box[0],
            multimask_output=False,
            return_logits=True,
            hq_token_only=True,
        )
        prompts = Prompts(points=points[:, :, :1], labels=labels[:, :, :1], boxes=box)
        pred = ours.predict(emb, prompts)
        checks.assert_matches_predictor(pred, ref, 0, "hq_token_only", relative=True)

    def test_empty_batch_and_gradients(self) -> None:
        sam = build_hq_sam_backbone(LIGHT_TINY)
        emb = sam.encode(torch.zeros(0, 3, 16, 16))
        assert emb.intermediates[0].shape == (0, 16, 64, 64)
        got = checks.decoder_gradients(sam)
        assert {n.split(".")[0] for n in got} >= set(HQSamBackbone.HQ_PARAMETERS)
        ambiguity = tuple(f"output_hypernetworks_mlps.{i}." for i in (1, 2, 3))
        missing = [n for n, ok in got.items() if not ok and not n.startswith(ambiguity)]
        assert not missing, missing
