from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from samkit.modules.prompting import (
    MLP,
    PostNormEncoderLayer,
    SemanticSpatialPromptEncoder,
    TanhFusion,
)
from tests.conftest import TOLERANCES

D, K, N = 8, 3, 4


def _encoder(**kw) -> SemanticSpatialPromptEncoder:
    cfg = dict(dim=D, num_prompts=K, num_tokens=N, depth=2, num_heads=2, mlp_dim=16) | kw
    return SemanticSpatialPromptEncoder(**cfg).eval()


def _detr_layer(layer: PostNormEncoderLayer, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """DETR's TransformerEncoderLayer.forward_post, seq-first, written out."""
    mha = nn.MultiheadAttention(src.shape[-1], layer.self_attn.num_heads).eval()
    mha.load_state_dict(layer.self_attn.state_dict())
    q = k = src + pos
    src = layer.norm1(src + mha(q, k, value=src)[0])
    return layer.norm2(src + layer.linear2(torch.relu(layer.linear1(src))))


class TestTanhFusion:
    def test_hand_values(self) -> None:
        fuse = TanhFusion(dim=2, out_dim=1)
        with torch.no_grad():
            fuse.proj.weight.copy_(torch.tensor([[1.0, 2.0]]))
            fuse.proj.bias.fill_(0.5)
        v, y = torch.tensor([[[1.0, -1.0]]]), torch.tensor([[2.0, 0.5]])
        t = torch.tanh
        expected = t(v[0, 0, 0]) * t(y[0, 0]) + 2 * t(v[0, 0, 1]) * t(y[0, 1]) + 0.5
        torch.testing.assert_close(fuse(v, y), expected.reshape(1, 1, 1))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"sentence: expected shape \(B, D\)"):
            TanhFusion(dim=4, out_dim=2)(torch.randn(2, 3, 4), torch.randn(2, 5))

    def test_compile_and_gradcheck(self) -> None:
        fuse = TanhFusion(dim=3, out_dim=2).double()
        v = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
        y = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(fuse, (v, y), fast_mode=True)
        compiled = torch.compile(fuse, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(v, y), fuse(v, y))


class TestMLP:
    def test_structure(self) -> None:
        mlp = MLP(in_dim=3, hidden_dim=5, out_dim=2, num_layers=3)
        assert [tuple(lin.weight.shape) for lin in mlp.layers] == [(5, 3), (5, 5), (2, 5)]
        x = torch.randn(4, 3)
        l0, l1, l2 = mlp.layers
        torch.testing.assert_close(mlp(x), l2(torch.relu(l1(torch.relu(l0(x))))))
        with pytest.raises(ValueError, match="num_layers must be >= 1"):
            MLP(in_dim=3, hidden_dim=5, out_dim=2, num_layers=0)


class TestSemanticSpatialPromptEncoder:
    def test_smoke(self) -> None:
        out = _encoder()(torch.randn(2, N, D))
        assert ((out.boxes > 0) & (out.boxes < 1)).all()
        torch.testing.assert_close(out.prompts, out.tokens[:, 1 : 1 + K])

    @pytest.mark.parametrize("batch,depth", [(1, 1), (3, 2)])
    def test_shape(self, batch: int, depth: int) -> None:
        out = _encoder(depth=depth)(torch.randn(batch, N, D))
        assert out.prompts.shape == (batch, K, D)
        assert out.boxes.shape == (batch, 4)
        assert out.tokens.shape == (batch, 1 + K + N, D)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"tokens: expected shape \(B, N, D\) with N=4"):
            _encoder()(torch.randn(2, N + 1, D))

    def test_device_dtype(self, device: torch.device, dtype: torch.dtype) -> None:
        out = _encoder().to(device, dtype)(torch.randn(2, N, D, device=device, dtype=dtype))
        assert out.prompts.device.type == device.type and out.prompts.dtype == dtype

    def test_reference_forward(self) -> None:
        enc = _encoder()
        x = torch.randn(2, N, D)
        # Reference (spec §2.5): seq-first [reg; prompt; X], pos repeated over the batch.
        src = torch.cat(
            [
                enc.register_token.weight[:, None].expand(1, 2, D),
                enc.prompt_tokens.weight[:, None].expand(K, 2, D),
                x.transpose(0, 1),
            ]
        )
        pos = enc.pos_embed.weight[:, None].expand(-1, 2, -1)
        for layer in enc.layers:
            src = _detr_layer(layer, src, pos)
        hs = enc.norm(src)
        out = enc(x)
        torch.testing.assert_close(out.boxes, enc.box_head(hs[0]).sigmoid())
        torch.testing.assert_close(out.prompts, hs[1 : 1 + K].transpose(0, 1))

    def test_presence_head(self) -> None:
        assert _encoder()(torch.randn(2, N, D)).presence_logits is None
        enc = _encoder(presence_head=True)
        out = enc(torch.randn(3, N, D))
        assert enc.presence_head is not None and out.presence_logits is not None
        torch.testing.assert_close(out.presence_logits, enc.presence_head(out.tokens[:, 0])[:, 0])

    def test_init(self) -> None:
        enc = _encoder(dim=32, num_prompts=64, num_tokens=64)
        assert 0.8 < enc.prompt_tokens.weight.std() < 1.2  # nn.Embedding N(0, 1)
        w = enc.layers[0].linear1.weight
        bound = (6 / sum(w.shape)) ** 0.5  # xavier-uniform
        assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound

    def test_gradcheck(self) -> None:
        enc = _encoder(dim=4, num_prompts=2, num_tokens=2, depth=1, mlp_dim=4).double()
        x = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: enc(t).prompts, (x,), fast_mode=True)

    def test_grad_flow(self) -> None:
        enc = _encoder().train()
        enc.norm.requires_grad_(False)
        out = enc(torch.randn(2, N, D))
        (out.prompts.square().sum() + out.boxes.sum()).backward()
        for name, p in enc.named_parameters():
            if name.startswith("norm."):
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.isfinite().all(), name

    def test_compile(self) -> None:
        enc = _encoder()
        x = torch.randn(2, N, D)
        compiled = torch.compile(enc, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x).prompts, enc(x).prompts)


_ENC = _encoder()


@given(st.data())
def test_batch_independence(data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, 3))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    x = torch.randn(batch, N, D, generator=g)
    out = _ENC(x)
    for i in range(batch):
        alone = _ENC(x[i : i + 1])
        torch.testing.assert_close(
            out.prompts[i : i + 1], alone.prompts, **TOLERANCES[torch.float32]
        )
        torch.testing.assert_close(out.boxes[i : i + 1], alone.boxes, **TOLERANCES[torch.float32])
