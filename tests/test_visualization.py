from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samkit.visualization import (
    PALETTE,
    colorize_labels,
    draw_points,
    make_grid,
    overlay_masks,
    save_image,
    to_uint8,
)


def _image(h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.rand(3, h, w)


class TestToUint8:
    def test_values(self) -> None:
        img = torch.tensor([0.0, 0.5, 1.0, 2.0, -1.0, 0.25]).reshape(3, 1, 2)
        out = to_uint8(img)
        assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
        assert out[0, 0].tolist() == [0, 255, 0] and out[0, 1].tolist() == [128, 255, 64]

    def test_layouts(self) -> None:
        hwc = np.zeros((4, 5, 3), dtype=np.uint8)
        hwc[1, 2] = (1, 2, 3)
        assert np.array_equal(to_uint8(hwc), hwc) and to_uint8(hwc) is not hwc
        assert to_uint8(torch.ones(4, 5, dtype=torch.bool)).tolist()[0][0] == [255, 255, 255]
        assert to_uint8(torch.full((1, 2, 2), 0.5)).shape == (2, 2, 3)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"expected \(3, H, W\) tensor"):
            to_uint8(np.zeros((4, 5, 2)))


class TestOverlayMasks:
    def test_smoke(self, device: torch.device) -> None:
        out = overlay_masks(_image().to(device), torch.zeros(2, 6, 5, dtype=torch.bool).to(device))
        assert out.shape == (6, 5, 3) and out.dtype == np.uint8

    def test_identity_without_masks(self) -> None:
        img = _image()
        masks = torch.zeros(3, 6, 5, dtype=torch.bool)
        masks[0, :2] = True
        out = overlay_masks(img, masks)
        base = to_uint8(img)
        assert np.array_equal(out[2:], base[2:])  # untouched where no mask
        assert not np.array_equal(out[:2], base[:2])
        assert np.array_equal(overlay_masks(img, torch.zeros(0, 6, 5, dtype=torch.bool)), base)

    def test_colours(self) -> None:
        img = torch.zeros(3, 4, 4)
        masks = torch.zeros(2, 4, 4, dtype=torch.bool)
        masks[0, 0] = True
        masks[1, 0, :2] = True  # overlaps mask 0: the later mask is blended on top
        out = overlay_masks(img, masks, alpha=1.0, colors=[(255, 0, 0), (0, 0, 255)])
        assert out[0, 0].tolist() == [0, 0, 255] and out[0, 3].tolist() == [255, 0, 0]
        half = overlay_masks(torch.ones(3, 4, 4), masks[:1], alpha=0.5, colors=[(0, 0, 0)])
        assert half[0, 0].tolist() == [128, 128, 128] and half[1, 0].tolist() == [255] * 3
        default = overlay_masks(img, masks[:1], alpha=1.0)
        assert default[0, 0].tolist() == PALETTE[0].tolist()

    def test_logit_masks(self) -> None:
        logits = torch.full((1, 4, 4), -3.0)
        logits[0, 1, 1] = 2.0
        out = overlay_masks(torch.zeros(3, 4, 4), logits, alpha=1.0, colors=[(9, 9, 9)])
        assert (out.sum(-1) > 0).sum() == 1 and out[1, 1].tolist() == [9, 9, 9]

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"masks: expected \(M, 6, 5\)"):
            overlay_masks(_image(), torch.zeros(1, 5, 5, dtype=torch.bool))
        with pytest.raises(ValueError, match="alpha"):
            overlay_masks(_image(), torch.zeros(1, 6, 5, dtype=torch.bool), alpha=2.0)
        with pytest.raises(ValueError, match="colors: expected 2 colours"):
            overlay_masks(_image(), torch.zeros(2, 6, 5, dtype=torch.bool), colors=[(1, 1, 1)])


class TestDrawPoints:
    def test_labels(self) -> None:
        pts = torch.tensor([[1.0, 1.0], [6.5, 2.2], [4.0, 6.0]])
        out = draw_points(torch.zeros(3, 8, 8), pts, torch.tensor([1, 0, -1]), radius=0)
        assert out[1, 1].tolist() == [0, 255, 0] and out[2, 6].tolist() == [255, 0, 0]
        assert int((out.sum(-1) > 0).sum()) == 2  # the padding point is skipped

    def test_radius_and_colors(self) -> None:
        out = draw_points(torch.zeros(3, 9, 9), np.array([[4, 4]]), radius=1, colors=[(7, 8, 9)])
        assert int((out.sum(-1) > 0).sum()) == 5  # a radius-1 disc is a plus sign
        assert out[3, 4].tolist() == [7, 8, 9] and out[3, 3].tolist() == [0, 0, 0]
        clipped = draw_points(torch.zeros(3, 4, 4), torch.tensor([[0.0, 0.0]]), radius=3)
        assert clipped.shape == (4, 4, 3)

    def test_exception(self) -> None:
        with pytest.raises(ValueError, match=r"points: expected \(N, 2\)"):
            draw_points(_image(), torch.zeros(3))
        with pytest.raises(ValueError, match=r"labels: expected \(2,\)"):
            draw_points(_image(), torch.zeros(2, 2), torch.ones(3))


class TestColorizeMakeGridSave:
    def test_colorize(self) -> None:
        labels = torch.tensor([[0, 1], [257, 3]])
        out = colorize_labels(labels)
        assert out.shape == (2, 2, 3) and out[1, 0].tolist() == PALETTE[1].tolist()
        assert len({tuple(c) for c in PALETTE[:32].tolist()}) == 32
        with pytest.raises(ValueError, match="non-negative"):
            colorize_labels(torch.tensor([[-1]]))
        with pytest.raises(ValueError, match=r"expected \(H, W\)"):
            colorize_labels(torch.zeros(1, 2, 2, dtype=torch.long))

    def test_make_grid(self) -> None:
        tiles = [np.full((2, 3, 3), v, dtype=np.uint8) for v in (10, 20, 30)]
        grid = make_grid(tiles, ncols=2, pad=1, fill=0)
        assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 3)
        assert grid[1, 1, 0] == 10 and grid[1, 5, 0] == 20 and grid[4, 1, 0] == 30
        assert grid[4, 5, 0] == 0 and grid[0, 0, 0] == 0  # empty cell and border
        mixed = make_grid([torch.zeros(3, 4, 4), np.zeros((2, 6, 3), dtype=np.uint8)], pad=0)
        assert mixed.shape == (4, 12, 3)
        with pytest.raises(ValueError, match="expected >= 1 image"):
            make_grid([])

    def test_save_image(self, tmp_path: Path) -> None:
        arr = overlay_masks(_image(), torch.ones(1, 6, 5, dtype=torch.bool))
        path = tmp_path / "sub" / "out.png"
        save_image(arr, path)
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), arr)
        save_image(torch.zeros(3, 6, 5), tmp_path / "t.png")
        assert Image.open(tmp_path / "t.png").size == (5, 6)
