"""The training targets and diagnostics of the tasks live in the backend's own input frame.

SAM letterboxes an image (long side to `S`, the rest padded); SAM 2 squashes it to `S x S`. The
SSP-SAM targets and SAM-MI's point coverage must follow whichever frame the backend encodes in,
or they are silently misplaced on non-square images.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch

from samkit.backbones.sam import build_sam_backbone
from samkit.data.datasets import SyntheticReferringDataset
from samkit.metrics.referring import to_sam_padded_frame
from samkit.modules.tspp import grid_points
from samkit.systems._tasks_common import sam_input_size
from samkit.systems.sam_mi_task import sampled_cells
from samkit.systems.ssp_sam import build_ssp_sam
from samkit.systems.tasks import build_task

SIZES = [(48, 80), (80, 48), (64, 64)]


def _backends() -> list[Any]:
    """SAM, SAM 2 (squashes) and EfficientViT-SAM (encodes at 128 px, prompts at 1024 px)."""
    out: list[Any] = ["tiny"]
    optional = {
        "sam2-tiny-random": ("sam2", "sam2"),
        "efficientvit_sam-tiny-random": ("efficientsam", "efficientvit"),
    }
    for variant, (package, extra) in optional.items():
        try:
            importlib.import_module(package)
        except ImportError:
            out.append(pytest.param(variant, marks=pytest.mark.skip(f"needs samkit[{extra}]")))
        else:
            out.append(variant)
    return out


@pytest.mark.parametrize("variant", _backends())
@pytest.mark.parametrize("size", SIZES)
def test_input_size_is_the_one_the_encoder_reports(variant: str, size: tuple[int, int]) -> None:
    sam = build_sam_backbone(variant)
    with torch.no_grad():
        emb = sam.encode(torch.rand(1, 3, *size))
    assert sam_input_size(sam, size) == tuple(emb.input_size)


@pytest.mark.parametrize("variant", _backends())
@pytest.mark.parametrize("size", SIZES)
def test_target_masks_land_where_the_backend_maps_the_pixels(
    variant: str, size: tuple[int, int]
) -> None:
    """A box in the image and its corners mapped by `transform_coords` bound the same cells."""
    torch.manual_seed(0)
    sam = build_sam_backbone(variant)
    h, w = size
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    y0, y1, x0, x1 = h // 4, 3 * h // 4, w // 2, w - 4
    mask[0, y0:y1, x0:x1] = True
    frame = 4 * sam.embedding_size[0]
    low = to_sam_padded_frame(
        mask, long_side=sam.img_size, frame_size=frame, input_size=sam_input_size(sam, size)
    )[0]
    corners = torch.tensor([[float(x0), float(y0)], [float(x1), float(y1)]])
    (fx0, fy0), (fx1, fy1) = (sam.transform_coords(corners, size) * frame / sam.img_size).tolist()
    ys, xs = low.nonzero(as_tuple=True)
    # nearest resampling twice: the mask's extent is the mapped box to within a cell or two
    assert abs(ys.min().item() - fy0) <= 2 and abs(ys.max().item() + 1 - fy1) <= 2
    assert abs(xs.min().item() - fx0) <= 2 and abs(xs.max().item() + 1 - fx1) <= 2


@pytest.mark.parametrize("variant", _backends())
def test_ssp_sam_targets_use_the_backend_frame(variant: str) -> None:
    model = build_ssp_sam("tiny", sam_variant=variant)
    task = build_task("ssp_sam", model, class_names=())
    data = SyntheticReferringDataset(num_scenes=2, size=(48, 80), seed=0)
    batch = task.collate([data[i] for i in range(len(data))])
    masks, _, has = task.targets(batch)
    sam = model.sam
    frame = 4 * sam.embedding_size[0]
    expected = to_sam_padded_frame(
        batch.target_masks,
        long_side=sam.img_size,
        frame_size=frame,
        input_size=sam_input_size(sam, (48, 80)),
    )
    assert torch.equal(masks[:, 0].bool(), expected)
    assert torch.equal(has, batch.target_masks.flatten(1).any(1))


@pytest.mark.parametrize("variant", _backends())
@pytest.mark.parametrize("size", SIZES)
def test_every_grid_point_falls_in_its_own_cell(variant: str, size: tuple[int, int]) -> None:
    sam = build_sam_backbone(variant)
    input_size = sam_input_size(sam, size)
    g = 8
    points = grid_points(g, input_size)
    cells = sampled_cells(points, size, input_size=input_size, grid=g)
    assert cells.all()
    one = sampled_cells(points[g + 2 : g + 3], size, input_size=input_size, grid=g)
    assert one.nonzero().tolist() == [[1, 2]]


def test_sampled_cells_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="sam_size or input_size"):
        sampled_cells(torch.zeros(1, 2), (8, 8), grid=4)
