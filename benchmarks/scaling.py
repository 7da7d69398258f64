"""Scaling of samkit's SAM-MI path: points, classes, image side; encoder batching; caches.

Every measurement runs in a fresh process with one torch thread, so its peak memory is its own:
"peak extra" is the growth of the process's maximum resident set size over what it held right
before the first call (torch, samkit, the model and the inputs), "peak" the maximum resident set
size itself. Times are medians of `--repeats` calls after one warm-up call, with the range.
Models: the shipped pretrained `tiny-synth` backbones (SAM: 128 px input, 16x16 grid; CLIP:
128 px input) with SAM-MI's `tiny` heads; images are generated scenes.

- points: SAM decoding of n single-point prompts plus one mask per point at 256x256
  (`samkit.modules.aggregation.point_masks`, the path SAM-MI and sparse mask generation use),
  n = 41 (SAM-MI's A-150 average), 256, 1024 (AMG's 32x32 grid); on one 512x512 scene.
- classes: SAM-MI forward on one 512x512 scene with T = 10, 150, 1000 class names (the text
  embeddings are cached after the warm-up call, as for a fixed vocabulary).
- image side: SAM-MI `task.infer` (forward, logits upsampled to the image, argmax) with T = 150,
  and 41 point masks at the full image size, on one S x S scene, S = 512, 768, 1024.
- encoder batching: per-image time of SAM's image encoder (`SamBackbone.encode`, preprocessing
  included) and of CLIP's dense encoder at B = 1, 2, 4, 8 images of 512x512, for the `tiny`
  (64 px) and `tiny-synth` (128 px) backbones.
- caches: SAM-MI's two image encoders (`encode_sam` + `encode_clip`) and the whole SAM-MI
  forward on one 512x512 scene with `image_cache_size=0` and `=4` (repeated image: SAM and
  CLIP served from the cache, content key included), and the cost of the content key
  (`samkit._cache.image_keys`) of one float32 image at 512 and 1024 px.

    python benchmarks/scaling.py            # writes results/scaling.json and scaling.md
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from _common import ROOT, commit, machine, run_child

RESULTS = Path(__file__).parent / "results"

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
torch.set_num_threads(1)
task, arg, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def measure(fn, per=1):
    before = rss()
    fn()  # warm-up; the peak of the first call counts too
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append((time.perf_counter() - t) / per)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "peak_extra_mb": rss() - before, "peak_mb": rss()}

def scene(size, seed=0):
    from samkit.data.synthetic import generate_scene
    return generate_scene(seed, size=size).image[None]

def sam_mi(**kw):
    from samkit.systems.sam_mi import build_sam_mi
    torch.manual_seed(0)
    return build_sam_mi("tiny-synth", **kw).eval()

names = lambda t: [f"class {i}" for i in range(t)]
with torch.no_grad():
    if task == "points" or task == "side_masks":
        from samkit.backbones.sam import build_sam_backbone
        from samkit.modules.aggregation import point_masks
        from samkit.modules.tspp import grid_points
        size = 512 if task == "points" else arg
        n = arg if task == "points" else 41
        sam = build_sam_backbone("tiny-synth").eval()
        emb = sam.encode(scene(size))
        grid = grid_points(32, emb.input_size)  # (1024, 2) in the SAM input frame
        pick = torch.randperm(1024, generator=torch.Generator().manual_seed(0))[:n]
        points = grid[pick.sort().values][None]
        valid = torch.ones(1, n, dtype=torch.bool)
        out_size = (256, 256) if task == "points" else (size, size)
        out = measure(lambda: point_masks(sam, emb, points, valid, size=out_size, batch_size=64))
    elif task == "classes":
        model, x = sam_mi(), scene(512)
        out = measure(lambda: model(x, names(arg)))
        out["points"] = int(model(x, names(arg)).point_valid.sum())
    elif task == "side_infer":
        from samkit.systems.tasks import build_task
        model, x = sam_mi(), scene(arg)
        infer = build_task("sam_mi", model, class_names=names(150)).infer
        out = measure(lambda: infer(x))
        out["points"] = int(infer(x)[0].points.shape[0])
    elif task.startswith("encoder_"):
        which, b = task.split("_")[1], arg
        x = torch.cat([scene(512, seed=i) for i in range(b)])
        if which.startswith("sam"):
            from samkit.backbones.sam import build_sam_backbone
            enc = build_sam_backbone(which[3:] or "tiny").eval()
            fn = lambda: enc.encode(x)
        else:
            from samkit.backbones.clip import build_clip_backbone
            import torch.nn.functional as F
            enc = build_clip_backbone(which[4:] or "tiny").eval()
            side = 128 if which.endswith("synth") else 64
            y = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            fn = lambda: enc.encode_dense(y, mode="value")
        out = measure(fn, per=b)
    elif task == "cache":
        model, x = sam_mi(image_cache_size=arg), scene(512)
        model(x, names(150))  # text embeddings cached for both sides
        out = measure(lambda: model(x, names(150)))
        out["image_cache"] = {k: list(v) for k, v in model.image_cache_info().items()}
        out["points"] = int(model(x, names(150)).point_valid.sum())
    elif task == "cache_encoders":
        model, x = sam_mi(image_cache_size=arg), scene(512)
        out = measure(lambda: (model.encode_sam(x), model.encode_clip(x)))
        out["image_cache"] = {k: list(v) for k, v in model.image_cache_info().items()}
    elif task == "hash":
        from samkit._cache import image_keys
        x = torch.rand(1, 3, arg, arg)
        out = measure(lambda: image_keys(x))
print("RESULT" + json.dumps(out))
"""

