from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from samkit.losses.sam_cp import SAMCPLoss, sam_cp_loss
from samkit.types import PatchTargets, SAMCPOutput


def _case(layers: int = 2, requires_grad: bool = False):
    """One image, 1 semantic query, 3 patches (2 parts of thing 0, 1 part of the stuff class)."""
    gen = torch.Generator().manual_seed(0)
    aff = torch.randn(layers, 1, 4, 3, generator=gen, dtype=torch.float64)
    cls = torch.randn(layers, 1, 4, 3, generator=gen, dtype=torch.float64)
    aff.requires_grad_(requires_grad)
    cls.requires_grad_(requires_grad)
    out = SAMCPOutput(
        affinities=aff,
        class_logits=cls,
        patch_boxes=torch.tensor([[[0.0, 0, 4, 8], [4.0, 0, 8, 8], [8.0, 0, 16, 8]]]),
        padding_mask=torch.zeros(1, 3, dtype=torch.bool),
        num_semantic=1,
        num_things=2,
        image_size=(8, 16),
    )
    tgt = PatchTargets(
        thing_parts=torch.tensor([[1], [1], [0]]),
        thing_labels=torch.tensor([1]),
        thing_boxes=torch.tensor([[0.0, 0.0, 0.5, 1.0]]),
        thing_valid=torch.tensor([True]),
        semantic_parts=torch.tensor([[0.0, 0.0, 1.0]]),
        semantic_positive=torch.tensor([True]),
    )
    return out, tgt


def _reference(out: SAMCPOutput, tgt: PatchTargets, query: int) -> dict[str, torch.Tensor]:
    """Hand-written loss for the case above when instance query `query` matches thing 0."""
    terms = {
        k: torch.zeros((), dtype=torch.float64)
        for k in ("cls", "affinity", "dice", "sem_cls", "sem_affinity", "sem_dice")
    }
    for layer in range(out.affinities.shape[0]):
        aff, cls = out.affinities[layer, 0], out.class_logits[layer, 0]
        inst_cls = cls[1:, :2]
        target = torch.zeros_like(inst_cls)
        target[query, 1] = 1
        terms["cls"] = terms["cls"] + sigmoid_focal_loss(inst_cls, target, reduction="sum")
        row, t = aff[1 + query], torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
        terms["affinity"] = terms["affinity"] + sigmoid_focal_loss(row, t, reduction="sum") / 2
        p = row.sigmoid()
        terms["dice"] = terms["dice"] + 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        sem_logit = cls[0, 2:3]
        terms["sem_cls"] = terms["sem_cls"] + sigmoid_focal_loss(
            sem_logit, torch.ones(1, dtype=torch.float64), reduction="sum"
        )
        ts = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        terms["sem_affinity"] = terms["sem_affinity"] + sigmoid_focal_loss(
            aff[0], ts, reduction="sum"
        )
        ps = aff[0].sigmoid()
        terms["sem_dice"] = (
            terms["sem_dice"] + 1 - (2 * (ps * ts).sum() + 1) / (ps.sum() + ts.sum() + 1)
        )
    return terms


