from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from samkit.modules.classifier import (
    MaskPooledClipClassifier,
    OpenVocabularyEnsemble,
    VisionLanguageClassifier,
    geometric_ensemble,
)


class TestVisionLanguageClassifier:
    def test_smoke(self, device: torch.device) -> None:
        clf = VisionLanguageClassifier(dim=16, text_dim=8).to(device)
        out = clf(torch.randn(3, 2, 5, 16, device=device), torch.randn(4, 8, device=device))
        assert out.shape == (3, 2, 5, 4) and out.device.type == device.type

    def test_matches_glip_formula(self) -> None:
        clf = VisionLanguageClassifier(dim=16, text_dim=8, temperature=0.1)
        with torch.no_grad():
            clf.bias_lang.normal_()
            clf.logit_scale.fill_(0.5)
        h, text = torch.randn(5, 16), torch.randn(3, 8)
        t = text / text.norm(dim=-1, keepdim=True)
        f = clf.proj(h)
        f = f / f.norm(dim=-1, keepdim=True)
        ref = f @ clf.text_proj(t / 0.1).T / math.exp(0.5) + (t @ clf.bias_lang + clf.bias0)
        torch.testing.assert_close(clf(h, text), ref)

    def test_initial_probability_is_prior(self) -> None:
        clf = VisionLanguageClassifier(dim=8, text_dim=8)
        with torch.no_grad():
            clf.text_proj.weight.zero_()
            clf.text_proj.bias.zero_()
        p = clf(torch.randn(2, 8), torch.randn(3, 8)).sigmoid()
        torch.testing.assert_close(p, torch.full((2, 3), 0.01))

    def test_exception(self) -> None:
        clf = VisionLanguageClassifier(dim=8, text_dim=4)
        with pytest.raises(ValueError, match="text"):
            clf(torch.randn(2, 8), torch.randn(3, 4, 1))

    def test_gradcheck(self) -> None:
        clf = VisionLanguageClassifier(dim=4, text_dim=3).double()
        h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        t = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(clf, (h, t), fast_mode=True)

    def test_grad_flow(self) -> None:
        clf = VisionLanguageClassifier(dim=8, text_dim=4)
        with torch.no_grad():
            clf.bias_lang.normal_()
        clf(torch.randn(2, 8), torch.randn(3, 4)).sum().backward()
        for name, prm in clf.named_parameters():
            assert prm.grad is not None and torch.isfinite(prm.grad).all(), name

    def test_compile(self) -> None:
        clf = VisionLanguageClassifier(dim=8, text_dim=4)
        h, t = torch.randn(2, 3, 8), torch.randn(5, 4)
        compiled = torch.compile(clf, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(h, t), clf(h, t))

    @given(st.data())
    def test_permuting_classes_permutes_logits(self, data: st.DataObject) -> None:
        t = data.draw(st.integers(1, 6))
        perm = torch.tensor(data.draw(st.permutations(range(t))))
        h, text = torch.randn(4, 8), torch.randn(t, 4)
        torch.testing.assert_close(_CLF(h, text[perm]), _CLF(h, text)[:, perm])


_CLF = VisionLanguageClassifier(dim=8, text_dim=4)


class TestOpenVocabulary:
    def test_geometric_ensemble_values(self) -> None:
        a, b = torch.tensor([0.2, 0.9]), torch.tensor([0.8, 0.1])
        torch.testing.assert_close(geometric_ensemble(a, b, kappa=0.4), a**0.6 * b**0.4)
        torch.testing.assert_close(geometric_ensemble(a, b, kappa=0.0), a)
        torch.testing.assert_close(geometric_ensemble(a, b, kappa=1.0), b)
        with pytest.raises(ValueError, match="same shape"):
            geometric_ensemble(a, b[:1])

    def test_mask_pooling_picks_matching_class(self) -> None:
        text = F.normalize(torch.randn(3, 8), dim=-1)
        feats = torch.zeros(1, 8, 4, 4)
        feats[..., :2] = text[0][None, :, None, None]
        feats[..., 2:] = text[2][None, :, None, None]
        masks = torch.zeros(1, 2, 4, 4)
        masks[0, 0, :, :2] = 1
        masks[0, 1, :, 2:] = 1
        probs = MaskPooledClipClassifier()(feats, masks, text)
        assert probs.argmax(-1).tolist() == [[0, 2]]
        torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2))

    def test_ensemble_module(self) -> None:
        ens = OpenVocabularyEnsemble(kappa=0.4)
        logits = torch.randn(1, 2, 3)
        feats, masks, text = torch.randn(1, 8, 4, 4), torch.rand(1, 2, 8, 8), torch.randn(3, 8)
        clip = ens.clip(feats, masks, text)
        torch.testing.assert_close(
            ens(logits, feats, masks, text), logits.sigmoid() ** 0.6 * clip**0.4
        )
        assert not list(ens.parameters())


@pytest.mark.parametrize("bad", ["learned", "clip", "kappa"])
def test_geometric_ensemble_checks_its_inputs(bad: str) -> None:
    args = {"learned": torch.tensor([0.5]), "clip": torch.tensor([0.5]), "kappa": 0.4}
    args[bad] = 1.5 if bad == "kappa" else torch.tensor([1.5])
    with pytest.raises(ValueError, match=bad):
        geometric_ensemble(args["learned"], args["clip"], kappa=args["kappa"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kappa"):
        OpenVocabularyEnsemble(kappa=-0.1)
