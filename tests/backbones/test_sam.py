from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor

from samkit.backbones.sam import SamBackbone, SamLike, build_sam_backbone
from samkit.losses.segmentation import dice_loss
from samkit.types import ImageEmbedding, MaskPrediction, Prompts

ORIG = (60, 100)  # a non-square original image (H, W)


def _fresh(tiny_sam: SamBackbone) -> SamBackbone:
    return copy.deepcopy(tiny_sam)


def _upstream_predictor(sam: SamBackbone, image: Tensor) -> SamPredictor:
    """A segment_anything predictor on the same weights, with `image` (1, 3, H, W) in [0, 1] set."""
    predictor = SamPredictor(sam.to_segment_anything())
    size = ResizeLongestSide.get_preprocess_shape(image.shape[-2], image.shape[-1], sam.img_size)
    resized = F.interpolate(image * 255, size, mode="bilinear", align_corners=False, antialias=True)
    predictor.set_torch_image(resized, tuple(image.shape[-2:]))
    return predictor


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max())


class TestBuild:
    def test_tiny_sizes(self, tiny_sam: SamBackbone) -> None:
        assert tiny_sam.img_size == 128
        assert tiny_sam.prompt_dim == 32
        assert tiny_sam.embedding_size == (16, 16)
        assert tiny_sam.mask_threshold == 0.0
        assert tiny_sam.num_multimask_outputs == 3
        assert tiny_sam.image_encoder.patch_embed.proj.kernel_size == (8, 8)
        assert tiny_sam.prompt_encoder.mask_input_size == (64, 64)
        assert not tiny_sam.training

    def test_small_sizes_and_decoder_width(self) -> None:
        small = build_sam_backbone("small")
        assert (small.img_size, small.prompt_dim, small.embedding_size) == (128, 128, (16, 16))
        assert small.image_encoder.patch_embed.proj.kernel_size == (8, 8)
        # the point of the variant: a 4x wider mask-upscaling path than `tiny` (8 -> 32 channels)
        up = [
            m
            for m in small.mask_decoder.output_upscaling
            if isinstance(m, torch.nn.ConvTranspose2d)
        ]
        assert [m.out_channels for m in up] == [32, 16]
        emb = small.encode(torch.rand(2, 3, 96, 128))
        assert emb.embeddings.shape == (2, 128, 16, 16)
        prompts = Prompts(points=torch.rand(2, 3, 1, 2) * 96, labels=torch.ones(2, 3, 1))
        pred = small.predict(emb, prompts)
        assert pred.low_res_logits.shape == (2, 3, 1, 64, 64)
        assert pred.logits is not None and pred.logits.shape == (2, 3, 1, 96, 128)

    def test_vit_b_matches_upstream_builder(self) -> None:
        ours = build_sam_backbone("vit_b")
        theirs = sam_model_registry["vit_b"]()
        ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
        theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert ours_shapes == theirs_shapes
        n_params = sum(p.numel() for p in ours.parameters())
        assert n_params == sum(p.numel() for p in theirs.parameters())
        assert 93_000_000 < n_params < 94_500_000
        assert (ours.img_size, ours.prompt_dim, ours.embedding_size) == (1024, 256, (64, 64))
        assert all(p.requires_grad for p in ours.parameters())
        assert not ours.training

    @pytest.mark.slow
    @pytest.mark.parametrize("variant", ["vit_l", "vit_h"])
    def test_large_variants_match_upstream_builder(self, variant: str) -> None:
        ours = {k: tuple(v.shape) for k, v in build_sam_backbone(variant).state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in sam_model_registry[variant]().state_dict().items()}
        assert ours == theirs

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"unknown SAM variant 'vit_x'.*'tiny'"):
            build_sam_backbone("vit_x")

    def test_protocol(self, tiny_sam: SamBackbone) -> None:
        assert isinstance(tiny_sam, SamLike)
        assert not isinstance(torch.nn.Linear(2, 2), SamLike)

    def test_to_segment_anything_shares_modules(self, tiny_sam: SamBackbone) -> None:
        sam = tiny_sam.to_segment_anything()
        assert sam.image_encoder is tiny_sam.image_encoder
        assert sam.mask_decoder is tiny_sam.mask_decoder
        torch.testing.assert_close(sam.pixel_mean, tiny_sam.pixel_mean)

    def test_freeze(self, tiny_sam: SamBackbone) -> None:
        sam = _fresh(tiny_sam)
        trainable = sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)
        assert trainable and all(n.startswith("mask_decoder.") for n in trainable)
        assert trainable == [n for n, _ in sam.mask_decoder.named_parameters(prefix="mask_decoder")]
        assert sam.freeze(image_encoder=False, prompt_encoder=False, mask_decoder=False) == [
            n for n, _ in sam.named_parameters()
        ]
        assert sam.freeze() == []


