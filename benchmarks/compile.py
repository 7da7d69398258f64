"""torch.compile on samkit's prompt + decoder path and on SSP-SAM: compile cost against speed-up.

Each measurement runs in a fresh process (one torch thread) with its own Inductor cache
directory, so the first call pays the whole compilation ("cold"); the `warm cache` rows run a
second process on the same cache directory, as a later run of a user's script would.

- `sam_decoder`: the shipped `tiny-synth` SAM (128 px input, 16x16 grid, `D = 128`),
  `SamBackbone.predict_points` on one image with K = 41 single-point prompts (the paper's A-150
  average), three candidate masks each, low-resolution logits only; the image embedding is
  computed once, eagerly, outside the timed function. After the K = 41 timings the compiled
  function is called with K = 17 and K = 5 to show what a new prompt count costs.
- `ssp_sam`: the `tiny-synth` SSP-SAM forward on 2 images of 128x128 with pre-tokenised
  expressions (`model(images, tokens=model.tokenize(...))`), everything included (CLIP, SAM's
  encoder, the heads, the decoder).

Both run under `torch.no_grad()`. Modes: `eager`; `inductor` (`torch.compile(fn,
fullgraph=True)`, default mode); `inductor-dynamic` (the same with `dynamic=True`). Times are
per call: the median of `--repeats` samples (each the mean of `--inner` calls) after two warm-up
calls, with the range; "first call" is the wall time of the first call (compilation included).
"max |diff|" is the largest absolute difference from the eager output of the same process.
Compiled modes also time the eager function in the same process, each sample right after a
compiled one (`eager_median_s`): separate processes on a shared machine see different loads,
so only this same-process ratio measures the speed-up. `--name` sets the result files' stem.

    python benchmarks/compile.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from _common import machine, run_child

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(1)
torch._dynamo.config.allow_rnn = True  # SSP-SAM's linguistic adapter holds an nn.GRU
task, mode, repeats, inner = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)

if task == "sam_decoder":
    from samkit.backbones.sam import build_sam_backbone
    sam = build_sam_backbone("tiny-synth")
    with torch.no_grad():
        emb = sam.encode(torch.rand(1, 3, 128, 128, generator=gen))
    def fn(points):
        pred = sam.predict_points(emb, points, batch_size=64, multimask=True, upsample=False)
        return pred.low_res_logits
    args = (torch.rand(1, 41, 2, generator=gen) * 128,)
    others = {k: (torch.rand(1, k, 2, generator=gen) * 128,) for k in (17, 5)}
elif task == "ssp_sam":
    from samkit.systems.ssp_sam import build_ssp_sam
    model = build_ssp_sam("tiny-synth")
    def fn(images, tokens):
        return model(images, tokens=tokens).low_res_logits
    args = (torch.rand(2, 3, 128, 128, generator=gen),
            model.tokenize(["the red circle", "all squares on the left"]))
    others = {}
else:
    raise SystemExit(f"unknown task {task}")

def graphs():
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])

out = {"task": task, "mode": mode}
with torch.no_grad():
    ref = fn(*args)
    ref_others = {k: fn(*a) for k, a in others.items()}
    run = fn
    if mode != "eager":
        run = torch.compile(fn, fullgraph=True, dynamic=True if mode.endswith("dynamic") else None)
    t = time.perf_counter(); got = run(*args); out["first_call_s"] = time.perf_counter() - t
    out["max_abs_diff"] = float((got - ref).abs().max())
    run(*args); run(*args)
    samples, eager_samples = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            run(*args)
        samples.append((time.perf_counter() - t) / inner)
        if mode != "eager":  # eager samples interleaved in the same process: same load
            t = time.perf_counter()
            for _ in range(inner):
                fn(*args)
            eager_samples.append((time.perf_counter() - t) / inner)
    out.update(median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples))
    if eager_samples:
        out.update(eager_median_s=statistics.median(eager_samples), eager_min_s=min(eager_samples),
                   eager_max_s=max(eager_samples))
    out["graphs_after_first_shape"] = graphs() if mode != "eager" else 0
    for k, a in others.items():
        t = time.perf_counter(); got = run(*a)
        out[f"first_call_K{k}_s"] = time.perf_counter() - t
        out[f"max_abs_diff_K{k}"] = float((got - ref_others[k]).abs().max())
    if others and mode != "eager":
        out["graphs_after_all_shapes"] = graphs()
print("RESULT" + json.dumps(out))
"""


