from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

from samkit.modules.visual_adapter import VisualAttentionAdapter, normalize_clip_tokens
from tests.conftest import TOLERANCES

C_V, D, HEADS = 6, 8, 2


def _inputs(batch: int = 2, n: int = 9, length: int = 5, generator: torch.Generator | None = None):
    g = generator
    pad = torch.arange(length)[None, :] >= torch.randint(1, length + 1, (batch, 1), generator=g)
    return (
        torch.randn(batch, n, C_V, generator=g),
        torch.rand(batch, n, generator=g),
        torch.randn(batch, length, D, generator=g),
        pad,
    )


def _vad(**kw) -> VisualAttentionAdapter:
    return VisualAttentionAdapter(visual_dim=C_V, dim=D, num_heads=HEADS, **kw).eval()


class TestVisualAttentionAdapter:
    def test_smoke(self) -> None:
        assert _vad()(*_inputs()).isfinite().all()

    @pytest.mark.parametrize("batch,n,length", [(1, 4, 1), (3, 16, 7)])
    def test_shape(self, batch: int, n: int, length: int) -> None:
        assert _vad()(*_inputs(batch, n, length)).shape == (batch, n, D)

    def test_exception(self) -> None:
        p, s, w, m = _inputs()
        with pytest.raises(ValueError, match=r"patches: expected shape \(B, N, C\) with C=6"):
            _vad()(p[..., :-1], s, w, m)
        with pytest.raises(ValueError, match="similarity"):
            _vad()(p, s[:, :-1], w, m)
        with pytest.raises(ValueError, match="words"):
            _vad()(p, s, w[:1], m)
        with pytest.raises(ValueError, match="gate must be"):
            VisualAttentionAdapter(visual_dim=C_V, dim=D, gate="relu")  # type: ignore[arg-type]

    def test_device_dtype(self, device: torch.device, dtype: torch.dtype) -> None:
        vad = _vad().to(device, dtype)
        p, s, w, m = _inputs()
        out = vad(p.to(device, dtype), s.to(device, dtype), w.to(device, dtype), m.to(device))
        assert out.device.type == device.type and out.dtype == dtype

    @pytest.mark.parametrize("gate", ["gaussian", "cosine"])
    def test_reference_formula(self, gate: str) -> None:
        vad = _vad(gate=gate)
        with torch.no_grad():
            vad.scale.fill_(1.3)
            vad.sigma.fill_(0.7)
        p, s, w, m = _inputs()
        iq = vad.patch_proj(p * s[..., None])
        # Reference: seq-first MultiheadAttention, then single-Linear MLPs, cosine, Gaussian.
        mha = torch.nn.MultiheadAttention(D, HEADS).eval()
        mha.load_state_dict(vad.cross_attn.state_dict())
        att = mha(iq.transpose(0, 1), w.transpose(0, 1), w.transpose(0, 1), key_padding_mask=m)[0]
        t = vad.text_proj(att.transpose(0, 1))
        c = F.cosine_similarity(vad.visual_proj(iq), t, dim=-1, eps=1e-12)[..., None]
        score = c if gate == "cosine" else 1.3 * torch.exp(-((1 - c) ** 2) / (2 * 0.7**2))
        expected = F.layer_norm(iq, (D,), vad.norm.weight, vad.norm.bias) * score
        torch.testing.assert_close(vad(p, s, w, m), expected)

    def test_zero_similarity_gives_constant_tokens(self) -> None:
        p, s, w, m = _inputs()
        out = _vad()(p, torch.zeros_like(s), w, m)  # all tokens see MLP(0): identical rows
        torch.testing.assert_close(out, out[:, :1].expand_as(out))

    def test_gradcheck(self) -> None:
        vad = VisualAttentionAdapter(visual_dim=3, dim=4, num_heads=2).double().eval()
        p, s, w, m = _inputs(2, 3, 3)
        p = p[..., :3].double().requires_grad_()
        w = w[..., :4].double().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, b: vad(a, s.double(), b, m), (p, w), fast_mode=True
        )

    def test_grad_flow(self) -> None:
        vad = _vad().train()
        vad.norm.requires_grad_(False)
        vad(*_inputs()).square().sum().backward()
        for name, prm in vad.named_parameters():
            if name.startswith("norm."):
                assert prm.grad is None, name
            else:
                assert prm.grad is not None and prm.grad.isfinite().all(), name

    def test_compile(self) -> None:
        vad = _vad()
        args = _inputs()
        compiled = torch.compile(vad, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(*args), vad(*args))


class TestNormalizeClipTokens:
    def test_channel(self) -> None:
        out = normalize_clip_tokens(torch.randn(2, 5, 3))
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 5))

    def test_token_axis_matches_reference(self) -> None:
        patches, cls = torch.randn(2, 5, 3), torch.randn(2, 3)
        full = torch.cat([cls[:, None], patches], 1)
        expected = full / full.norm(dim=1, keepdim=True)  # CLIP-Surgery demo: dim=1 of (B, N+1, C)
        out = normalize_clip_tokens(patches, cls, axis="token")
        torch.testing.assert_close(out, expected[:, 1:])
        assert not torch.allclose(out.norm(dim=-1), torch.ones(2, 5))

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match="needs the CLS"):
            normalize_clip_tokens(torch.randn(2, 5, 3), axis="token")
        with pytest.raises(ValueError, match="axis must be"):
            normalize_clip_tokens(torch.randn(2, 5, 3), axis="pixel")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"cls: expected shape \(B, C\)"):
            normalize_clip_tokens(torch.randn(2, 5, 3), torch.randn(2, 4), axis="token")


_VAD = _vad()


@given(st.data())
def test_batch_independence_and_padding(data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, 3))
    n = data.draw(st.integers(1, 9))
    length = data.draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    p, s, w, m = _inputs(batch, n, length, g)
    full = _VAD(p, s, w, m)
    tol = TOLERANCES[torch.float32]
    for i in range(batch):
        torch.testing.assert_close(
            full[i : i + 1], _VAD(p[i : i + 1], s[i : i + 1], w[i : i + 1], m[i : i + 1]), **tol
        )
    w2 = torch.where(m[..., None], torch.randn(w.shape, generator=g), w)  # change padded words only
    torch.testing.assert_close(_VAD(p, s, w2, m), full, **tol)
