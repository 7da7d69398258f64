"""Encode and decode time of each SAM family's random-weight test preset, on the CPU.

For every family whose upstream package is installed (SAM itself; SAM 2 with `samkit[sam2]`;
HQ-SAM and MobileSAM with `samkit[hq]`; EfficientViT-SAM with `samkit[efficientvit]`), on its
test preset (`tiny`, `sam2-tiny-random`, `hq-tiny-random`, `mobile_sam-tiny-random`,
`efficientvit_sam-tiny-random`): one 96x128 image is encoded (`encode`), then 41
single-point prompts on it are decoded in one batch (`predict_points`, multimask, no
upsampling; 41 is the sparse point count of SAM-MI's benchmark). Each timing is the median of
`--runs` (default 7) runs after one warm-up run, under `torch.inference_mode`, with
`--threads` (default 1) torch threads, each family in a fresh process (so that one family's
warm state cannot speed up or slow down the next). Random weights: the cost does not depend on
their values.

These presets are for tests, not comparable models: their input size, embedding grid and width
differ (MobileSAM's TinyViT and EfficientViT-SAM's neck fix a 64x64 grid and D = 256 even at
random weights), so the numbers show what a test or CPU example costs per family, not how the
real models rank.

    python benchmarks/sam_backends.py            # writes benchmarks/results/sam_backends.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"

# family -> (preset, upstream package needed beyond segment_anything, or None)
FAMILIES: dict[str, tuple[str, str | None]] = {
    "SAM": ("tiny", None),
    "SAM 2": ("sam2-tiny-random", "sam2"),
    "HQ-SAM": ("hq-tiny-random", "segment_anything_hq"),
    "MobileSAM": ("mobile_sam-tiny-random", "segment_anything_hq"),
    "EfficientViT-SAM": ("efficientvit_sam-tiny-random", "efficientsam"),
}
NUM_POINTS = 41


def _median_time(fn: Callable[[], Any], runs: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bench_family(preset: str, runs: int, threads: int) -> dict[str, Any]:
    """Time `encode` of one image and the decoding of 41 point prompts for `preset`."""
    import warnings

    from samkit.backbones.sam import build_sam_backbone

    warnings.simplefilter("ignore")  # upstream import-time notices (timm registry, jit)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sam = build_sam_backbone(preset).eval()
    image = torch.rand(1, 3, 96, 128)
    points = torch.rand(1, NUM_POINTS, 2) * torch.tensor([128.0, 96.0])
    with torch.inference_mode():
        emb = sam.encode(image)
        pts = sam.transform_coords(points, (96, 128))
        enc, enc_all = _median_time(lambda: sam.encode(image), runs)
        dec, dec_all = _median_time(
            lambda: sam.predict_points(emb, pts, batch_size=NUM_POINTS, upsample=False), runs
        )
        pred = sam.predict_points(emb, pts, batch_size=NUM_POINTS, upsample=False)
    return {
        "preset": preset,
        "backbone": type(sam).__name__,
        "input_size": sam.img_size,
        "encoder_input_size": getattr(sam, "encoder_size", sam.img_size),
        "embedding": [sam.prompt_dim, *sam.embedding_size],
        "low_res_masks": list(pred.low_res_logits.shape),
        "parameters": sum(p.numel() for p in sam.parameters()),
        "encode_s": enc,
        "decode_41_points_s": dec,
        "encode_runs_s": enc_all,
        "decode_runs_s": dec_all,
    }


def main() -> None:
    """Run every installed family and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "sam_backends.json")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs: at least 5 timed runs")
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "threads": args.threads,
        },
        "runs": args.runs,
        "image": [96, 128],
        "points": NUM_POINTS,
        "families": {},
        "skipped": {},
    }
    for family, (preset, package) in FAMILIES.items():
        if package is not None and importlib.util.find_spec(package) is None:
            report["skipped"][family] = f"{package} is not installed"
            continue
        with mp.get_context("spawn").Pool(1) as pool:
            row = pool.apply(bench_family, (preset, args.runs, args.threads))
        report["families"][family] = row
        print(
            f"{family:16s} {preset:28s} encode {row['encode_s'] * 1e3:8.1f} ms   "
            f"decode {NUM_POINTS} points {row['decode_41_points_s'] * 1e3:8.1f} ms"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
