"""The quality report of a pretrained backbone on held-out generated scenes.

`measure("sam", sam)` gives, on scenes never used in training (seeds from `EVAL_OFFSET`) of the
pretraining families and of the held-out family (`samkit.data.scenes.HELDOUT_FAMILY`, never
pretrained on):

* `point_best` / `point_choice` / `box`: mean IoU over the things (objects) of one centre point
  (best of the three outputs / the output with the highest predicted IoU) and of the box;
* `grid_recall`: the fraction of all ground-truth segments (things and stuff) that automatic
  mask generation recalls at IoU >= 0.5, and `grid_masks`, the proposals per image.

`measure("clip", clip)` gives zero-shot accuracies of object crops on seen and held-out
colour-shape combinations and the dense zero-shot mIoU of samkit's scenes (see
`samkit.pretrain.clip`).

`benchmarks/pretrained_quality.py` prints these for the shipped weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from samkit.data.scenes import HELDOUT_FAMILY, PRETRAIN_FAMILIES, generate_family_scene

__all__ = ["EVAL_OFFSET", "measure", "measure_sam"]

EVAL_OFFSET = 10**9
"""First seed of the evaluation scenes (training uses seeds below `10**8`)."""


@torch.no_grad()
def measure_sam(sam: Any, *, num: int = 200, size: int = 128) -> dict[str, Any]:
    """SAM's prompt and grid figures on `num` scenes per group (see the module docstring).

    Args:
        sam: A SAM backend (eval mode).
        num: Scenes per group: the pretraining families (alternating) and the held-out family.
        size: Image side.

    Returns:
        `{"in_family": {...}, "heldout_family": {...}}`, each with `point_best`,
        `point_choice`, `box`, `grid_recall`, `grid_masks`, `things` and `segments`.
    """
    from samkit.pretrain.quality import grid_recall, prompt_quality

    groups = {
        "in_family": [PRETRAIN_FAMILIES[i % len(PRETRAIN_FAMILIES)] for i in range(num)],
        "heldout_family": [HELDOUT_FAMILY] * num,
    }
    out: dict[str, Any] = {}
    for group, families in groups.items():
        sums = {"point_best": 0.0, "point_choice": 0.0, "box": 0.0}
        things = recalled = segments = proposals = 0
        for i, family in enumerate(families):
            scene = generate_family_scene(family, EVAL_OFFSET + i, size=size)
            q = prompt_quality(sam, scene.image, scene.masks[scene.is_thing])
            for k in sums:
                sums[k] += float(q[k].sum())
            things += int(scene.is_thing.sum())
            r, s, p = grid_recall(sam, scene.image, scene.masks)
            recalled, segments, proposals = recalled + r, segments + s, proposals + p
        out[group] = {
            **{k: round(v / max(things, 1), 4) for k, v in sums.items()},
            "grid_recall": round(recalled / max(segments, 1), 4),
            "grid_masks": round(proposals / max(num, 1), 2),
            "things": things,
            "segments": segments,
            "scenes": num,
        }
    return out


def measure(kind: str, model: nn.Module, *, num: int = 200) -> dict[str, Any]:
    """The quality report of a `"sam"` or `"clip"` backbone (see the module docstring)."""
    if kind == "sam":
        return measure_sam(model, num=num)
    if kind == "clip":
        from samkit.pretrain.clip import measure_clip

        return measure_clip(model, num=num)
    raise ValueError(f"kind: expected 'sam' or 'clip', got {kind!r}")
