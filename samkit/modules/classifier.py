"""SAM-CP classification: a GLIP-style vision-language classifier and the open-vocabulary ensemble.

Axis legend:
    b - images (B)
    k - queries (K)
    t - classes (T)
    c - joint embedding channels (C)
    hw - pixels or feature grid
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samkit._checks import check_probabilities, check_shape, check_unit_interval

__all__ = [
    "MaskPooledClipClassifier",
    "OpenVocabularyEnsemble",
    "VisionLanguageClassifier",
    "geometric_ensemble",
]


class VisionLanguageClassifier(nn.Module):
    """GLIP-style classifier: normalised query features against projected class text embeddings.

    `logit[k, t] = <f_k, T_t> / exp(logit_scale) + <t_t, bias_lang> + bias0`, where
    `f = normalize(Linear(h))`, `t = normalize(E)`, `T = Linear(t / temperature)`; `bias0` comes
    from a 0.01 prior; logits are clamped to +-50000. Follows SAM-CP, spec section 4 (one linear
    shared by all decoder layers).

    Examples:
        >>> clf = VisionLanguageClassifier(dim=16, text_dim=8)
        >>> clf(torch.randn(2, 5, 16), torch.randn(3, 8)).shape
        torch.Size([2, 5, 3])
    """

    def __init__(
        self,
        *,
        dim: int,
        text_dim: int,
        temperature: float = 0.1,
        prior_prob: float = 0.01,
    ) -> None:
        """Create the classifier.

        Args:
            dim: Query width `D`.
            text_dim: Text embedding width `C`.
            temperature: Divides the normalised text embeddings before projection.
            prior_prob: Initial class probability that sets `bias0`.
        """
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.temperature = temperature
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def forward(self, hidden: Tensor, text: Tensor) -> Tensor:
        """Classify.

        Args:
            hidden: Query states `(..., K, D)` (e.g. `(L, B, K, D)` for all layers).
            text: Class text embeddings `(T, C)` (normalised here).

        Returns:
            Class logits `(..., K, T)`.

        Raises:
            ValueError: On a wrong text shape.
        """
        check_shape(hidden, "... K D", name="hidden")
        check_shape(text, "T C", name="text")
        t = F.normalize(text, dim=-1)
        bias = t @ self.bias_lang + self.bias0  # t
        classes = self.text_proj(t / self.temperature)  # t d
        f = F.normalize(self.proj(hidden), dim=-1)
        logits = f @ classes.T / self.logit_scale.exp() + bias
        return logits.clamp(-50000.0, 50000.0)


def geometric_ensemble(learned: Tensor, clip: Tensor, *, kappa: float = 0.4) -> Tensor:
    """Geometric mix `p = learned^(1 - kappa) * clip^kappa` of two class probability tensors.

    Args:
        learned: Probabilities from the trained classifier, any shape.
        clip: Probabilities from the frozen CLIP classifier, same shape.
        kappa: Weight of the CLIP classifier (0.4 in the paper).

    Returns:
        Mixed probabilities, same shape.

    Raises:
        ValueError: If the shapes differ, a probability or `kappa` is outside `[0, 1]`.

    Examples:
        >>> geometric_ensemble(torch.tensor([0.25]), torch.tensor([1.0]), kappa=0.5)
        tensor([0.5000])
    """
    if learned.shape != clip.shape:
        raise ValueError(
            f"learned, clip: expected the same shape, got {tuple(learned.shape)} and "
            f"{tuple(clip.shape)}"
        )
    check_probabilities(learned, name="learned")
    check_probabilities(clip, name="clip")
    kappa = check_unit_interval(kappa, name="kappa")
    eps = torch.finfo(learned.dtype).tiny
    return learned.clamp_min(eps).pow(1 - kappa) * clip.clamp_min(eps).pow(kappa)


class MaskPooledClipClassifier(nn.Module):
    """Frozen-CLIP classifier: mask-pooled dense CLIP features against class text embeddings.

    Each mask average-pools the dense features (resized to the mask size), the pooled vector is
    L2-normalised and compared with the normalised text embeddings; a softmax over classes at
    `temperature` gives probabilities. It has no trainable parameters.

    Examples:
        >>> clf = MaskPooledClipClassifier()
        >>> clf(torch.randn(1, 8, 4, 4), torch.ones(1, 2, 16, 16), torch.randn(3, 8)).shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, *, temperature: float = 0.01) -> None:
        """Create the classifier.

        Args:
            temperature: Softmax temperature on cosine similarities.
        """
        super().__init__()
        self.temperature = temperature

    def forward(self, features: Tensor, masks: Tensor, text: Tensor) -> Tensor:
        """Classify masks.

        Args:
            features: Dense CLIP features in the joint space `(B, C, h, w)`.
            masks: Binary or soft masks `(B, K, H, W)`.
            text: Class text embeddings `(T, C)`.

        Returns:
            Class probabilities `(B, K, T)` (softmax over `T`).
        """
        s = check_shape(features, "B C h w", name="features")
        m = check_shape(masks, "B K H W", name="masks", known={"B": s["B"]})
        check_shape(text, "T C", name="text", known={"C": s["C"]})
        feats = F.interpolate(features, size=(m["H"], m["W"]), mode="bilinear", align_corners=False)
        w = masks.to(feats.dtype)
        pooled = torch.einsum("bkhw,bchw->bkc", w, feats) / w.sum((-1, -2))[..., None].clamp_min(1)
        dtype = torch.promote_types(pooled.dtype, text.dtype)  # e.g. fp32 features, bf16 text
        sim = F.normalize(pooled.to(dtype), dim=-1) @ F.normalize(text.to(dtype), dim=-1).T
        return (sim / self.temperature).softmax(-1)


class OpenVocabularyEnsemble(nn.Module):
    """Open-vocabulary scores: the learned classifier mixed with a frozen-CLIP classifier.

    `p = sigmoid(learned_logits)^(1 - kappa) * p_clip^kappa` with `kappa = 0.4`. This follows the
    paper's description (its Table on kappa); the released code does not contain the ensemble.

    Examples:
        >>> ens = OpenVocabularyEnsemble()
        >>> p = ens(torch.zeros(1, 2, 3), torch.randn(1, 8, 4, 4), torch.ones(1, 2, 8, 8),
        ...         torch.randn(3, 8))
        >>> p.shape
        torch.Size([1, 2, 3])
    """

    def __init__(self, *, kappa: float = 0.4, temperature: float = 0.01) -> None:
        """Create the ensemble.

        Args:
            kappa: Weight of the CLIP probabilities.
            temperature: Softmax temperature of the CLIP classifier.
        """
        super().__init__()
        self.kappa = check_unit_interval(kappa, name="kappa")
        self.clip = MaskPooledClipClassifier(temperature=temperature)

    def forward(
        self, learned_logits: Tensor, clip_features: Tensor, masks: Tensor, text: Tensor
    ) -> Tensor:
        """Mix the two classifiers.

        Args:
            learned_logits: Logits of the learned classifier `(B, K, T)`.
            clip_features: Dense CLIP features `(B, C, h, w)`.
            masks: Query masks `(B, K, H, W)`.
            text: Class text embeddings `(T, C)`.

        Returns:
            Mixed probabilities `(B, K, T)`.
        """
        check_shape(learned_logits, "B K T", name="learned_logits")
        clip = self.clip(clip_features, masks, text)
        return geometric_ensemble(learned_logits.sigmoid(), clip, kappa=self.kappa)
