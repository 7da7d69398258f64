"""SAM-MI at scale: SMAgg at 1024 px, TSPP at 1000 classes, text embeddings of 150 classes.

Each measurement runs in a fresh process (one torch thread), so its peak memory is its own:
"peak extra" is the growth of the process's maximum resident set size over what it held right
before the call (torch, samkit and the inputs), "peak" the maximum resident set size itself.
Times are medians of `--repeats` calls after one warm-up call, with the range.

- SMAgg: `ShallowMaskAggregator` on N_s = 100 masks of 1024x1024 and K = 150 text masks on a
  64x64 grid (random masks, bool), plus a copy of the input masks as the memory-traffic floor
  (any SMAgg that returns new masks writes at least that much).
- TSPP: `TextGuidedSparsePointPrompter` forward (paper width: D = 64, 4 heads, 32x32 grid) on a
  (1, T, 24, 24) cost volume, T = 150 and 1000, under `torch.no_grad()`.
- Text: SAM-MI's `encode_text` of 150 class names with the tiny-synth CLIP, first call (miss)
  and repeated calls (served by the text-embedding cache when the tree has one).

`--baseline SRC` runs the same children against another samkit source tree (e.g. the main
branch) so before/after figures come from one run on one machine.

    python benchmarks/sam_mi_scaling.py --baseline /path/to/samkit-main
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import commit, machine, run_child

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, statistics, sys, time
import torch
torch.set_num_threads(1)
task, repeats = sys.argv[1], int(sys.argv[2])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def measure(fn):
    before = rss()
    fn()  # warm-up; the peak of the first call counts too
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "peak_extra_mb": rss() - before, "peak_mb": rss()}

if task.startswith("smagg") or task == "copy":
    from samkit.modules.aggregation import ShallowMaskAggregator
    n, k, size, grid = 100, 150, 1024, 64
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, size // 13, size // 13, generator=g) > 0.7
    idx = torch.arange(size) * coarse.shape[-1] // size
    sam = coarse[:, idx][:, :, idx].contiguous()[None]
    labels = torch.randint(0, k, (grid, grid), generator=g)
    text = torch.nn.functional.one_hot(labels, k).permute(2, 0, 1).bool()[None]
    agg = ShallowMaskAggregator()
    out = measure((lambda: sam.clone()) if task == "copy" else (lambda: agg(sam, text)))
    out["output_masks"] = int(agg(sam, text).shape[1])
elif task.startswith("tspp"):
    from samkit.modules.tspp import TextGuidedSparsePointPrompter
    t = int(task[4:])
    torch.manual_seed(0)
    m = TextGuidedSparsePointPrompter(dim=64, num_heads=4, grid=32).eval()
    cost = torch.randn(1, t, 24, 24)
    with torch.no_grad():
        out = measure(lambda: m(cost))
elif task.startswith("text"):
    from samkit.systems.sam_mi import build_sam_mi
    names = [f"class {i}" for i in range(150)]
    model = build_sam_mi("tiny-synth").eval()
    with torch.no_grad():
        t0 = time.perf_counter(); model.encode_text(names); first = time.perf_counter() - t0
        out = measure(lambda: model.encode_text(names))
    out["first_call_s"] = first
print("RESULT" + json.dumps(out))
"""


def _fmt(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    return (
        f"{r['median_s'] * 1000:.2f} ms [{r['min_s'] * 1000:.2f}-{r['max_s'] * 1000:.2f}] | "
        f"{r['peak_extra_mb']:.0f} MB | {r['peak_mb']:.0f} MB"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed calls after one warm-up")
    p.add_argument("--baseline", type=Path, default=None, help="another samkit source tree")
    p.add_argument("--tasks", default="copy,smagg,tspp150,tspp1000,text")
    args = p.parse_args(argv)
    trees = {"this tree": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    res: dict[str, Any] = {"machine": machine(1), "repeats": args.repeats, "results": {}}
    res["trees"] = {label: commit(src) for label, src in trees.items()}
    for task in args.tasks.split(","):
        for label, src in trees.items():
            if task == "copy" and label == "baseline":
                continue
            # the baseline TSPP at T = 1000 takes about a minute a call here: one timed call
            repeats = 1 if (task == "tspp1000" and label == "baseline") else args.repeats
            out = run_child(_CHILD, [task, str(repeats)], src=src)
            out["repeats"] = repeats
            res["results"].setdefault(task, {})[label] = out
            print(task, label, out, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sam_mi_scaling.json").write_text(json.dumps(res, indent=2))
    lines = [
        "| measurement | tree | calls | median [range] | peak extra | peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, per_tree in res["results"].items():
        for label, r in per_tree.items():
            lines.append(f"| {task} | {label} | {r.get('repeats', '')} | {_fmt(r)} |")
    table = "\n".join(lines)
    (RESULTS / "sam_mi_scaling.md").write_text(table + "\n")
    print(table)
    return res


if __name__ == "__main__":
    main()