class TestSAMCPLoss:
    def test_matches_hand_computed(self) -> None:
        out, tgt = _case()
        losses = sam_cp_loss(out, [tgt])
        # find which query the matcher picked on each layer; with 2 layers both may differ, so
        # compare against the reference for the matched query of layer 0 and 1 separately
        total = {k: torch.zeros((), dtype=torch.float64) for k in _reference(out, tgt, 0)}
        for layer in range(2):
            single = SAMCPOutput(
                out.affinities[layer : layer + 1],
                out.class_logits[layer : layer + 1],
                out.patch_boxes,
                out.padding_mask,
                1,
                2,
                (8, 16),
            )
            refs = [_reference(single, tgt, q) for q in range(3)]
            got = sam_cp_loss(single, [tgt])
            match = [r for r in refs if torch.allclose(r["affinity"], got["affinity"])]
            assert len(match) >= 1
            for k in total:
                torch.testing.assert_close(got[k], match[0][k])
                total[k] = total[k] + match[0][k]
        for k, v in total.items():
            torch.testing.assert_close(losses[k], v)
        weighted = 2 * (total["cls"] + total["sem_cls"]) + total["affinity"] + total["dice"]
        weighted = weighted + total["sem_affinity"] + total["sem_dice"]
        torch.testing.assert_close(losses["loss"], weighted)

    def test_ignored_match_has_no_class_or_mask_loss(self) -> None:
        out, tgt = _case(layers=1)
        tgt.thing_valid = torch.tensor([False])
        losses = sam_cp_loss(out, [tgt])
        assert losses["affinity"] == 0 and losses["dice"] == 0
        cls = out.class_logits[0, 0, 1:, :2]
        full = sigmoid_focal_loss(cls, torch.zeros_like(cls), reduction="none")
        assert losses["cls"] < full.sum()

    def test_module_matches_functional(self) -> None:
        out, tgt = _case()
        a = SAMCPLoss(class_weight=1.0)(out, [tgt])
        b = sam_cp_loss(out, [tgt], class_weight=1.0)
        for k in a:
            torch.testing.assert_close(a[k], b[k])

    def test_exception(self) -> None:
        out, tgt = _case()
        with pytest.raises(ValueError, match="expected 1 PatchTargets"):
            sam_cp_loss(out, [tgt, tgt])

    def test_gradients_reach_all_logits_and_are_finite(self) -> None:
        out, tgt = _case(requires_grad=True)
        sam_cp_loss(out, [tgt])["loss"].backward()
        assert torch.isfinite(out.affinities.grad).all()
        assert (out.class_logits.grad[:, 0, 1:, :2] != 0).all()

    def test_padding_and_no_patches(self) -> None:
        out, tgt = _case(layers=1)
        pad_out = SAMCPOutput(
            torch.nn.functional.pad(out.affinities, (0, 1, 0, 1), value=9.0),
            torch.nn.functional.pad(out.class_logits, (0, 0, 0, 1), value=9.0),
            torch.nn.functional.pad(out.patch_boxes, (0, 0, 0, 1)),
            torch.tensor([[False, False, False, True]]),
            1,
            2,
            (8, 16),
        )
        a, b = sam_cp_loss(out, [tgt]), sam_cp_loss(pad_out, [tgt])
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        empty = SAMCPOutput(
            torch.zeros(1, 1, 1, 0),
            torch.zeros(1, 1, 1, 3),
            torch.zeros(1, 0, 4),
            torch.zeros(1, 0, dtype=torch.bool),
            1,
            2,
            (8, 16),
        )
        tgt0 = PatchTargets(
            torch.zeros(0, 1).long(),
            torch.tensor([1]),
            torch.tensor([[0.0, 0, 1, 1]]),
            torch.tensor([False]),
            torch.zeros(1, 0),
            torch.tensor([False]),
        )
        assert torch.isfinite(sam_cp_loss(empty, [tgt0])["loss"])

    def test_merged_boxes_use_each_image_size(self) -> None:
        """An image padded into a wider batch has the loss it has alone (boxes in its own frame)."""
        out, tgt = _case()
        wide = SAMCPOutput(
            out.affinities,
            out.class_logits,
            out.patch_boxes,
            out.padding_mask,
            1,
            2,
            (8, 32),
            image_sizes=[(8, 16)],
        )
        a, b = sam_cp_loss(out, [tgt]), sam_cp_loss(wide, [tgt])
        for k in a:
            torch.testing.assert_close(a[k], b[k])

    def test_empty_batch(self) -> None:
        empty = SAMCPOutput(
            torch.zeros(2, 0, 1, 0),
            torch.zeros(2, 0, 1, 3),
            torch.zeros(0, 0, 4),
            torch.zeros(0, 0, dtype=torch.bool),
            1,
            2,
            (8, 16),
        )
        losses = sam_cp_loss(empty, [])
        assert all(v.item() == 0 for v in losses.values())

    def test_targets_must_fit_the_output(self) -> None:
        out, tgt = _case()
        bad = PatchTargets(
            tgt.thing_parts[:2],
            tgt.thing_labels,
            tgt.thing_boxes,
            tgt.thing_valid,
            tgt.semantic_parts,
            tgt.semantic_positive,
        )
        with pytest.raises(ValueError, match=r"targets\[0\].thing_parts"):
            sam_cp_loss(out, [bad])
        with pytest.raises(ValueError, match="alpha"):
            sam_cp_loss(out, [tgt], alpha=1.5)
