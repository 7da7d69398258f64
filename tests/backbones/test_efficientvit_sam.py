"""EfficientViT-SAM backend: layout and equivalence with the `efficientsam` package, systems."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import Tensor

from samkit.backbones.sam import SamLike, build_sam_backbone
from samkit.types import Prompts
from tests.backbones import _backend_checks as checks

pytest.importorskip("efficientsam")
from efficientsam.models.efficientvit.sam import (  # noqa: E402
    EfficientViTSamPredictor,
    build_efficientvit_sam,
)
from efficientsam.models.nn.norm import set_norm_eps  # noqa: E402
from efficientsam.sam_model_zoo import create_efficientvit_sam_model  # noqa: E402

from samkit.backbones.efficientvit_sam import (  # noqa: E402
    EFFICIENTVIT_SAM_VARIANTS,
    EfficientVitSamBackbone,
    build_efficientvit_encoder,
    build_efficientvit_sam_backbone,
)

TINY = "efficientvit_sam-tiny-random"
ORIG = (96, 128)  # long side = the tiny preset's encoder size: the package's PIL resize is a no-op


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, EfficientVitSamBackbone]:
    """The package's `EfficientViTSam` on the tiny encoder (random weights, BatchNorm statistics
    made non-trivial) and samkit's backbone loaded from its checkpoint file."""
    torch.manual_seed(0)
    spec = EFFICIENTVIT_SAM_VARIANTS[TINY]
    upstream = build_efficientvit_sam(build_efficientvit_encoder(spec), spec.encoder_size)
    set_norm_eps(upstream, 1e-6)  # as create_efficientvit_sam_model
    checks.perturb_batchnorm_statistics(upstream.image_encoder)
    upstream.eval()
    path = tmp_path_factory.mktemp("effvit") / "efficientvit_sam_tiny.pt"
    torch.save({"state_dict": upstream.state_dict()}, path)  # wrapped, as the package accepts
    ours = build_sam_backbone(TINY, path)
    assert isinstance(ours, EfficientVitSamBackbone)
    return upstream, ours


def _uint8_images(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *ORIG), generator=g, dtype=torch.uint8)


