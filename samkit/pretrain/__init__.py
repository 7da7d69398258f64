"""Pretraining of the tiny backbones samkit ships (`tiny-synth`), and their quality measures.

* `SamPretrainTask`: promptable segmentation with SAM's recipe on varied generated scenes
  (`samkit.data.scenes`).
* `ClipPretrainTask`: contrastive image-text training of a tiny open_clip CLIP, with held-out
  colour-shape combinations.
* `pretrain` and `RECIPES`: the runs that made the shipped weights (`samkit pretrain sam|clip`).
* `measure`: the quality report (`samkit.pretrain.quality` holds the measures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.pretrain.clip import ClipPairDataset, ClipPretrainTask
    from samkit.pretrain.report import measure
    from samkit.pretrain.run import RECIPES, PretrainRecipe, pretrain
    from samkit.pretrain.sam import FamilySceneDataset, SamPretrainTask

__all__ = [
    "ClipPairDataset",
    "ClipPretrainTask",
    "FamilySceneDataset",
    "PretrainRecipe",
    "RECIPES",
    "SamPretrainTask",
    "measure",
    "pretrain",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "clip": ["ClipPairDataset", "ClipPretrainTask"],
            "report": ["measure"],
            "run": ["RECIPES", "PretrainRecipe", "pretrain"],
            "sam": ["FamilySceneDataset", "SamPretrainTask"],
        },
        submodules=("quality",),
    )
