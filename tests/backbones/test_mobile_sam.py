"""MobileSAM backend: equivalence with SAM's predictor on a TinyViT, checkpoints, systems."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor

from samkit.backbones._sam_build import PIXEL_MEAN, PIXEL_STD
from samkit.backbones.sam import SamLike, build_sam_backbone
from samkit.types import Prompts
from tests.backbones import _backend_checks as checks

with warnings.catch_warnings():  # timm's notes about the TinyViT names the package registers
    warnings.simplefilter("ignore")
    pytest.importorskip("segment_anything_hq")
    from segment_anything_hq import sam_model_registry
    from segment_anything_hq.modeling.tiny_vit_sam import TinyViT

from samkit.backbones.mobile_sam import (  # noqa: E402
    MOBILE_SAM_VARIANTS,
    MobileSamBackbone,
    build_mobile_sam_backbone,
)

TINY = "mobile_sam-tiny-random"
ORIG = (48, 64)


class _FeaturesOnly(TinyViT):  # type: ignore[misc]
    """MobileSAM's own TinyViT returns the features alone (segment_anything_hq's adds the
    intermediate features for Light HQ-SAM); same parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


def _upstream(variant: str) -> Any:
    """MobileSAM as its `build_sam_vit_t`: TinyViT + segment_anything's prompt encoder/decoder."""
    spec = MOBILE_SAM_VARIANTS[variant]
    return Sam(
        image_encoder=checks.upstream_tiny_vit(_FeaturesOnly, spec),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(1024, 1024),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
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
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, MobileSamBackbone]:
    """Upstream MobileSAM (random weights, attention biases and BatchNorm statistics made
    non-trivial) and samkit's backbone loaded from its checkpoint file (as `mobile_sam.pt`)."""
    torch.manual_seed(0)
    upstream = _upstream(TINY)
    with torch.no_grad():
        for name, p in upstream.image_encoder.named_parameters():
            if name.endswith("attention_biases"):
                p.normal_()
    checks.perturb_batchnorm_statistics(upstream.image_encoder)
    upstream.eval()  # caches the attention biases, as MobileSAM's users do after loading
    path = tmp_path_factory.mktemp("mobile") / "mobile_sam.pt"
    torch.save(upstream.state_dict(), path)
    ours = build_sam_backbone(TINY, path)
    assert isinstance(ours, MobileSamBackbone)
    return upstream, ours


def _predictor(upstream: Any, image: Tensor) -> SamPredictor:
    return checks.set_resized_image(SamPredictor(upstream), image, 1024)


class TestBuild:
    def test_is_samlike(self) -> None:
        sam = build_mobile_sam_backbone(TINY)
        assert isinstance(sam, SamLike)
        assert (sam.img_size, sam.prompt_dim, sam.embedding_size) == (1024, 256, (64, 64))

    def test_official_layout_matches_light_hq_sam(self) -> None:
        """`mobile_sam` has the TinyViT and prompt encoder of segment_anything_hq's `vit_tiny`
        (Light HQ-SAM = MobileSAM + HQ decoder), and SAM's decoder without HQ's additions."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            light_hq = sam_model_registry["vit_tiny"]()
        ours = build_mobile_sam_backbone("mobile_sam")
        want = {k: tuple(v.shape) for k, v in light_hq.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        hq = ("mask_decoder.hf_", "mask_decoder.compress_vit_feat", "mask_decoder.embedding_")
        assert got == {k: v for k, v in want.items() if not k.startswith(hq)}
        encoder = ours.image_encoder.named_parameters()
        # TinyViT keeps an unused ImageNet head; without it the encoder has MobileSAM's ~5.7 M
        assert sum(p.numel() for n, p in encoder if "head" not in n) < 5_800_000

    def test_checkpoint_mismatch_is_refused(self, tmp_path: Path) -> None:
        checks.assert_checkpoint_mismatch_refused(TINY, tmp_path)
        with pytest.raises(ValueError, match="MobileSAM"):
            build_sam_backbone("mobile_sam_v2")

    def test_missing_package_names_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        checks.assert_missing_package_names_extra(monkeypatch, "segment_anything_hq", TINY, "hq")


class TestEquivalence:
    """samkit's pipeline equals segment_anything's `SamPredictor.predict_torch` on MobileSAM."""

    def test_one_image(self, pair: tuple[Any, MobileSamBackbone]) -> None:
        upstream, ours = pair
        torch.manual_seed(1)
        image = torch.rand(1, 3, *ORIG)
        predictor = _predictor(upstream, image)
        emb = ours.encode(image)
        assert checks.max_diff(emb.embeddings, predictor.features) <= checks.TOL
        points = ours.transform_coords(torch.tensor([[[[20.0, 30.0], [50.0, 10.0]]]]), ORIG)
        labels = torch.tensor([[[1.0, 0.0]]])
        box = ours.transform_boxes(torch.tensor([[[4.0, 6.0, 50.0, 40.0]]]), ORIG)
        checks.assert_prompt_cases_match(ours, emb, predictor, points, labels, box)

    def test_batch_of_images(self, pair: tuple[Any, MobileSamBackbone]) -> None:
        upstream, ours = pair
        torch.manual_seed(2)
        images = torch.rand(2, 3, *ORIG)
        points = ours.transform_coords(torch.rand(2, 2, 1, 2) * 48, ORIG)
        labels = torch.ones(2, 2, 1)
        pred = ours.predict(
            ours.encode(images), Prompts(points=points, labels=labels), multimask=True
        )
        for i in range(2):
            ref = _predictor(upstream, images[i : i + 1]).predict_torch(
                points[i], labels[i], multimask_output=True, return_logits=True
            )
            checks.assert_matches_predictor(pred, ref, i, f"image {i}")


class TestBehaviour:
    def test_empty_batch_and_no_taps(self) -> None:
        sam = build_mobile_sam_backbone(TINY)
        assert sam.encode(torch.zeros(0, 3, 16, 16)).embeddings.shape == (0, 256, 64, 64)
        with pytest.raises(ValueError, match="intermediates"):
            sam.encode(torch.rand(1, 3, 16, 16), intermediates=(1,))

    def test_gradients_reach_the_decoder(self) -> None:
        sam = build_mobile_sam_backbone(TINY)
        checks.assert_decoder_gets_gradients(sam)


class TestSystems(checks.SystemsChecks):
    variant = TINY
    # a 64x64 grid with D = 256 is slow to decode on the CPU: a 2x2 prompt grid
    sam_mi_overrides: ClassVar[dict[str, object]] = {
        "prompting": "grid",
        "grid": 2,
        "use_smagg": False,
    }