def _hwc(image: Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


class TestBuild:
    def test_is_samlike(self) -> None:
        sam = build_efficientvit_sam_backbone(TINY)
        assert isinstance(sam, SamLike)
        assert (sam.img_size, sam.prompt_dim, sam.embedding_size) == (1024, 256, (64, 64))

    def test_official_layouts_match_the_package(self) -> None:
        """Each preset has the state-dict keys and shapes of the package's model of that name,
        its input size and its normalisation epsilons."""
        for name in ("l0", "l1", "l2", "xl0", "xl1"):
            ref = create_efficientvit_sam_model(f"efficientvit-sam-{name}", pretrained=False)
            ours = build_efficientvit_sam_backbone(f"efficientvit_sam_{name}")
            want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
            assert got == want, name
            assert ours.encoder_size == ref.image_size[1], name
            ref_eps = {n: m.eps for n, m in ref.named_modules() if hasattr(m, "eps")}
            our_eps = {n: m.eps for n, m in ours.named_modules() if hasattr(m, "eps")}
            assert our_eps == ref_eps, name

    def test_checkpoint_mismatch_and_unknown_variant(self, tmp_path: Path) -> None:
        checks.assert_checkpoint_mismatch_refused(TINY, tmp_path)
        with pytest.raises(ValueError, match="EfficientViT-SAM"):
            build_efficientvit_sam_backbone("efficientvit_sam_l3")

    def test_missing_package_names_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        checks.assert_missing_package_names_extra(monkeypatch, "efficientsam", TINY, "efficientvit")


class TestEquivalence:
    """samkit's pipeline equals the package's `EfficientViTSamPredictor` (return_logits)."""

    def test_one_image(self, pair: tuple[Any, EfficientVitSamBackbone]) -> None:
        upstream, ours = pair
        image = _uint8_images(1, seed=1)
        predictor = EfficientViTSamPredictor(upstream)
        predictor.set_image(_hwc(image[0]))
        emb = ours.encode(image)
        assert emb.input_size == tuple(predictor.input_size)
        assert checks.max_diff(emb.embeddings, predictor.features) <= checks.TOL
        raw = torch.tensor([[20.0, 30.0], [100.0, 10.0]])
        points = ours.transform_coords(raw[None, None], ORIG)
        assert torch.equal(points[0, 0], predictor.apply_coords_torch(raw))
        labels = torch.tensor([[[1.0, 0.0]]])
        box = ours.transform_boxes(torch.tensor([[[4.0, 6.0, 90.0, 70.0]]]), ORIG)
        checks.assert_prompt_cases_match(ours, emb, predictor, points, labels, box)

    def test_batch_of_images(self, pair: tuple[Any, EfficientVitSamBackbone]) -> None:
        """Two images, two prompts each (points, then points + boxes), against the package's
        `set_image_batch` on its own transform of each image (`image_index` per image)."""
        upstream, ours = pair
        images = _uint8_images(2, seed=2)
        predictor = EfficientViTSamPredictor(upstream)
        batch = torch.stack([upstream.transform(_hwc(im)) for im in images])
        predictor.set_image_batch(batch)
        # set_image_batch takes the padded input's size for the original one; give it the
        # frames set_image would have computed, so the upsampled logits are comparable
        predictor.original_size = ORIG
        predictor.input_size = ours.encode(images[:0]).input_size
        torch.manual_seed(3)
        points = ours.transform_coords(torch.rand(2, 2, 1, 2) * 90, ORIG)
        labels = torch.ones(2, 2, 1)
        boxes = ours.transform_boxes(torch.tensor([[10.0, 5.0, 80.0, 60.0]]).expand(2, 2, 4), ORIG)
        emb = ours.encode(images.float() / 255)
        assert checks.max_diff(emb.embeddings, predictor.features) <= checks.TOL
        for name, b in (("points", None), ("points + boxes", boxes)):
            prompts = Prompts(points=points, labels=labels, boxes=b)
            pred = ours.predict(emb, prompts, multimask=True)
            for i in range(2):
                ref = predictor.predict_torch(
                    points[i],
                    labels[i],
                    None if b is None else b[i],
                    multimask_output=True,
                    return_logits=True,
                    image_index=i,
                )
                checks.assert_matches_predictor(pred, ref, i, f"{name}, image {i}")

    def test_resized_input_within_one_grey_level(
        self, pair: tuple[Any, EfficientVitSamBackbone]
    ) -> None:
        """On an image that must be resized, the encoder input differs from the package's
        (PIL resize, rounded to uint8) by at most about one grey level: 1/255 of the range,
        divided by SAM's smallest pixel std."""
        upstream, ours = pair
        g = torch.Generator().manual_seed(4)
        image = torch.randint(0, 256, (1, 3, 60, 90), generator=g, dtype=torch.uint8)
        x, input_size = ours.preprocess(image)
        ref = upstream.transform(_hwc(image[0]))[None]
        assert x.shape == ref.shape == (1, 3, 128, 128)
        assert input_size == (683, 1024)
        one_level = 255 / 57.12 / 255
        assert checks.max_diff(x, ref) <= 1.01 * one_level


class TestBehaviour:
    def test_empty_batch_and_no_taps(self) -> None:
        sam = build_efficientvit_sam_backbone(TINY)
        assert sam.encode(torch.zeros(0, 3, 16, 16)).embeddings.shape == (0, 256, 64, 64)
        with pytest.raises(ValueError, match="intermediates"):
            sam.encode(torch.rand(1, 3, 16, 16), intermediates=(1,))
        with pytest.raises(NotImplementedError):
            sam.to_segment_anything()

    def test_gradients_reach_the_decoder(self) -> None:
        sam = build_efficientvit_sam_backbone(TINY)
        checks.assert_decoder_gets_gradients(sam)

    def test_bfloat16_model_encodes_like_autocast(self) -> None:
        # the package upcasts attention and upsampling to float32 (made for autocast); a
        # bfloat16 model must still encode, in bfloat16, close to the float32 and autocast runs
        torch.manual_seed(0)
        sam = build_efficientvit_sam_backbone(TINY).eval()
        images = torch.rand(1, 3, 40, 56)
        with torch.no_grad():
            ref = sam.encode(images).embeddings
            with torch.autocast("cpu", dtype=torch.bfloat16):
                auto = sam.encode(images).embeddings
            half = sam.to(torch.bfloat16).encode(images).embeddings
        assert half.dtype == torch.bfloat16
        for other in (ref, auto.float()):  # weights rounded to bf16: close, not equal
            assert ((half.float() - other).norm() / other.norm()).item() < 0.05


class TestSystems(checks.SystemsChecks):
    variant = TINY
    # a 64x64 grid with D = 256 is slow to decode on the CPU: a 2x2 prompt grid
    sam_mi_overrides: ClassVar[dict[str, object]] = {
        "prompting": "grid",
        "grid": 2,
        "use_smagg": False,
    }