class TestCheckpoint:
    @pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
    def test_roundtrip(self, tiny_sam: SamBackbone, tmp_path: Path, suffix: str) -> None:
        path = tmp_path / f"sam_tiny{suffix}"
        state = tiny_sam.to_segment_anything().state_dict()  # upstream Sam's own keys
        if suffix == ".pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        torch.manual_seed(123)
        fresh = build_sam_backbone("tiny")
        assert (
            _max_diff(fresh.mask_decoder.iou_token.weight, tiny_sam.mask_decoder.iou_token.weight)
            > 0
        )
        loaded = build_sam_backbone("tiny", checkpoint=path)
        for (k, a), (k2, b) in zip(
            loaded.state_dict().items(), tiny_sam.state_dict().items(), strict=True
        ):
            assert k == k2
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        img = torch.rand(1, 3, 40, 32)
        torch.testing.assert_close(loaded.encode(img).embeddings, tiny_sam.encode(img).embeddings)

    def test_wrapped_state_dict(self, tiny_sam: SamBackbone, tmp_path: Path) -> None:
        path = tmp_path / "wrapped.pt"
        torch.save({"model": tiny_sam.state_dict()}, path)
        loaded = build_sam_backbone("tiny", checkpoint=path)
        torch.testing.assert_close(loaded.dense_pe(), tiny_sam.dense_pe(), rtol=0, atol=0)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(
            FileNotFoundError, match=r"SAM checkpoint not found: .*nope\.pth.*never downloads"
        ):
            build_sam_backbone("tiny", checkpoint=tmp_path / "nope.pth")

    def test_missing_and_unexpected_keys(self, tiny_sam: SamBackbone, tmp_path: Path) -> None:
        state = dict(tiny_sam.state_dict())
        state.pop("mask_decoder.iou_token.weight")
        state["mask_decoder.hq_token.weight"] = torch.zeros(1, 32)
        path = tmp_path / "bad.pth"
        torch.save(state, path)
        with pytest.raises(
            RuntimeError,
            match=r"missing keys \(1\): \['mask_decoder\.iou_token\.weight'\]; "
            r"unexpected keys \(1\): \['mask_decoder\.hq_token\.weight'\]",
        ):
            build_sam_backbone("tiny", checkpoint=path)

    def test_wrong_variant(self, tiny_sam: SamBackbone, tmp_path: Path) -> None:
        state = dict(tiny_sam.state_dict())
        state["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
        path = tmp_path / "shape.pth"
        torch.save(state, path)
        with pytest.raises(RuntimeError, match="size mismatch for mask_decoder.iou_token.weight"):
            build_sam_backbone("tiny", checkpoint=path)

    def test_not_a_state_dict(self, tmp_path: Path) -> None:
        path = tmp_path / "list.pth"
        torch.save([torch.zeros(1)], path)
        with pytest.raises(ValueError, match="expected a dict, got list"):
            build_sam_backbone("tiny", checkpoint=path)


@pytest.mark.slow
def test_official_checkpoint() -> None:
    """Opt-in: `SAMKIT_SAM_CHECKPOINT=/path/sam_vit_b_01ec64.pth pytest -m slow -k official`."""
    path = os.environ.get("SAMKIT_SAM_CHECKPOINT")
    if not path:
        pytest.skip("set SAMKIT_SAM_CHECKPOINT to a local official SAM checkpoint")
    variant = next((v for v in ("vit_b", "vit_l", "vit_h") if v in Path(path).name), "vit_h")
    ours = build_sam_backbone(variant, checkpoint=path)
    theirs = sam_model_registry[variant](checkpoint=path)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    emb = ImageEmbedding(torch.randn(1, 256, 64, 64), (1024, 768), (480, 360))
    boxes = torch.tensor([[[100.0, 200.0, 600.0, 900.0]]])
    got = ours.predict(emb, Prompts(boxes=boxes), multimask=True, upsample=False)
    s, d = theirs.prompt_encoder(None, boxes[0], None)
    want_low, want_iou = theirs.mask_decoder(
        emb.embeddings, theirs.prompt_encoder.get_dense_pe(), s, d, True
    )
    torch.testing.assert_close(got.low_res_logits[0], want_low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.iou_scores[0], want_iou, atol=1e-4, rtol=1e-4)


class TestFrames:
    @pytest.mark.parametrize("size", [(60, 100), (100, 60), (128, 128), (200, 150)])
    def test_preprocess_matches_upstream(
        self, tiny_sam: SamBackbone, size: tuple[int, int]
    ) -> None:
        images = torch.rand(2, 3, *size)
        x, input_size = tiny_sam.preprocess(images)
        assert x.shape == (2, 3, 128, 128)
        assert input_size == ResizeLongestSide.get_preprocess_shape(*size, 128)
        assert max(input_size) == 128
        resized = F.interpolate(
            images * 255, input_size, mode="bilinear", align_corners=False, antialias=True
        )
        want = tiny_sam.to_segment_anything().preprocess(resized)
        torch.testing.assert_close(x, want, atol=1e-4, rtol=1e-5)
        assert (x[..., input_size[0] :, :] == 0).all() and (x[..., input_size[1] :] == 0).all()

    def test_coords_and_boxes_match_upstream(self, tiny_sam: SamBackbone) -> None:
        transform = ResizeLongestSide(128)
        coords = torch.rand(3, 4, 2) * torch.tensor([100.0, 60.0])
        boxes = torch.tensor([[3.0, 4.0, 50.0, 59.0], [0.0, 0.0, 100.0, 60.0]])
        torch.testing.assert_close(
            tiny_sam.transform_coords(coords, ORIG), transform.apply_coords_torch(coords, ORIG)
        )
        torch.testing.assert_close(
            tiny_sam.transform_boxes(boxes, ORIG), transform.apply_boxes_torch(boxes, ORIG)
        )
        # the far corner of the image lands on the far corner of the resized image
        torch.testing.assert_close(
            tiny_sam.transform_boxes(boxes[1], ORIG), torch.tensor([0.0, 0.0, 128.0, 77.0])
        )
        assert tiny_sam.transform_coords(torch.tensor([[10, 20]]), ORIG).dtype == torch.float32

    def test_postprocess_matches_upstream(self, tiny_sam: SamBackbone) -> None:
        masks = torch.randn(2, 4, 3, 64, 64)
        got = tiny_sam.postprocess_masks(masks, (77, 128), ORIG)
        assert got.shape == (2, 4, 3, *ORIG)
        want = tiny_sam.to_segment_anything().postprocess_masks(
            masks.flatten(0, 1), (77, 128), ORIG
        )
        torch.testing.assert_close(got, want.reshape(2, 4, 3, *ORIG))

    def test_exception(self, tiny_sam: SamBackbone) -> None:
        with pytest.raises(ValueError, match=r"images: expected shape \(B, 3, H, W\)"):
            tiny_sam.preprocess(torch.rand(1, 4, 8, 8))
        with pytest.raises(ValueError, match=r"images: expected 4 dims"):
            tiny_sam.encode(torch.rand(3, 8, 8))
        with pytest.raises(ValueError, match=r"coords: expected shape \(\.\.\., 2\)"):
            tiny_sam.transform_coords(torch.rand(4, 3), ORIG)
        with pytest.raises(ValueError, match=r"boxes: expected shape \(\.\.\., 4\)"):
            tiny_sam.transform_boxes(torch.rand(4, 2), ORIG)


class TestEncode:
    def test_intermediates(self, tiny_sam: SamBackbone) -> None:
        images = torch.rand(2, 3, 50, 70)
        seen: dict[int, Tensor] = {}
        hooks = [
            block.register_forward_hook(lambda _m, _i, out, i=i: seen.__setitem__(i, out))
            for i, block in enumerate(tiny_sam.image_encoder.blocks)
        ]
        try:
            plain = tiny_sam.encode(images)
            seen.clear()
            tapped = tiny_sam.encode(images, intermediates=(-1, 0))
        finally:
            for hook in hooks:
                hook.remove()
        assert plain.intermediates == []
        torch.testing.assert_close(tapped.embeddings, plain.embeddings, rtol=0, atol=0)
        assert [t.shape for t in tapped.intermediates] == [(2, 32, 16, 16)] * 2
        torch.testing.assert_close(tapped.intermediates[0], seen[1].permute(0, 3, 1, 2))
        torch.testing.assert_close(tapped.intermediates[1], seen[0].permute(0, 3, 1, 2))
        assert tapped.select(1).intermediates[0].shape == (1, 32, 16, 16)

    def test_exception(self, tiny_sam: SamBackbone) -> None:
        with pytest.raises(
            ValueError, match=r"intermediates: expected block indices in \[-2, 2\), got \[2\]"
        ):
            tiny_sam.encode(torch.rand(1, 3, 8, 8), intermediates=(0, 2))


class TestInputContract:
    """Regression tests of issue #11 item 5 (each failed on f8b78a2)."""

    def test_uint8_images_are_scaled(self, tiny_sam: SamBackbone) -> None:
        # before: uint8 passed as 0..255 floats and changed the embedding by ~3.6
        images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
        got = tiny_sam.encode(images).embeddings
        want = tiny_sam.encode(images.float() / 255).embeddings
        torch.testing.assert_close(got, want, rtol=0, atol=0)

    @pytest.mark.parametrize("bad", [255.0, -0.5, float("nan"), float("inf")])
    def test_invalid_float_images(self, tiny_sam: SamBackbone, bad: float) -> None:
        images = torch.rand(1, 3, 40, 56)
        images[0, 1, 3, 4] = bad
        with pytest.raises(
            ValueError, match=r"^images: expected (float values in \[0, 1\]|finite)"
        ):
            tiny_sam.encode(images)

    def test_low_precision_images(self, tiny_sam: SamBackbone) -> None:
        # a pin, not a regression: this already held on f8b78a2
        images = torch.rand(2, 3, 40, 56)
        want = tiny_sam.encode(images).embeddings
        for dtype, atol in [(torch.float64, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)]:
            got = tiny_sam.encode(images.to(dtype)).embeddings
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, atol=atol, rtol=0)

    def test_empty_batch(self, tiny_sam: SamBackbone) -> None:
        # before: a reshape error inside segment_anything's window attention
        emb = tiny_sam.encode(torch.rand(0, 3, 40, 56), intermediates=(0,))
        assert emb.embeddings.shape == (0, 32, 16, 16)
        assert emb.input_size == (91, 128) and emb.original_size == (40, 56)
        assert [t.shape for t in emb.intermediates] == [(0, 32, 16, 16)]
        # before: ZeroDivisionError in einops
        prompts = Prompts(points=torch.zeros(0, 5, 1, 2), labels=torch.ones(0, 5, 1))
        pred = tiny_sam.predict(emb, prompts, multimask=True)
        assert pred.low_res_logits.shape == (0, 5, 3, 64, 64)
        assert pred.logits is not None and pred.logits.shape == (0, 5, 3, 40, 56)
        assert pred.iou_scores.shape == (0, 5, 3)
        assert pred.tokens is not None and pred.tokens.shape == (0, 5, 3, 32)
        assert tiny_sam.predict(emb, Prompts()).low_res_logits.shape == (0, 1, 1, 64, 64)
        points = tiny_sam.predict_points(emb, torch.zeros(0, 7, 2), upsample=True)
        assert points.low_res_logits.shape == (0, 7, 3, 64, 64)
        assert points.logits is not None and points.logits.shape == (0, 7, 3, 40, 56)
        out = tiny_sam(torch.zeros(0, 3, 40, 56, dtype=torch.uint8), prompts)
        assert out.low_res_logits.shape == (0, 5, 1, 64, 64)

    @pytest.mark.parametrize("label", [2, 3, -2, 0.5])
    def test_point_labels_outside_sam_set(self, tiny_sam: SamBackbone, label: float) -> None:
        # before: label 2 silently embedded a bare positional encoding (no label embedding)
        emb = ImageEmbedding(torch.zeros(1, 32, 16, 16), (128, 128), (128, 128))
        labels = torch.tensor([[[1.0, label]]])
        with pytest.raises(
            ValueError, match=r"^prompts\.labels: expected SAM point labels in \{-1, 0, 1\}"
        ):
            tiny_sam.predict(emb, Prompts(points=torch.zeros(1, 1, 2, 2), labels=labels))
        with pytest.raises(ValueError, match=r"^labels: expected SAM point labels"):
            tiny_sam.predict_points(emb, torch.zeros(1, 2, 2), labels[0])

    def test_float64_embedding_and_prompts(self, tiny_sam: SamBackbone) -> None:
        # before: "mat1 and mat2 must have the same dtype" from inside the mask decoder
        emb = ImageEmbedding(torch.randn(1, 32, 16, 16), (128, 96), (128, 96))
        prompts = Prompts(points=torch.rand(1, 2, 1, 2) * 90, labels=torch.ones(1, 2, 1))
        want = tiny_sam.predict(emb, prompts)
        got = tiny_sam.predict(emb.to(torch.float64), prompts.to(torch.float64))
        assert got.low_res_logits.dtype == torch.float32
        torch.testing.assert_close(got.low_res_logits, want.low_res_logits, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def image() -> Tensor:
    return torch.rand(1, 3, *ORIG, generator=torch.Generator().manual_seed(1))


class TestEquivalenceWithPredictor:
    """samkit's pipeline equals `SamPredictor.predict_torch` on the same random weights."""

    @pytest.mark.parametrize("multimask", [True, False])
    @pytest.mark.parametrize("kind", ["points", "box", "mask", "points+box+mask"])
    def test_predict_torch(
        self, tiny_sam: SamBackbone, image: Tensor, kind: str, multimask: bool
    ) -> None:
        g = torch.Generator().manual_seed(2)
        k = 4
        points = tiny_sam.transform_coords(
            torch.rand(k, 3, 2, generator=g) * torch.tensor([100.0, 60.0]), ORIG
        )
        labels = torch.randint(0, 2, (k, 3), generator=g)
        xy = torch.rand(k, 2, 2, generator=g).sort(dim=1).values * torch.tensor([100.0, 60.0])
        boxes = tiny_sam.transform_boxes(xy.flatten(1), ORIG)
        masks = torch.randn(k, 1, 64, 64, generator=g)
        use_pts, use_box, use_mask = (
            "points" in kind or kind == "mask",
            "box" in kind,
            "mask" in kind,
        )

        predictor = _upstream_predictor(tiny_sam, image)
        want_masks, want_iou, want_low = predictor.predict_torch(
            point_coords=points if use_pts else None,
            point_labels=labels if use_pts else None,
            boxes=boxes if use_box else None,
            mask_input=masks if use_mask else None,
            multimask_output=multimask,
            return_logits=True,
        )
        prompts = Prompts(
            points=points[None] if use_pts else None,
            labels=labels[None] if use_pts else None,
            boxes=boxes[None] if use_box else None,
            masks=masks[None] if use_mask else None,
        )
        emb = tiny_sam.encode(image)
        diff = _max_diff(emb.embeddings, predictor.features)
        assert diff < 1e-4, f"image embeddings differ by {diff:.2e}"
        got = tiny_sam.predict(emb, prompts, multimask=multimask)
        m = 3 if multimask else 1
        assert got.low_res_logits.shape == (1, k, m, 64, 64)
        assert got.logits is not None and got.logits.shape == (1, k, m, *ORIG)
        for name, a, b in [
            ("low_res_logits", got.low_res_logits[0], want_low),
            ("iou_scores", got.iou_scores[0], want_iou),
            ("logits", got.logits[0], want_masks),
        ]:
            diff = _max_diff(a, b)
            assert diff < 1e-4, f"{name}: max abs diff to SamPredictor.predict_torch = {diff:.2e}"

    def test_embed_prompts_matches_prompt_encoder(self, tiny_sam: SamBackbone) -> None:
        points = torch.rand(2, 3, 4, 2) * 128
        labels = torch.tensor([1, 0, -1, 1]).repeat(2, 3, 1)
        boxes = torch.tensor([10.0, 20.0, 90.0, 70.0]).repeat(2, 3, 1)
        pe = tiny_sam.prompt_encoder
        for with_box in (False, True):
            prompts = Prompts(points=points, labels=labels, boxes=boxes if with_box else None)
            sparse, dense = tiny_sam.embed_prompts(prompts)
            want_sparse, want_dense = pe(
                (points.flatten(0, 1), labels.flatten(0, 1)),
                boxes.flatten(0, 1) if with_box else None,
                None,
            )
            assert sparse.shape == (2, 3, 6 if with_box else 5, 32)
            torch.testing.assert_close(sparse.flatten(0, 1), want_sparse)
            torch.testing.assert_close(dense.flatten(0, 1), want_dense)

    def test_raw_embeddings(self, tiny_sam: SamBackbone) -> None:
        points, labels = torch.rand(2, 3, 1, 2) * 128, torch.ones(2, 3, 1)
        extra = torch.randn(2, 3, 5, 32)
        dense_in = torch.randn(2, 3, 32, 16, 16)
        base_sparse, _ = tiny_sam.embed_prompts(Prompts(points=points, labels=labels))
        sparse, dense = tiny_sam.embed_prompts(
            Prompts(
                points=points, labels=labels, sparse_embeddings=extra, dense_embeddings=dense_in
            )
        )
        torch.testing.assert_close(sparse, torch.cat([base_sparse, extra], dim=2))
        torch.testing.assert_close(dense, dense_in)
        # only raw sparse embeddings: no padding point, SAM's no_mask_embed as dense
        sparse, dense = tiny_sam.embed_prompts(Prompts(sparse_embeddings=extra))
        torch.testing.assert_close(sparse, extra)
        no_mask = tiny_sam.prompt_encoder.no_mask_embed.weight[0]
        torch.testing.assert_close(
            dense, no_mask[None, None, :, None, None].expand(2, 3, 32, 16, 16)
        )

    def test_empty_prompts(self, tiny_sam: SamBackbone, image: Tensor) -> None:
        sparse, dense = tiny_sam.embed_prompts(Prompts(), batch_shape=(2, 3))
        assert sparse.shape == (2, 3, 0, 32) and dense.shape == (2, 3, 32, 16, 16)
        with pytest.raises(ValueError, match="prompts are empty; pass batch_shape"):
            tiny_sam.embed_prompts(Prompts())
        # an empty prompt decodes like upstream with nothing but the dense no-mask embedding
        emb = tiny_sam.encode(image)
        got = tiny_sam.predict(emb, Prompts(), multimask=True)
        assert got.low_res_logits.shape == (1, 1, 3, 64, 64)
        s, d = tiny_sam.prompt_encoder(None, None, None)
        want_low, want_iou = tiny_sam.mask_decoder(emb.embeddings, tiny_sam.dense_pe(), s, d, True)
        torch.testing.assert_close(got.low_res_logits[0], want_low)
        torch.testing.assert_close(got.iou_scores[0], want_iou)


class TestDecode:
    @pytest.fixture(scope="class")
    @classmethod
    def embedding(cls, tiny_sam: SamBackbone) -> ImageEmbedding:
        with torch.no_grad():
            return tiny_sam.encode(
                torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(3))
            )

    @given(data=st.data())
    def test_batched_equals_per_image(
        self, tiny_sam: SamBackbone, embedding: ImageEmbedding, data: st.DataObject
    ) -> None:
        b = data.draw(st.integers(1, 3), label="B")
        k = data.draw(st.integers(1, 4), label="K")
        n = data.draw(st.integers(0, 3), label="N")
        multimask = data.draw(st.booleans(), label="multimask")
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
        emb = embedding.select(slice(0, b))
        sparse = torch.randn(b, k, n, 32, generator=g)
        dense = torch.randn(b, k, 32, 16, 16, generator=g)
        with torch.no_grad():
            out = tiny_sam.decode(emb, sparse, dense, multimask=multimask)
            for i in range(b):
                one = tiny_sam.decode(
                    emb.select(i), sparse[i : i + 1], dense[i : i + 1], multimask=multimask
                )
                for name in ("low_res_logits", "iou_scores", "logits", "tokens"):
                    torch.testing.assert_close(
                        getattr(out, name)[i : i + 1], getattr(one, name), atol=1e-5, rtol=1e-4
                    )
            # each prompt alone gives the same masks: prompts of one image do not interact
            j = k - 1
            alone = tiny_sam.decode(
                emb, sparse[:, j : j + 1], dense[:, j : j + 1], multimask=multimask
            )
            torch.testing.assert_close(
                out.low_res_logits[:, j : j + 1], alone.low_res_logits, atol=1e-5, rtol=1e-4
            )
            # permuting the prompts permutes the outputs
            perm = torch.randperm(k, generator=g)
            permuted = tiny_sam.decode(emb, sparse[:, perm], dense[:, perm], multimask=multimask)
            torch.testing.assert_close(
                permuted.iou_scores, out.iou_scores[:, perm], atol=1e-5, rtol=1e-4
            )

    def test_batch_independence_of_gradients(
        self, tiny_sam: SamBackbone, embedding: ImageEmbedding
    ) -> None:
        emb = ImageEmbedding(
            embedding.embeddings.clone().requires_grad_(),
            embedding.input_size,
            embedding.original_size,
        )
        sparse = torch.randn(3, 2, 3, 32, requires_grad=True)
        dense = torch.randn(3, 2, 32, 16, 16, requires_grad=True)
        out = tiny_sam.decode(emb, sparse, dense, multimask=True, upsample=False)
        out.low_res_logits[0].sum().backward()
        for name, t in (("embeddings", emb.embeddings), ("sparse", sparse), ("dense", dense)):
            assert t.grad is not None
            assert t.grad[0].abs().sum() > 0, name
            assert (t.grad[1:] == 0).all(), name

    def test_shapes_and_tokens(self, tiny_sam: SamBackbone, embedding: ImageEmbedding) -> None:
        sparse, dense = torch.randn(3, 2, 4, 32), torch.randn(3, 2, 32, 16, 16)
        out = tiny_sam.decode(embedding, sparse, dense, multimask=True, upsample=False)
        assert isinstance(out, MaskPrediction)
        assert out.low_res_logits.shape == (3, 2, 3, 64, 64)
        assert out.iou_scores.shape == (3, 2, 3)
        assert out.tokens is not None and out.tokens.shape == (3, 2, 3, 32)
        assert out.logits is None
        single = tiny_sam.decode(embedding, sparse, dense, multimask=False)
        assert single.logits is not None and single.logits.shape == (3, 2, 1, 48, 64)
        # multimask selects decoder tokens 1..3, single-mask token 0, from the same decoder pass
        assert _max_diff(single.tokens, out.tokens[:, :, :1]) > 1e-3  # type: ignore[index,arg-type]

    def test_exception(self, tiny_sam: SamBackbone, embedding: ImageEmbedding) -> None:
        sparse, dense = torch.randn(3, 2, 4, 32), torch.randn(3, 2, 32, 16, 16)
        with pytest.raises(ValueError, match=r"sparse: expected shape \(B, K, N, D\) with B=3"):
            tiny_sam.decode(embedding, sparse[:2], dense)
        with pytest.raises(ValueError, match=r"dense: expected shape \(B, K, D, h, w\) with h=16"):
            tiny_sam.decode(embedding, sparse, torch.randn(3, 2, 32, 8, 8))
        with pytest.raises(ValueError, match=r"sparse: expected shape \(B, K, N, D\) with D=32"):
            tiny_sam.decode(embedding, torch.randn(3, 2, 4, 16), dense)
        with pytest.raises(
            ValueError, match=r"predict: prompts have B=2 but the embedding has B=3"
        ):
            tiny_sam.predict(embedding, Prompts(boxes=torch.zeros(2, 1, 4)))
        with pytest.raises(ValueError, match=r"masks: expected shape \(B, K, 1, H, W\) with H=64"):
            tiny_sam.embed_prompts(Prompts(masks=torch.zeros(3, 1, 1, 32, 32)))

    def test_grad_flow(self, tiny_sam: SamBackbone) -> None:
        sam = _fresh(tiny_sam).train()
        sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)
        images = torch.rand(2, 3, 40, 56)
        extra = torch.randn(2, 3, 2, 32, requires_grad=True)
        prompts = Prompts(
            boxes=torch.tensor([4.0, 4.0, 60.0, 70.0]).repeat(2, 3, 1), sparse_embeddings=extra
        )
        out = sam(images, prompts, multimask=True)
        single = sam(images, prompts, multimask=False)  # token 0 is used only without multimask
        assert out.logits is not None and single.logits is not None
        (out.logits.sigmoid().mean() + out.iou_scores.mean() + single.logits.mean()).backward()
        for name, p in sam.named_parameters():
            if name.startswith("mask_decoder."):
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name
        assert extra.grad is not None and extra.grad.abs().sum() > 0

    def test_grad_to_images(self, tiny_sam: SamBackbone) -> None:
        sam = _fresh(tiny_sam)
        images = torch.rand(1, 3, 32, 32, requires_grad=True)
        out = sam(
            images, Prompts(points=torch.full((1, 1, 1, 2), 64.0), labels=torch.ones(1, 1, 1))
        )
        out.low_res_logits.sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0
        assert all(p.grad is not None for p in sam.image_encoder.parameters())

    def test_compile(self, tiny_sam: SamBackbone, embedding: ImageEmbedding) -> None:
        torch._dynamo.reset()
        prompts = Prompts(
            points=torch.rand(3, 2, 2, 2) * 128, labels=torch.tensor([1, 0]).repeat(3, 2, 1)
        )

        def run(points: Tensor, labels: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
            e = ImageEmbedding(emb, embedding.input_size, embedding.original_size)
            out = tiny_sam.predict(e, Prompts(points=points, labels=labels), multimask=True)
            return out.low_res_logits, out.iou_scores

        compiled = torch.compile(run, backend="eager", fullgraph=True)
        with torch.no_grad():
            want = run(prompts.points, prompts.labels, embedding.embeddings)  # type: ignore[arg-type]
            got = compiled(prompts.points, prompts.labels, embedding.embeddings)
        torch.testing.assert_close(got, want)

    def test_device_dtype(
        self, tiny_sam: SamBackbone, device: torch.device, dtype: torch.dtype
    ) -> None:
        from tests.conftest import TOLERANCES

        sam = _fresh(tiny_sam).to(device=device, dtype=dtype)
        images = torch.rand(2, 3, 40, 56, device=device, dtype=dtype)
        prompts = Prompts(
            points=torch.rand(2, 3, 1, 2, device=device) * 56,
            labels=torch.ones(2, 3, 1, device=device),
            boxes=torch.tensor([2.0, 2.0, 50.0, 30.0], device=device).repeat(2, 3, 1),
        )
        out = sam(images, prompts, multimask=True)
        for t in (out.low_res_logits, out.iou_scores, out.logits, out.tokens):
            assert t is not None and t.device.type == device.type and t.dtype == dtype
            assert torch.isfinite(t).all()
        ref = tiny_sam(images.float().cpu(), prompts.to("cpu"), multimask=True)
        torch.testing.assert_close(
            out.iou_scores.float().cpu(), ref.iou_scores, **TOLERANCES[dtype]
        )


class TestPrecision:
    def test_dense_pe_matches_upstream(self, tiny_sam: SamBackbone) -> None:
        torch.testing.assert_close(
            tiny_sam.dense_pe(), tiny_sam.prompt_encoder.get_dense_pe(), rtol=0, atol=1e-6
        )

    @pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
    def test_model_dtype(self, tiny_sam: SamBackbone, dtype: torch.dtype) -> None:
        from tests.conftest import TOLERANCES

        images = torch.rand(2, 3, 40, 56)
        prompts = Prompts(
            points=torch.rand(2, 3, 2, 2) * 56,
            labels=torch.tensor([1, 0]).repeat(2, 3, 1),
            boxes=torch.tensor([2.0, 2.0, 50.0, 30.0]).repeat(2, 3, 1),
            masks=torch.randn(2, 3, 1, 64, 64),
        )
        ref = tiny_sam(images, prompts, multimask=True)
        sam = _fresh(tiny_sam).to(dtype)
        out = sam(images.to(dtype), prompts, multimask=True)
        assert out.logits is not None and out.logits.dtype == dtype and out.tokens is not None
        tol = TOLERANCES[torch.float32] if dtype == torch.float64 else TOLERANCES[dtype]
        torch.testing.assert_close(out.iou_scores.float(), ref.iou_scores, **tol)
        torch.testing.assert_close(out.tokens.float(), ref.tokens, **tol)

    def test_autocast_bf16(self, tiny_sam: SamBackbone) -> None:
        images = torch.rand(1, 3, 40, 56)
        prompts = Prompts(points=torch.rand(1, 2, 1, 2) * 56, labels=torch.ones(1, 2, 1))
        ref = tiny_sam(images, prompts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tiny_sam(images, prompts)
        torch.testing.assert_close(out.iou_scores.float(), ref.iou_scores, atol=5e-2, rtol=5e-2)

    def test_gradcheck(self, tiny_sam: SamBackbone) -> None:
        sam = _fresh(tiny_sam).double()
        emb = ImageEmbedding(torch.randn(1, 32, 16, 16, dtype=torch.float64), (128, 96), (128, 96))
        labels = torch.tensor([[[1, 0]]])

        def run(points: Tensor, sparse: Tensor) -> Tensor:
            prompts = Prompts(points=points, labels=labels, sparse_embeddings=sparse)
            out = sam.predict(emb, prompts, multimask=True, upsample=False)
            return out.low_res_logits[..., ::8, ::8]

        points = (torch.rand(1, 1, 2, 2, dtype=torch.float64) * 100).requires_grad_()
        sparse = torch.randn(1, 1, 1, 32, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(run, (points, sparse), fast_mode=True)


class TestPredictPoints:
    @pytest.mark.parametrize("batch_size", [1, 2, 64])
    def test_equals_one_by_one(self, tiny_sam: SamBackbone, batch_size: int) -> None:
        with torch.no_grad():
            emb = tiny_sam.encode(torch.rand(2, 3, 50, 40))
            points = torch.rand(2, 5, 2) * torch.tensor([104.0, 128.0])
            labels = torch.randint(0, 2, (2, 5))
            out = tiny_sam.predict_points(emb, points, labels, batch_size=batch_size)
            assert out.low_res_logits.shape == (2, 5, 3, 64, 64) and out.logits is None
            assert out.tokens is not None and out.tokens.shape == (2, 5, 3, 32)
            for i in range(5):
                one = tiny_sam.predict(
                    emb,
                    Prompts(points=points[:, i, None, None], labels=labels[:, i, None, None]),
                    multimask=True,
                    upsample=False,
                )
                torch.testing.assert_close(
                    out.low_res_logits[:, i], one.low_res_logits[:, 0], atol=1e-5, rtol=1e-4
                )
                torch.testing.assert_close(
                    out.iou_scores[:, i], one.iou_scores[:, 0], atol=1e-5, rtol=1e-4
                )

    def test_defaults_and_upsample(self, tiny_sam: SamBackbone) -> None:
        with torch.no_grad():
            emb = tiny_sam.encode(torch.rand(1, 3, 30, 60))
            points = torch.rand(1, 3, 2) * 64
            fg = tiny_sam.predict_points(
                emb, points, torch.ones(1, 3), batch_size=2, multimask=False, upsample=True
            )
            default = tiny_sam.predict_points(
                emb, points, batch_size=2, multimask=False, upsample=True
            )
            assert default.logits is not None and default.logits.shape == (1, 3, 1, 30, 60)
            torch.testing.assert_close(default.logits, fg.logits)
            empty = tiny_sam.predict_points(emb, points[:, :0])
            assert empty.low_res_logits.shape == (1, 0, 3, 64, 64)

    def test_exception(self, tiny_sam: SamBackbone) -> None:
        emb = ImageEmbedding(torch.zeros(2, 32, 16, 16), (128, 128), (128, 128))
        with pytest.raises(ValueError, match=r"points: expected shape \(B, N, 2\) with B=2"):
            tiny_sam.predict_points(emb, torch.zeros(1, 4, 2))
        with pytest.raises(ValueError, match=r"labels: expected shape \(B, N\) with N=4"):
            tiny_sam.predict_points(emb, torch.zeros(2, 4, 2), torch.ones(2, 3))
        with pytest.raises(ValueError, match="batch_size: expected an int >= 1, got 0"):
            tiny_sam.predict_points(emb, torch.zeros(2, 4, 2), batch_size=0)


def test_learns_a_mask(tiny_sam: SamBackbone) -> None:
    """Training only the mask decoder through `predict` fits a box-prompted target mask."""
    sam = _fresh(tiny_sam).train()
    sam.freeze(image_encoder=True, prompt_encoder=True, mask_decoder=False)
    with torch.no_grad():
        emb = sam.encode(torch.rand(1, 3, 64, 64))
    target = torch.zeros(1, 1, 1, 64, 64)
    target[..., 10:40, 20:50] = 1.0
    prompts = Prompts(boxes=torch.tensor([[[40.0, 20.0, 100.0, 80.0]]]))
    opt = torch.optim.Adam([p for p in sam.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(60):
        out = sam.predict(emb, prompts)
        assert out.logits is not None
        loss = F.binary_cross_entropy_with_logits(out.logits, target) + dice_loss(
            out.logits, target
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.2 * losses[0], losses
    iou = ((out.logits > 0) & (target > 0)).sum() / ((out.logits > 0) | (target > 0)).sum()
    assert iou > 0.9, f"IoU after 60 steps: {float(iou):.3f}"