TASKS: list[tuple[str, str, int]] = [
    # (table, task, argument)
    ("points", "points", 41),
    ("points", "points", 256),
    ("points", "points", 1024),
    ("classes", "classes", 10),
    ("classes", "classes", 150),
    ("classes", "classes", 1000),
    ("image side", "side_infer", 512),
    ("image side", "side_infer", 768),
    ("image side", "side_infer", 1024),
    ("image side", "side_masks", 512),
    ("image side", "side_masks", 768),
    ("image side", "side_masks", 1024),
    *[("encoder batching", f"encoder_{enc}", b) for enc in ("sam", "samtiny-synth", "clip",
                                                             "cliptiny-synth")
      for b in (1, 2, 4, 8)],
    ("caches", "cache_encoders", 0),
    ("caches", "cache_encoders", 4),
    ("caches", "cache", 0),
    ("caches", "cache", 4),
    ("caches", "hash", 512),
    ("caches", "hash", 1024),
]  # fmt: skip

LABELS = {
    "points": "points n = {} (masks at 256², 512² scene)",
    "classes": "SAM-MI forward, T = {} classes (512² scene)",
    "side_infer": "SAM-MI task.infer, S = {} (T = 150)",
    "side_masks": "41 point masks at S x S, S = {}",
    "encoder_sam": "SAM encoder `tiny`, per image at B = {}",
    "encoder_samtiny-synth": "SAM encoder `tiny-synth`, per image at B = {}",
    "encoder_clip": "CLIP dense encoder `tiny`, per image at B = {}",
    "encoder_cliptiny-synth": "CLIP dense encoder `tiny-synth`, per image at B = {}",
    "cache_encoders": "SAM-MI encode_sam + encode_clip, repeated image, image_cache_size = {}",
    "cache": "SAM-MI forward, repeated image, image_cache_size = {}",
    "hash": "content key of one float32 {0}² image",
}


def _fmt(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']} | | "
    return (
        f"{r['median_s'] * 1000:.2f} [{r['min_s'] * 1000:.2f}-{r['max_s'] * 1000:.2f}] | "
        f"{r['peak_extra_mb']:.0f} MB | {r['peak_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    p.add_argument("--only", default=None, help="comma-separated tasks to run (default all)")
    args = p.parse_args(argv)
    only = None if args.only is None else set(args.only.split(","))
    res: dict[str, Any] = {
        "machine": machine(1),
        "repeats": args.repeats,
        "tree": commit(ROOT),
        "load_before": os.getloadavg(),
        "results": [],
    }
    for table, task, arg in TASKS:
        if only is not None and task not in only:
            continue
        out = run_child(_CHILD, [task, str(arg), str(args.repeats)])
        row = {"table": table, "task": task, "arg": arg, "label": LABELS[task].format(arg), **out}
        res["results"].append(row)
        print(row["label"], _fmt(out), flush=True)
    res["load_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(json.dumps(res, indent=2))
    lines = [
        "| table | measurement | median [range] (ms) | peak extra | peak |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r['table']} | {r['label']} | {_fmt(r)} |" for r in res["results"]]
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return res


if __name__ == "__main__":
    main()
