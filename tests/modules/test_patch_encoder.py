from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.ops import roi_align

from samkit.modules.patch_encoder import (
    PatchEncoder,
    PostNormSelfAttentionLayer,
    ResidualFFN,
    TinyFeaturePyramid,
    box_sine_embedding,
    pyramid_features,
    roi_levels,
)


def _encoder(**kw: object) -> PatchEncoder:
    cfg: dict[str, object] = {
        "dim": 16,
        "num_heads": 2,
        "ffn_dim": 32,
        "mlp_dim": 32,
        "num_layers": 1,
        "finest_scale": 8.0,
    }
    cfg.update(kw)
    return PatchEncoder(**cfg)  # type: ignore[arg-type]


def _inputs(b: int = 2, n: int = 3, size: int = 32, device: torch.device | str = "cpu"):
    feats = [torch.randn(b, 16, size // s, size // s, device=device) for s in (4, 8)]
    lo = torch.randint(0, size // 2, (b, n, 2), device=device).float()
    hi = lo + torch.randint(2, size // 2, (b, n, 2), device=device).float()
    boxes = torch.cat([lo, hi], -1)
    ys = torch.arange(size, device=device)[:, None]
    xs = torch.arange(size, device=device)[None, :]
    masks = (
        (xs >= lo[..., 0, None, None])
        & (xs < hi[..., 0, None, None])
        & (ys >= lo[..., 1, None, None])
        & (ys < hi[..., 1, None, None])
    )
    return feats, boxes, masks


class TestBoxSineEmbedding:
    def test_matches_hand_computed_order(self) -> None:
        box = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
        emb = box_sine_embedding(box, num_feats=4)
        dim_t = torch.tensor([1.0, 1.0, 100.0, 100.0])

        def enc(c: float) -> torch.Tensor:
            v = c * 2 * math.pi / dim_t
            return torch.stack([v[0::2].sin(), v[1::2].cos()], -1).flatten()

        ref = torch.cat([enc(0.2), enc(0.1), enc(0.3), enc(0.4)])  # (y, x, w, h)
        torch.testing.assert_close(emb[0], ref)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="boxes"):
            box_sine_embedding(torch.rand(2, 3))


def test_roi_levels_follow_mmdet_rule() -> None:
    side = torch.tensor([10.0, 56.0, 111.0, 112.0, 224.0, 1000.0])
    boxes = torch.stack([torch.zeros(6), torch.zeros(6), side, side], 1)
    expected = torch.clamp(torch.floor(torch.log2(side / 56 + 1e-6)), 0, 3).long()
    assert roi_levels(boxes, num_levels=4).tolist() == expected.tolist() == [0, 0, 0, 1, 2, 3]


def test_residual_ffn_is_identity_plus_mlp() -> None:
    ffn = ResidualFFN(dim=4, hidden_dim=8)
    x = torch.randn(3, 4)
    torch.testing.assert_close(ffn(x), x + ffn.fc2(torch.relu(ffn.fc1(x))))


def test_post_norm_layer_ignores_padding() -> None:
    layer = PostNormSelfAttentionLayer(dim=8, num_heads=2, ffn_dim=16).eval()
    x, pos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    pad = torch.tensor([[False, False, True, True]])
    out = layer(x, pos, pad)
    x2 = x.clone()
    x2[:, 2:] = torch.randn(2, 8)
    torch.testing.assert_close(layer(x2, pos, pad)[:, :2], out[:, :2])
    torch.testing.assert_close(layer(x[:, :2], pos[:, :2])[:, :2], out[:, :2])


class TestPatchEncoder:
    def test_smoke(self, device: torch.device) -> None:
        enc = _encoder().to(device)
        tokens, pos = enc(*_inputs(device=device))
        assert tokens.shape == pos.shape == (2, 3, 16)
        assert tokens.device.type == device.type

    def test_roi_token_matches_manual_pipeline(self) -> None:
        enc = _encoder(num_layers=0)
        feats, boxes, masks = _inputs(b=1, n=1)
        boxes = torch.tensor([[[2.0, 3.0, 12.0, 9.0]]])  # sqrt(area) < 8 * 2 -> level 0
        masks = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
        masks[0, 0, 3:9, 2:7] = True  # left half of the box
        rois = torch.cat([torch.zeros(1, 1), boxes[0]], 1)
        pooled = roi_align(feats[0], rois, 7, 0.25, 0, True)
        mroi = roi_align(masks[:, :, None].float()[0], rois, 7, 1.0, 0, True) >= 0.5
        ref = enc.roi_norm(enc.roi_mlp((pooled * mroi).flatten(1)))
        tokens, _ = enc(feats, boxes, masks)
        torch.testing.assert_close(tokens[0], ref)
        assert 0 < mroi.sum() < 49

    def test_mask_roi_switch(self) -> None:
        feats, boxes, masks = _inputs(b=1, n=2)
        masks[:, :, :, :] = False
        enc_on = _encoder(num_layers=0)
        enc_off = _encoder(num_layers=0, use_mask_roi=False)
        enc_off.load_state_dict(enc_on.state_dict())
        on, _ = enc_on(feats, boxes, masks)
        off, _ = enc_off(feats, boxes, masks)
        # empty masks zero the RoI features: the token is LN(MLP(0)), the same for both patches
        torch.testing.assert_close(on[0, 0], on[0, 1])
        assert not torch.allclose(off[0, 0], off[0, 1])

    def test_padding_and_zero_patches(self) -> None:
        enc = _encoder().eval()
        feats, boxes, masks = _inputs(b=2, n=3)
        pad = torch.tensor([[False, False, True], [True, True, True]])
        tokens, pos = enc(feats, boxes, masks, pad)
        assert torch.isfinite(tokens).all()
        assert (tokens[pad] == 0).all() and (pos[pad] == 0).all()
        alone, _ = enc([f[:1] for f in feats], boxes[:1, :2], masks[:1, :2])
        torch.testing.assert_close(tokens[0, :2], alone[0], atol=1e-5, rtol=1e-4)
        empty, _ = enc(feats, boxes[:, :0], masks[:, :0])
        assert empty.shape == (2, 0, 16)

    def test_exception(self) -> None:
        enc = _encoder()
        feats, boxes, masks = _inputs()
        with pytest.raises(ValueError, match="masks"):
            enc(feats, boxes, masks[:, :2])
        with pytest.raises(ValueError, match="image_size"):
            enc(feats, boxes)
        with pytest.raises(ValueError, match="features"):
            enc([feats[0][:1]], boxes, masks)

    def test_grad_flow(self) -> None:
        enc = _encoder(num_layers=2)
        tokens, pos = enc(*_inputs())
        (tokens.sum() + pos.sum()).backward()
        for name, prm in enc.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name

    def test_compile(self) -> None:
        enc = _encoder().eval()
        inputs = _inputs()
        compiled = torch.compile(enc, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(*inputs)[0], enc(*inputs)[0])

    @given(st.data())
    def test_permutation_equivariance(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 5))
        perm = torch.tensor(data.draw(st.permutations(range(n))))
        feats, boxes, masks = _inputs(b=1, n=n)
        ref, _ = _ENC(feats, boxes, masks)
        out, _ = _ENC(feats, boxes[:, perm], masks[:, perm])
        torch.testing.assert_close(out, ref[:, perm], atol=1e-5, rtol=1e-4)


_ENC = _encoder().eval()


def test_tiny_pyramid_strides() -> None:
    feats = TinyFeaturePyramid(dim=8)(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_tiny_pyramid_norms(norm: str) -> None:
    net = TinyFeaturePyramid(dim=8, norm=norm)
    feats = net(torch.rand(2, 3, 32, 32))
    assert feats[0].shape == (2, 8, 8, 8)
    kinds = {type(m).__name__ for m in net.modules()}
    expected = {"batch": "BatchNorm2d", "group": "GroupNorm", "none": "Identity"}[norm]
    assert expected in kinds
    with pytest.raises(ValueError, match="norm must be"):
        TinyFeaturePyramid(dim=8, norm="layer")


class TestMixedSizes:
    def test_extractors_expose_strides(self) -> None:
        assert TinyFeaturePyramid(dim=4).strides == (4, 8, 16, 32)

    def test_pyramid_features_equal_each_image_alone(self) -> None:
        torch.manual_seed(0)
        net = TinyFeaturePyramid(dim=4).eval()
        sizes = [(64, 64), (50, 61), (37, 45), (50, 61)]
        canvas = torch.zeros(4, 3, 64, 64)
        alone = []
        for i, (h, w) in enumerate(sizes):
            img = torch.rand(3, h, w)
            canvas[i, :, :h, :w] = img
            alone.append(net(img[None]))
        feats = pyramid_features(net, canvas, sizes)
        for i in range(4):
            for lvl, ref in enumerate(alone[i]):
                h, w = ref.shape[-2:]
                torch.testing.assert_close(feats[lvl][i : i + 1, :, :h, :w], ref)
                # padding repeats the last valid row / column (what RoIAlign clamps to)
                torch.testing.assert_close(
                    feats[lvl][i, :, h:, :w], ref[0, :, -1:].expand_as(feats[lvl][i, :, h:, :w])
                )

    def test_pyramid_features_of_uniform_batch_is_one_call(self) -> None:
        net = TinyFeaturePyramid(dim=4).eval()
        images = torch.rand(2, 3, 32, 32)
        for a, b in zip(pyramid_features(net, images), net(images), strict=True):
            torch.testing.assert_close(a, b)

    def test_encoder_tokens_equal_each_image_alone(self) -> None:
        torch.manual_seed(0)
        enc = _encoder(finest_scale=16.0).eval()
        net = TinyFeaturePyramid(dim=16).eval()
        sizes = [(40, 30), (64, 64)]
        canvas = torch.zeros(2, 3, 64, 64)
        masks = torch.zeros(2, 2, 64, 64, dtype=torch.bool)
        boxes = torch.tensor([[[0.0, 0.0, 30.0, 40.0], [10.0, 20.0, 30.0, 40.0]],
                              [[0.0, 0.0, 64.0, 64.0], [5.0, 5.0, 20.0, 50.0]]])  # fmt: skip
        pad = torch.tensor([[False, False], [False, True]])
        singles = []
        for i, (h, w) in enumerate(sizes):
            canvas[i, :, :h, :w] = torch.rand(3, h, w)
            for j in range(2):
                x0, y0, x1, y1 = boxes[i, j].long().tolist()
                masks[i, j, y0:y1, x0:x1] = True
            n = int((~pad[i]).sum())
            img = canvas[i : i + 1, :, :h, :w]
            singles.append(
                enc(
                    net(img),
                    boxes[i : i + 1, :n],
                    masks[i : i + 1, :n, :h, :w],
                    strides=net.strides,
                )
            )
        feats = pyramid_features(net, canvas, sizes)
        tokens, pos = enc(feats, boxes, masks, pad, image_sizes=sizes, strides=net.strides)
        for i, (tok, p) in enumerate(singles):
            n = tok.shape[1]
            torch.testing.assert_close(tokens[i : i + 1, :n], tok, atol=1e-5, rtol=0)
            torch.testing.assert_close(pos[i : i + 1, :n], p, atol=1e-5, rtol=0)

    def test_roi_scale_is_one_over_stride(self) -> None:
        """A 60-pixel image has an 8-row stride-8 map: the scale is 1/8, not 8/60."""
        enc = _encoder(finest_scale=1e6, use_mask_roi=False)  # every RoI on level 0
        feats = [torch.randn(1, 16, 8, 8)]
        boxes = torch.tensor([[[8.0, 8.0, 40.0, 56.0]]])
        got = enc.embed_boxes(feats, boxes, image_size=(60, 60), strides=[8])
        rois = torch.tensor([[0.0, 8.0, 8.0, 40.0, 56.0]])
        ref = roi_align(feats[0], rois, 7, 1 / 8, 0, True)
        torch.testing.assert_close(got, enc.roi_norm(enc.roi_mlp(ref.flatten(1)))[None])
        inferred = enc.embed_boxes(feats, boxes, image_size=(60, 60))
        torch.testing.assert_close(inferred, got)
