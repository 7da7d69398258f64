from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.affinity import (
    AffinityDecoder,
    AffinityDecoderLayer,
    AffinityHead,
    SemanticQueryEmbedding,
    compose_queries,
    semantic_instance_attention_mask,
)
from samkit.modules.merging import merge_boxes, normalize_affinity
from tests.conftest import TOLERANCES


def _reference_affinity(head: AffinityHead, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Spec 3.3 written with loops over heads and explicit 1x1 conv weights."""
    qf = head.ffn_query(q)
    pf = head.ffn_patch(p)
    g = head.num_heads
    dh = q.shape[-1] // g
    sims = []
    for i in range(g):
        qi = qf[..., i * dh : (i + 1) * dh] / math.sqrt(dh)
        pi = pf[..., i * dh : (i + 1) * dh]
        sims.append(qi @ pi.transpose(-1, -2))
    x = torch.stack(sims, 1)  # b g k n
    for conv in head.convs:
        w = conv.weight[:, :, 0, 0]
        x = torch.einsum("oi,bikn->bokn", w, torch.relu(x)) + conv.bias[None, :, None, None]
    bias = p @ head.bias_lang + head.bias0
    return x[:, 0] / head.logit_scale.exp() + bias[:, None, :]


def _decoder(**kw: object) -> AffinityDecoder:
    cfg: dict[str, object] = {"dim": 16, "num_heads": 4, "ffn_dim": 32, "num_layers": 2}
    cfg.update(kw)
    return AffinityDecoder(**cfg)  # type: ignore[arg-type]


def _decoder_inputs(b: int = 2, s: int = 2, n: int = 4, device: torch.device | str = "cpu"):
    queries = torch.randn(b, s + n, 16, device=device)
    refs = torch.rand(b, s + n, 4, device=device)
    patches = torch.randn(b, n, 16, device=device)
    pos = torch.randn(b, n, 16, device=device)
    lo = torch.rand(b, n, 2, device=device) * 0.5
    boxes = torch.cat([lo, lo + 0.1 + torch.rand(b, n, 2, device=device) * 0.4], -1)
    return queries, refs, patches, pos, boxes


class TestAffinityHead:
    def test_smoke(self, device: torch.device) -> None:
        head = AffinityHead(dim=16, num_heads=4, ffn_dim=32).to(device)
        out = head(torch.randn(2, 3, 16, device=device), torch.randn(2, 5, 16, device=device))
        assert out.shape == (2, 3, 5)
        assert out.device.type == device.type

    def test_matches_reference_formula(self) -> None:
        head = AffinityHead(dim=16, num_heads=4, ffn_dim=32)
        with torch.no_grad():
            head.bias_lang.normal_()
            head.logit_scale.fill_(0.3)
        q, p = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
        torch.testing.assert_close(head(q, p), _reference_affinity(head, q, p))

    def test_initial_bias_is_prior(self) -> None:
        head = AffinityHead(dim=8, num_heads=2, ffn_dim=8, prior_prob=0.01)
        assert head.bias0.item() == pytest.approx(-math.log(0.99 / 0.01))
        assert all((conv.bias == 0).all() for conv in head.convs)  # mmcv xavier_init

    @pytest.mark.parametrize("k,n", [(1, 1), (3, 0), (0, 4)])
    def test_shape(self, k: int, n: int) -> None:
        head = AffinityHead(dim=8, num_heads=2, ffn_dim=8)
        assert head(torch.randn(1, k, 8), torch.randn(1, n, 8)).shape == (1, k, n)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="must divide"):
            AffinityHead(dim=10, num_heads=4)
        head = AffinityHead(dim=8, num_heads=2, ffn_dim=8)
        with pytest.raises(ValueError, match="patches"):
            head(torch.randn(1, 3, 8), torch.randn(1, 5, 6))

    def test_gradcheck(self) -> None:
        head = AffinityHead(dim=4, num_heads=2, ffn_dim=4).double()
        q = torch.randn(1, 2, 4, dtype=torch.float64, requires_grad=True)
        p = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(head, (q, p), fast_mode=True)

    def test_grad_flow(self) -> None:
        head = AffinityHead(dim=8, num_heads=2, ffn_dim=8)
        with torch.no_grad():
            head.bias_lang.normal_()
        head(torch.randn(2, 3, 8), torch.randn(2, 4, 8)).sum().backward()
        for name, prm in head.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name

    def test_compile(self) -> None:
        head = AffinityHead(dim=8, num_heads=2, ffn_dim=8)
        q, p = torch.randn(2, 3, 8), torch.randn(2, 4, 8)
        compiled = torch.compile(head, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(q, p), head(q, p))

    @given(st.data())
    def test_permuting_patches_permutes_columns(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 6))
        perm = torch.tensor(data.draw(st.permutations(range(n))))
        q, p = torch.randn(1, 3, 8), torch.randn(1, n, 8)
        out = _HEAD(q, p)
        torch.testing.assert_close(_HEAD(q, p[:, perm]), out[:, :, perm])


_HEAD = AffinityHead(dim=8, num_heads=2, ffn_dim=8)


class TestAttentionMask:
    def test_semantic_and_instance_visibility(self) -> None:
        m = semantic_instance_attention_mask(2, 3)
        assert m.shape == (5, 5)
        assert m[2:, :2].all()  # instances cannot see semantic queries
        assert not m[2:, 2:].any()
        assert not m[:2, 2:].any()  # semantic queries see every instance
        assert m[0, 1] and m[1, 0] and not m[0, 0] and not m[1, 1]


class TestAffinityDecoderLayer:
    def test_smoke_and_padding_is_finite(self, device: torch.device) -> None:
        layer = AffinityDecoderLayer(dim=16, num_heads=4, ffn_dim=32).to(device)
        q, qp = torch.randn(2, 5, 16, device=device), torch.randn(2, 5, 16, device=device)
        p, pp = torch.randn(2, 3, 16, device=device), torch.randn(2, 3, 16, device=device)
        pad = torch.tensor([[False, False, False], [True, True, True]], device=device)
        qpad = torch.cat([torch.zeros(2, 2, dtype=torch.bool, device=device), pad], 1)
        out, aff = layer(
            q,
            qp,
            p,
            pp,
            query_padding_mask=qpad,
            patch_padding_mask=pad,
            self_attn_mask=semantic_instance_attention_mask(2, 3, device=device),
            cross_attn_mask=torch.ones(2, 5, 3, dtype=torch.bool, device=device),
        )
        assert out.shape == (2, 5, 16) and aff.shape == (2, 5, 3)
        assert torch.isfinite(out).all() and torch.isfinite(aff).all()

    def test_affinity_is_before_cross_attention(self) -> None:
        layer = AffinityDecoderLayer(dim=16, num_heads=4, ffn_dim=32)
        q, qp, p, pp = (torch.randn(1, 3, 16) for _ in range(4))
        _, aff = layer(q, qp, p, pp)
        h = layer.norm_self(q + layer.self_attn(q + qp, q + qp, q, need_weights=False)[0])
        torch.testing.assert_close(aff, layer.affinity(h + qp, p + pp))

    def test_cross_attention_mask_restricts_keys(self) -> None:
        layer = AffinityDecoderLayer(dim=16, num_heads=4, ffn_dim=32).eval()
        q, qp, p, pp = (torch.randn(1, 2, 16) for _ in range(4))
        mask = torch.tensor([[[False, True], [False, True]]])
        out1, _ = layer(q, qp, p, pp, cross_attn_mask=mask)
        p2 = p.clone()
        p2[:, 1] = torch.randn(16)  # only the blocked patch changes (positions too)
        pp2 = pp.clone()
        pp2[:, 1] = torch.randn(16)
        out2, _ = layer(q, qp, p2, pp2, cross_attn_mask=mask)
        torch.testing.assert_close(out1, out2)


class TestAffinityDecoder:
    def test_smoke(self, device: torch.device) -> None:
        dec = _decoder().to(device)
        out = dec(*_decoder_inputs(device=device), num_semantic=2)
        assert out.affinities.shape == (2, 2, 6, 4)
        assert out.hidden_states.shape == (2, 2, 6, 16)
        assert out.boxes.shape == (3, 2, 6, 4)
        assert out.affinities.device.type == device.type

    def test_exception(self) -> None:
        q, r, p, pp, b = _decoder_inputs()
        with pytest.raises(ValueError, match="num_semantic"):
            _decoder()(q, r, p, pp, b, num_semantic=1, patch_padding_mask=torch.zeros(2, 4).bool())
        with pytest.raises(ValueError, match="patch_boxes"):
            _decoder()(q, r, p, pp, b[:, :3], num_semantic=2)

    def test_affinity_refinement_is_running_sum(self) -> None:
        torch.manual_seed(1)
        on = _decoder(affinity_refinement=True)
        off = _decoder(affinity_refinement=False)
        off.load_state_dict(on.state_dict())
        inputs = _decoder_inputs()
        a_on = on(*inputs, num_semantic=2).affinities
        a_off = off(*inputs, num_semantic=2).affinities
        torch.testing.assert_close(a_on[0], a_off[0])
        torch.testing.assert_close(a_on[1], a_off[0] + a_off[1])

    def test_merged_boxes_feed_next_layer(self) -> None:
        dec = _decoder()
        q, r, p, pp, b = _decoder_inputs()
        out = dec(q, r, p, pp, b, num_semantic=2)
        merged = merge_boxes(out.affinities[0], b)
        cx = (merged[..., 0] + merged[..., 2]) / 2
        torch.testing.assert_close(out.boxes[1][..., 0], cx)
        torch.testing.assert_close(out.boxes[0], r)

    def test_dca_switch_changes_output(self) -> None:
        torch.manual_seed(2)
        on = _decoder(dynamic_cross_attention=True)
        off = _decoder(dynamic_cross_attention=False)
        off.load_state_dict(on.state_dict())
        inputs = _decoder_inputs(n=6)
        with torch.no_grad():
            for layer in on.layers:
                layer.affinity.bias_lang.normal_()
        off.load_state_dict(on.state_dict())
        out_on, out_off = on(*inputs, num_semantic=2), off(*inputs, num_semantic=2)
        # layer 0 has no DCA mask; layer 1 computes its affinity before its (masked) cross-attention
        torch.testing.assert_close(out_on.affinities, out_off.affinities)
        torch.testing.assert_close(out_on.hidden_states[0], out_off.hidden_states[0])
        assert not torch.allclose(out_on.hidden_states[1], out_off.hidden_states[1])

    def test_query_enhancement_uses_enhancer(self) -> None:
        dec = _decoder(query_enhancement=True)
        calls: list[torch.Tensor] = []

        def enhancer(boxes: torch.Tensor) -> torch.Tensor:
            calls.append(boxes)
            return torch.zeros(*boxes.shape[:2], 16)

        dec(*_decoder_inputs(), num_semantic=2, query_enhancer=enhancer)
        assert len(calls) == 1 and calls[0].shape == (2, 6, 4)

    def test_zero_patches(self) -> None:
        dec = _decoder()
        out = dec(
            torch.randn(1, 2, 16),
            torch.rand(1, 2, 4),
            torch.randn(1, 0, 16),
            torch.randn(1, 0, 16),
            torch.rand(1, 0, 4),
            num_semantic=2,
        )
        assert out.affinities.shape == (2, 1, 2, 0)
        assert torch.isfinite(out.hidden_states).all()

    def test_padded_image_matches_unpadded(self) -> None:
        dec = _decoder().eval()
        q, r, p, pp, b = _decoder_inputs(b=1, n=3)
        ref = dec(q, r, p, pp, b, num_semantic=2)
        pad = torch.tensor([[False, False, False, True]])
        q2 = torch.cat([q, torch.randn(1, 1, 16)], 1)
        r2 = torch.cat([r, torch.rand(1, 1, 4)], 1)
        out = dec(
            q2,
            r2,
            torch.cat([p, torch.randn(1, 1, 16)], 1),
            torch.cat([pp, torch.randn(1, 1, 16)], 1),
            torch.cat([b, torch.rand(1, 1, 4)], 1),
            num_semantic=2,
            patch_padding_mask=pad,
        )
        torch.testing.assert_close(
            out.affinities[:, :, :5, :3], ref.affinities, **TOLERANCES[torch.float32]
        )

    def test_grad_flow(self) -> None:
        dec = _decoder()
        out = dec(*_decoder_inputs(), num_semantic=2)
        (out.affinities.sum() + out.hidden_states.sum()).backward()
        for name, prm in dec.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name

    def test_compile(self) -> None:
        dec = _decoder().eval()
        inputs = _decoder_inputs()
        compiled = torch.compile(dec, backend="eager", fullgraph=True)
        torch.testing.assert_close(
            compiled(*inputs, num_semantic=2).affinities, dec(*inputs, num_semantic=2).affinities
        )

    @given(st.data())
    def test_permuting_patches_permutes_instance_block(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 5))
        perm = torch.tensor(data.draw(st.permutations(range(n))))
        q, r, p, pp, b = _decoder_inputs(b=1, n=n)
        qperm = torch.cat([torch.arange(2), 2 + perm])
        ref = _DEC(q, r, p, pp, b, num_semantic=2).affinities
        out = _DEC(
            q[:, qperm], r[:, qperm], p[:, perm], pp[:, perm], b[:, perm], num_semantic=2
        ).affinities
        torch.testing.assert_close(out, ref[:, :, qperm][..., perm], atol=1e-5, rtol=1e-4)


_DEC = _decoder().eval()


class TestSemanticQueries:
    def test_shapes_and_box_range(self) -> None:
        q, ref = SemanticQueryEmbedding(text_dim=8, dim=16)(torch.randn(5, 8))
        assert q.shape == (5, 16) and ref.shape == (5, 4)
        assert ((ref > 0) & (ref < 1)).all()

    def test_compose_queries(self) -> None:
        sem, sem_ref = torch.randn(2, 8), torch.rand(2, 4)
        tok = torch.randn(3, 4, 8)
        boxes = torch.tensor([[0.0, 0.0, 8.0, 4.0]]).expand(3, 4, 4)
        q, ref, norm = compose_queries(sem, sem_ref, tok, boxes, (8, 16))
        assert q.shape == (3, 6, 8)
        torch.testing.assert_close(q[:, :2], sem.expand(3, 2, 8))
        torch.testing.assert_close(ref[0, 2], torch.tensor([0.25, 0.25, 0.5, 0.5]))
        torch.testing.assert_close(norm[0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))


def test_dca_mask_threshold_matches_spec() -> None:
    aff = torch.tensor([[[0.0, 1.0, -1.0, 3.0]]])
    norm = normalize_affinity(aff)
    a = aff.sigmoid()
    ref = (a - a.min()) / (a.max() - a.min())
    torch.testing.assert_close(norm, ref)


def test_compose_queries_normalises_by_each_image_size() -> None:
    sem, sem_ref = torch.randn(1, 8), torch.rand(1, 4)
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 4.0]], [[0.0, 0.0, 8.0, 4.0]]])
    _, ref, norm = compose_queries(
        sem, sem_ref, torch.randn(2, 1, 8), boxes, (8, 16), [(8, 16), (4, 8)]
    )
    torch.testing.assert_close(
        norm[:, 0], torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    )
    torch.testing.assert_close(ref[1, 1], torch.tensor([0.5, 0.5, 1.0, 1.0]))


def test_fully_blocked_cross_attention_is_no_update() -> None:
    """A query with no patch to attend to (image without patches) is updated as alone (N = 0)."""
    layer = AffinityDecoderLayer(dim=16, num_heads=4, ffn_dim=32).eval()
    q, qp = torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    alone, _ = layer(q, qp, torch.zeros(1, 0, 16), torch.zeros(1, 0, 16))
    padded, _ = layer(
        q,
        qp,
        torch.randn(1, 3, 16),
        torch.randn(1, 3, 16),
        patch_padding_mask=torch.ones(1, 3, dtype=torch.bool),
    )
    torch.testing.assert_close(padded, alone)
