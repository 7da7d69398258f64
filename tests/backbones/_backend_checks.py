"""Checks shared by the tests of the optional SAM backends (SAM 2, HQ-SAM, MobileSAM)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from samkit.backbones.sam import build_sam_backbone
from samkit.types import Prompts


def hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `package` (and every submodule already imported) fail to import."""
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, package, None)  # type: ignore[arg-type]


def assert_missing_package_names_extra(
    monkeypatch: pytest.MonkeyPatch, package: str, variant: str, extra: str
) -> None:
    """Building `variant` without `package` raises an ImportError naming `samkit[extra]`."""
    hide_package(monkeypatch, package)
    with pytest.raises(ImportError, match=rf'pip install "samkit\[{extra}\]"'):
        build_sam_backbone(variant)


def decoder_gradients(sam: nn.Module, *, skip: tuple[str, ...] = ()) -> dict[str, bool]:
    """Backpropagate a loss through encode + predict; which decoder parameters got a gradient.

    The loss uses single- and multi-mask logits and IoU predictions of a box + point prompt, so
    every mask token and the IoU head take part. Returns `{name: has finite non-zero grad}` for
    the decoder parameters not starting with a prefix in `skip`.
    """
    sam.train()
    sam.zero_grad()
    images = torch.rand(2, 3, 40, 56)
    emb = sam.encode(images)  # type: ignore[operator]
    prompts = Prompts(
        points=torch.tensor([[[[30.0, 20.0]]], [[[10.0, 50.0]]]]),
        labels=torch.ones(2, 1, 1),
        boxes=torch.tensor([[[5.0, 5.0, 60.0, 40.0]], [[0.0, 10.0, 50.0, 60.0]]]),
    )
    loss = torch.zeros(())
    for multimask in (False, True):
        pred = sam.predict(emb, prompts, multimask=multimask, upsample=False)  # type: ignore[operator]
        loss = loss + pred.low_res_logits.sigmoid().mean() + pred.iou_scores.mean()
    loss.backward()
    out = {}
    for name, p in sam.mask_decoder.named_parameters():  # type: ignore[union-attr]
        if name.startswith(skip):
            continue
        g = p.grad
        out[name] = g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0)
    sam.eval()
    return out


def run_ssp_sam(variant: str, folder: Path) -> None:
    """SSP-SAM's tiny preset builds and decodes with `variant` as its SAM, and its
    `save_pretrained` / `from_pretrained` round trip rebuilds the same backend."""
    from samkit.systems.ssp_sam import SSPSAM, build_ssp_sam

    model = build_ssp_sam("tiny", sam_variant=variant).eval()
    sam = model.sam
    images = torch.rand(2, 3, 64, 80)
    texts = ["the red circle", "all squares"]
    out = model(images, texts, upsample=True)
    grid = 4 * sam.embedding_size[0]
    assert out.low_res_logits.shape == (2, 1, grid, grid)
    assert out.logits is not None and out.logits.shape == (2, 1, 64, 80)
    assert torch.isfinite(out.low_res_logits).all()
    assert any(p.requires_grad for p in sam.mask_decoder.parameters())
    assert not any(p.requires_grad for p in sam.image_encoder.parameters())
    model.save_pretrained(folder)
    loaded = SSPSAM.from_pretrained(folder).eval()
    assert type(loaded.sam) is type(sam)
    again = loaded(images, texts, upsample=True)
    assert torch.equal(again.low_res_logits, out.low_res_logits)


def run_sam_cp(variant: str) -> None:
    """SAM-CP's tiny preset builds its proposer on `variant` and predicts panoptic maps."""
    from samkit.systems.sam_cp import build_sam_cp

    model = build_sam_cp("tiny", sam_variant=variant, points_per_side=3).eval()
    results = model.predict(torch.rand(1, 3, 48, 64))
    assert len(results) == 1 and results[0].panoptic.shape == (48, 64)


def run_sam_mi(variant: str, **overrides: object) -> None:
    """SAM-MI's tiny preset builds on `variant` and segments a batch."""
    from samkit.systems.sam_mi import build_sam_mi

    model = build_sam_mi("tiny", sam_variant=variant, **overrides).eval()
    out = model(torch.rand(2, 3, 64, 64), ["cat", "dog", "sky"])
    assert out.logits.shape[:2] == (2, 3)
    assert torch.isfinite(out.logits).all()