def _child(task: str, mode: str, repeats: int, inner: int, cache: Path) -> dict[str, Any]:
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",  # compile in-process: no worker pool on 2 cores
    }
    return run_child(_CHILD, [task, mode, str(repeats), str(inner)], env=env)


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def _row(name: str, mode: str, r: dict[str, Any], eager: dict[str, Any] | None) -> str:
    if "error" in r:
        return f"| {name} | {mode} | error: {r['error']} | | | | |"
    speedup = f"{eager['median_s'] / r['median_s']:.2f}x" if eager and "error" not in eager else "-"
    timing = f"{_ms(r['median_s'])} [{_ms(r['min_s'])}-{_ms(r['max_s'])}]"
    return (
        f"| {name} | {mode} | {r['first_call_s']:.1f} | {timing} | {speedup} | "
        f"{r['max_abs_diff']:.1e} | {r.get('graphs_after_first_shape', 0)} |"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed samples after two warm-ups")
    p.add_argument("--inner", type=int, default=5, help="calls averaged in one sample")
    p.add_argument("--tasks", default="sam_decoder,ssp_sam")
    p.add_argument("--name", default="compile", help="stem of the result files")
    p.add_argument(
        "--modes",
        default=None,
        help="modes for every task (default: all four for sam_decoder; eager and inductor for "
        "ssp_sam, whose cold compile takes minutes)",
    )
    args = p.parse_args(argv)
    all_modes = "eager,inductor,inductor-warm-cache,inductor-dynamic"
    default_modes = {"sam_decoder": all_modes, "ssp_sam": "eager,inductor"}
    res: dict[str, Any] = {
        "machine": machine(1),
        "repeats": args.repeats,
        "inner": args.inner,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks.split(","):
            for mode in (args.modes or default_modes.get(task, all_modes)).split(","):
                # the warm-cache run reuses the cache the cold `inductor` run filled
                cache = Path(tmp) / task / ("inductor" if mode.endswith("warm-cache") else mode)
                child_mode = "inductor" if mode.endswith("warm-cache") else mode
                out = _child(task, child_mode, args.repeats, args.inner, cache)
                res["results"].setdefault(task, {})[mode] = out
                print(task, mode, out, flush=True)
                res["machine"]["load_average_after"] = list(os.getloadavg())
                _write(res, args.name)
    return res


def _write(res: dict[str, Any], name: str) -> None:
    """Write the results so far as JSON and as Markdown tables."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2))
    lines = [
        "| path | mode | first call (s) | per call ms, median [range] | speed-up | max diff "
        "| graphs |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, per_mode in res["results"].items():
        eager = per_mode.get("eager")
        for mode, r in per_mode.items():
            lines.append(_row(task, mode, r, eager))
    recompiles = [
        f"| {task} | {mode} | {k} | {r[f'first_call_K{k}_s']:.2f} | {r[f'max_abs_diff_K{k}']:.1e} |"
        for task, per_mode in res["results"].items()
        for mode, r in per_mode.items()
        for k in (17, 5)
        if f"first_call_K{k}_s" in r
    ]
    table = "\n".join(lines)
    if recompiles:
        table += (
            "\n\nNew prompt counts after K = 41 (first call at K = 17, then K = 5):\n\n"
            "| path | mode | K | first call (s) | max diff |\n|---|---|---:|---:|---:|\n"
            + "\n".join(recompiles)
        )
        table += "\n\nGraphs after all shapes: " + ", ".join(
            f"{task}/{mode}: {r['graphs_after_all_shapes']}"
            for task, per_mode in res["results"].items()
            for mode, r in per_mode.items()
            if "graphs_after_all_shapes" in r
        )
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table, flush=True)


if __name__ == "__main__":
    main()
