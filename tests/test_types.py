from __future__ import annotations

import pytest
import torch

from samkit.types import ImageEmbedding, MaskPrediction, Prompts, TextEmbedding


class TestPrompts:
    def test_batch_shape(self) -> None:
        p = Prompts(
            points=torch.zeros(2, 3, 4, 2), labels=torch.ones(2, 3, 4), boxes=torch.zeros(2, 3, 4)
        )
        assert p.batch_shape == (2, 3)
        assert not p.is_empty
        assert Prompts().is_empty and Prompts().batch_shape is None

    def test_points_need_labels(self) -> None:
        with pytest.raises(ValueError, match="points and labels must be given together"):
            Prompts(points=torch.zeros(1, 1, 1, 2))

    def test_mismatched_batch(self) -> None:
        with pytest.raises(ValueError, match=r"share \(B, K\)"):
            Prompts(boxes=torch.zeros(2, 3, 4), masks=torch.zeros(2, 2, 1, 8, 8))

    @pytest.mark.parametrize(
        ("kwargs", "msg"),
        [
            ({"points": torch.zeros(1, 1, 2), "labels": torch.zeros(1, 1)}, "Prompts.points"),
            ({"points": torch.zeros(1, 1, 3, 2), "labels": torch.zeros(1, 1, 2)}, "Prompts.labels"),
            ({"boxes": torch.zeros(1, 1, 5)}, "Prompts.boxes"),
            ({"masks": torch.zeros(1, 1, 2, 8, 8)}, "Prompts.masks"),
            ({"sparse_embeddings": torch.zeros(1, 1, 8)}, "Prompts.sparse_embeddings"),
            ({"dense_embeddings": torch.zeros(1, 1, 8, 4)}, "Prompts.dense_embeddings"),
        ],
    )
    def test_field_shapes(self, kwargs: dict, msg: str) -> None:
        with pytest.raises(ValueError, match=msg):
            Prompts(**kwargs)

    def test_to_and_detach(self) -> None:
        pts = torch.zeros(1, 1, 1, 2, requires_grad=True)
        p = Prompts(points=pts, labels=torch.ones(1, 1, 1)).to(torch.float64).detach()
        assert p.points is not None and p.points.dtype == torch.float64
        assert not p.points.requires_grad


class TestMaskPrediction:
    def test_binary_prefers_original_size(self) -> None:
        low = torch.tensor([[[[[-1.0, 1.0]]]]])
        full = torch.tensor([[[[[1.0, -1.0, 2.0]]]]])
        pred = MaskPrediction(low_res_logits=low, iou_scores=torch.ones(1, 1, 1), logits=full)
        assert pred.binary().tolist() == [[[[[True, False, True]]]]]
        assert pred.binary(1.5).tolist() == [[[[[False, False, True]]]]]
        assert MaskPrediction(
            low_res_logits=low, iou_scores=torch.ones(1, 1, 1)
        ).binary().tolist() == [[[[[False, True]]]]]

    def test_best_picks_highest_iou(self) -> None:
        low = torch.arange(2 * 3 * 3 * 4, dtype=torch.float32).reshape(2, 3, 3, 2, 2)
        iou = torch.rand(2, 3, 3)
        full = torch.randn(2, 3, 3, 5, 5)
        best = MaskPrediction(low_res_logits=low, iou_scores=iou, logits=full).best()
        idx = iou.argmax(-1)
        assert best.low_res_logits.shape == (2, 3, 1, 2, 2)
        assert best.logits is not None and best.logits.shape == (2, 3, 1, 5, 5)
        for b in range(2):
            for k in range(3):
                torch.testing.assert_close(best.low_res_logits[b, k, 0], low[b, k, idx[b, k]])
                torch.testing.assert_close(best.logits[b, k, 0], full[b, k, idx[b, k]])
                assert best.iou_scores[b, k, 0] == iou[b, k].max()


def test_image_embedding_select() -> None:
    emb = ImageEmbedding(
        torch.randn(3, 4, 2, 2), (8, 6), (16, 12), intermediates=[torch.randn(3, 5)]
    )
    sub = emb.select(1)
    assert sub.batch_size == 1
    torch.testing.assert_close(sub.embeddings[0], emb.embeddings[1])
    torch.testing.assert_close(sub.intermediates[0][0], emb.intermediates[0][1])
    assert sub.input_size == (8, 6) and sub.original_size == (16, 12)


class TestTextEmbedding:
    def test_checks(self) -> None:
        with pytest.raises(ValueError, match=r"expected \(T, D\)"):
            TextEmbedding(torch.zeros(3), ["a", "b", "c"])
        with pytest.raises(ValueError, match="2 texts but 3 embeddings"):
            TextEmbedding(torch.zeros(3, 4), ["a", "b"])
        with pytest.raises(ValueError, match="given together"):
            TextEmbedding(torch.zeros(1, 4), ["a"], token_states=torch.zeros(1, 2, 4))

    def test_to_keeps_texts(self) -> None:
        te = TextEmbedding(torch.zeros(2, 4), ["a", "b"]).to(torch.float64)
        assert te.texts == ["a", "b"] and te.embeddings.dtype == torch.float64
