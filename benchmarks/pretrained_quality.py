"""Quality of the shipped `tiny-synth` backbones on held-out generated scenes.

Measures what `samkit.pretrain.report.measure` measures (see its docstring), on scenes and crops
whose seeds pretraining never used, and on a scene family it never saw (`curves`: other shapes,
textures, palettes and layout):

* SAM: one centre point per object (best of three outputs, and the output with the highest
  predicted IoU), the object's box, and grid prompting with NMS (`SamAutomaticMaskGenerator`
  semantics, 16 x 16 points) recalling ground-truth segments at IoU >= 0.5;
* CLIP: zero-shot classification of object crops (seen and held-out colour-shape combinations,
  stuff) and dense zero-shot mIoU against the majority-class baseline.

    python benchmarks/pretrained_quality.py                  # the shipped weights
    python benchmarks/pretrained_quality.py --sam RUN/weights.safetensors --clip ...  # a run's
    python benchmarks/pretrained_quality.py --num 50          # fewer scenes (faster)

Writes `benchmarks/results/pretrained_quality.json` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"

TARGETS = {
    ("sam", "in_family", "point_best"): 0.80,
    ("sam", "in_family", "box"): 0.90,
    ("sam", "in_family", "grid_recall"): 0.80,
    ("sam", "heldout_family", "point_best"): 0.65,
    ("sam", "heldout_family", "box"): 0.80,
    ("clip", "", "seen_accuracy"): 0.90,
    ("clip", "", "heldout_accuracy"): 0.60,
}


def _load(kind: str, path: str | None) -> Any:
    if kind == "sam":
        from samkit.backbones.sam import build_sam_backbone

        return (
            build_sam_backbone("tiny-synth", checkpoint=path)
            if path
            else build_sam_backbone("tiny-synth")
        )
    from safetensors.torch import load_file

    from samkit.backbones.clip import build_clip_backbone, open_clip_state

    if path is None:
        return build_clip_backbone("tiny-synth")
    clip = build_clip_backbone("tiny-synth", pretrained=False)
    state = open_clip_state({k: v.float() for k, v in load_file(path).items()})
    clip.model.load_state_dict(state, strict=True)
    return clip


def _rows(report: dict[str, Any]) -> list[str]:
    lines = ["| backbone | group | measure | value | target |", "|---|---|---|---|---|"]
    for (kind, group, key), target in TARGETS.items():
        section = report[kind][group] if group else report[kind]
        value = section[key]
        ok = "met" if value >= target else "MISSED"
        lines.append(f"| {kind} | {group or '-'} | {key} | {value:.3f} | >= {target} ({ok}) |")
    for kind, group, key in (
        ("sam", "in_family", "point_choice"),
        ("sam", "heldout_family", "point_choice"),
        ("sam", "heldout_family", "grid_recall"),
        ("clip", "", "seen_color_accuracy"),
        ("clip", "", "seen_shape_accuracy"),
        ("clip", "", "heldout_color_accuracy"),
        ("clip", "", "heldout_shape_accuracy"),
        ("clip", "", "stuff_accuracy"),
        ("clip", "", "dense_miou"),
        ("clip", "", "dense_miou_plain"),
        ("clip", "", "majority_miou"),
    ):
        section = report[kind][group] if group else report[kind]
        lines.append(f"| {kind} | {group or '-'} | {key} | {section[key]:.3f} | |")
    return lines


def main() -> None:
    """Measure both backbones and write the JSON and the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam", default=None, help="SAM weights (default: shipped tiny-synth)")
    parser.add_argument("--clip", default=None, help="CLIP weights (default: shipped tiny-synth)")
    parser.add_argument("--num", type=int, default=200, help="scenes / crops per group")
    parser.add_argument("--out", type=Path, default=RESULTS / "pretrained_quality.json")
    args = parser.parse_args()

    from samkit.data.writers import write_json
    from samkit.pretrain.report import measure

    torch.manual_seed(0)
    report: dict[str, Any] = {}
    for kind in ("sam", "clip"):
        start = time.perf_counter()
        report[kind] = measure(kind, _load(kind, getattr(args, kind)).eval(), num=args.num)
        report[kind]["seconds"] = round(time.perf_counter() - start, 1)
    report["machine"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }
    report["weights"] = {"sam": args.sam or "shipped", "clip": args.clip or "shipped"}
    write_json(args.out, report, indent=2)
    print("\n".join(_rows(report)))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
