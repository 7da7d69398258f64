from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.language import LinguisticAttentionAdapter, masked_phrase_attention
from tests.conftest import TOLERANCES

C_T, D = 6, 4


def _mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None, :] >= torch.tensor(lengths)[:, None]


def _reference(lad: LinguisticAttentionAdapter, words: torch.Tensor, pad: torch.Tensor):
    """The SSP-SAM reference: GRU over all positions, softmax * mask / sum."""
    e = lad.proj(words)
    h = lad.gru(e)[0]
    scores = lad.score(h).squeeze(-1).softmax(-1) * (~pad).float()
    a = scores / scores.sum(-1, keepdim=True)
    return e, a, (a[..., None] * e).sum(1)


class TestLinguisticAttentionAdapter:
    def test_smoke(self) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D)
        out = lad(torch.randn(2, 5, C_T), _mask([3, 5], 5))
        assert out.weights.sum(-1).allclose(torch.ones(2))
        assert (out.weights[0, 3:] == 0).all()

    @pytest.mark.parametrize("batch,length", [(1, 3), (3, 7)])
    def test_shape(self, batch: int, length: int) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D)
        out = lad(torch.randn(batch, length, C_T), torch.zeros(batch, length, dtype=torch.bool))
        assert out.words.shape == (batch, length, D)
        assert out.sentence.shape == (batch, D)
        assert out.weights.shape == (batch, length)

    def test_exception(self) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D)
        with pytest.raises(ValueError, match=r"word_states: expected shape \(B, L, C\)"):
            lad(torch.randn(2, 5, C_T + 1), _mask([3, 5], 5))
        with pytest.raises(ValueError, match="padding_mask"):
            lad(torch.randn(2, 5, C_T), _mask([3, 5, 1], 5))

    def test_device_dtype(self, device: torch.device, dtype: torch.dtype) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D).to(device, dtype)
        out = lad(torch.randn(2, 5, C_T, device=device, dtype=dtype), _mask([2, 4], 5).to(device))
        assert out.sentence.device.type == device.type and out.sentence.dtype == dtype

    @pytest.mark.parametrize("over_padding", [True, False])
    def test_reference_equivalence(self, over_padding: bool) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D, gru_over_padding=over_padding)
        words, pad = torch.randn(3, 6, C_T), _mask([2, 6, 4], 6)
        out = lad(words, pad)
        if over_padding:
            e, a, y = _reference(lad, words, pad)
        else:  # clean: each text alone, truncated to its valid tokens
            parts = [
                _reference(lad, words[i : i + 1, :n], _mask([n], n))
                for i, n in enumerate([2, 6, 4])
            ]
            a = torch.zeros(3, 6)
            for i, (_, ai, _) in enumerate(parts):
                a[i, : ai.shape[1]] = ai[0]
            y = torch.cat([p[2] for p in parts])
        torch.testing.assert_close(out.weights, a)
        torch.testing.assert_close(out.sentence, y)

    def test_quirk_changes_output(self) -> None:
        torch.manual_seed(1)
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D)
        words, pad = torch.randn(1, 6, C_T), _mask([3], 6)
        clean = lad(words, pad).sentence
        lad.gru_over_padding = True
        assert not torch.allclose(clean, lad(words, pad).sentence)

    def test_masked_phrase_attention_hand_values(self) -> None:
        scores = torch.tensor([[0.0, torch.log(torch.tensor(3.0)).item(), 5.0]])
        w = masked_phrase_attention(scores, torch.tensor([[False, False, True]]))
        torch.testing.assert_close(w, torch.tensor([[0.25, 0.75, 0.0]]))

    def test_gradcheck(self) -> None:
        lad = LinguisticAttentionAdapter(text_dim=3, dim=2).double()
        pad = _mask([2, 3], 3)
        words = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda w: lad(w, pad).sentence, (words,), fast_mode=True)

    def test_grad_flow(self) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D)
        lad.proj.requires_grad_(False)
        lad(torch.randn(2, 5, C_T), _mask([3, 5], 5)).sentence.square().sum().backward()
        for name, p in lad.named_parameters():
            if name.startswith("proj."):
                assert p.grad is None, name
            else:
                assert p.grad is not None and p.grad.isfinite().all(), name

    @pytest.mark.parametrize("over_padding", [True, False])
    def test_compile(self, over_padding: bool) -> None:
        lad = LinguisticAttentionAdapter(text_dim=C_T, dim=D, gru_over_padding=over_padding)
        words, pad = torch.randn(2, 5, C_T), _mask([3, 5], 5)
        # dynamo refuses nn.GRU unless `allow_rnn` is set (torch._dynamo.config, off by default).
        with torch._dynamo.config.patch(allow_rnn=True):
            compiled = torch.compile(lad, backend="eager", fullgraph=True)
            torch.testing.assert_close(compiled(words, pad).sentence, lad(words, pad).sentence)


_LAD = LinguisticAttentionAdapter(text_dim=C_T, dim=D).eval()


@given(st.data())
def test_padded_words_do_not_matter(data: st.DataObject) -> None:
    length = data.draw(st.integers(2, 7))
    n = data.draw(st.integers(1, length))
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(1, length, C_T, generator=g)
    pad = _mask([n], length)
    other = words.clone()
    perm = torch.randperm(length - n, generator=g) + n
    other[0, n:] = torch.randn(length - n, C_T, generator=g) if seed % 2 else words[0, perm]
    a, b = _LAD(words, pad), _LAD(other, pad)
    torch.testing.assert_close(a.sentence, b.sentence, **TOLERANCES[torch.float32])
    torch.testing.assert_close(a.weights, b.weights, **TOLERANCES[torch.float32])


@given(st.data())
def test_batch_independence(data: st.DataObject) -> None:
    batch = data.draw(st.integers(1, 3))
    length = data.draw(st.integers(1, 6))
    lengths = data.draw(st.lists(st.integers(1, length), min_size=batch, max_size=batch))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    words, pad = torch.randn(batch, length, C_T, generator=g), _mask(lengths, length)
    full = _LAD(words, pad).sentence
    for i in range(batch):
        alone = _LAD(words[i : i + 1], pad[i : i + 1]).sentence
        torch.testing.assert_close(full[i : i + 1], alone, **TOLERANCES[torch.float32])
