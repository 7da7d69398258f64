"""fp32 against bf16: SAM image encoders and each system's inference, time and accuracy.

Modes, on the same weights and inputs:

- `fp32`: the default;
- `bf16`: `precision="bf16"` (bfloat16 autocast around the encoders and decoders; weights fp32);
- `cast`: `model.to(torch.bfloat16)` (weights and activations bfloat16).

Measurements (one process, `--threads` torch threads, `torch.no_grad()`):

- `encoder_tiny_synth`: `SamBackbone.encode` of the shipped `tiny-synth` SAM, one 128 px image;
- `encoder_vit_b_<S>`: the ViT-B image encoder (random weights) at an `S x S` input
  (`--vit-b-size`, default 512: a 32 x 32 grid; 1024 is the official size and ~4x slower);
- `ssp_sam`, `sam_cp`, `sam_mi`: each system's inference on one 128 px synthetic scene with the
  `tiny-synth` presets (shipped SAM and CLIP, random heads): SSP-SAM `forward` with
  `upsample=True` and one expression, SAM-CP `predict` with its SAM proposer (16 x 16 points;
  query thresholds at 0 so that the random heads' results are not empty), SAM-MI `forward` on
  the synthetic vocabulary.

Times are medians of `--repeats` calls after one warm-up call per mode, with the range; the
modes are interleaved call by call so that load on a shared machine hits them alike. Accuracy
is against fp32: the relative error `||x - x_fp32|| / ||x_fp32||` of the main output, and the
agreement of the decisions (mask pixels, semantic labels).

    python benchmarks/precision.py           # writes benchmarks/results/precision.{json,md}
    python benchmarks/precision.py --vit-b-size 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import commit, machine
from torch import Tensor, nn

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
MODES = ("fp32", "bf16", "cast")


def _rel(ref: Tensor, out: Tensor) -> float:
    ref, out = ref.float(), out.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def _agree(a: Tensor, b: Tensor) -> float:
    return float((a == b).float().mean())


def _with_precision(model: nn.Module, mode: str) -> nn.Module:
    """The model of a mode: `cast` is a bf16 copy; `bf16` and `fp32` set the config."""
    if mode == "cast":
        out = copy.deepcopy(model).to(torch.bfloat16)
        if hasattr(out, "config"):
            out.config = copy.copy(out.config)
            out.config.precision = "fp32"
        return out
    out = copy.copy(model)  # shares the weights, not the config object
    if hasattr(model, "config"):
        out.config = copy.copy(model.config)
        out.config.precision = mode
    return out


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    """Median / min / max seconds of each function, interleaved call by call."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
        for k, v in times.items()
    }


def _encoder(sam: Any, images: Tensor, modes: tuple[str, ...], repeats: int) -> dict[str, Any]:
    """Encoder timing: autocast around `encode` for `bf16` (the backbone has no config)."""
    from samkit._precision import autocast

    cast = copy.deepcopy(sam).to(torch.bfloat16) if "cast" in modes else None

    def run(mode: str) -> Tensor:
        if mode == "cast":
            assert cast is not None
            return cast.encode(images).embeddings
        with autocast("bf16" if mode == "bf16" else "fp32", images.device):
            return sam.encode(images).embeddings

    fns = {m: (lambda m=m: run(m)) for m in modes}
    out: dict[str, Any] = {"time": _time(fns, repeats)}
    ref = run("fp32")
    out["accuracy"] = {m: {"embedding_rel_error": _rel(ref, run(m))} for m in modes if m != "fp32"}
    return out


def _system(
    model: nn.Module, call: Callable[[nn.Module], Any], modes: tuple[str, ...],
    repeats: int, compare: Callable[[Any, Any], dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    models = {m: _with_precision(model, m) for m in modes}
    fns = {m: (lambda m=m: call(models[m])) for m in modes}
    out: dict[str, Any] = {"time": _time(fns, repeats)}
    ref = call(models["fp32"])
    out["accuracy"] = {m: compare(ref, call(models[m])) for m in modes if m != "fp32"}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per mode after a warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--vit-b-size", type=int, default=512, help="ViT-B input side (1024: official)")
    p.add_argument("--tasks", default="encoder_tiny_synth,encoder_vit_b,ssp_sam,sam_cp,sam_mi")
    p.add_argument("--modes", default=",".join(MODES), help="of fp32 (always), bf16, cast")
    p.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    modes = tuple(dict.fromkeys(["fp32", *args.modes.split(",")]))

    from dataclasses import replace

    from samkit.backbones.sam import SAM_VARIANTS, build_sam_backbone
    from samkit.data.synthetic import CLASS_NAMES, generate_scene
    from samkit.systems import build_sam_cp, build_sam_mi, build_ssp_sam

    image = generate_scene(0, size=128).image[None]
    res: dict[str, Any] = {
        "machine": machine(args.threads),
        "commit": commit(),
        "repeats": args.repeats,
        "modes": list(modes),
        "results": {},
    }
    with torch.no_grad():
        for task in args.tasks.split(","):
            torch.manual_seed(0)
            if task == "encoder_tiny_synth":
                r = _encoder(build_sam_backbone("tiny-synth"), image, modes, args.repeats)
            elif task == "encoder_vit_b":
                s = args.vit_b_size
                spec = replace(SAM_VARIANTS["vit_b"], img_size=s)
                x = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
                r = _encoder(build_sam_backbone(spec), x, modes, args.repeats)
                task = f"encoder_vit_b_{s}"
            elif task == "ssp_sam":

                def ssp(m: Any) -> Any:
                    return m(image, ["the red circle"], upsample=True)

                def ssp_cmp(a: Any, b: Any) -> dict[str, float]:
                    return {
                        "low_res_logits_rel_error": _rel(a.low_res_logits, b.low_res_logits),
                        "mask_agreement": _agree(a.logits > 0, b.logits > 0),
                    }

                r = _system(build_ssp_sam("tiny-synth"), ssp, modes, args.repeats, ssp_cmp)
            elif task == "sam_cp":

                def cp(m: Any) -> Any:
                    return m.predict(image)

                def cp_cmp(a: Any, b: Any) -> dict[str, float]:
                    return {
                        "semantic_agreement": _agree(a[0].semantic, b[0].semantic),
                        "panoptic_segments": float(len(b[0].segments)),
                        "panoptic_segments_fp32": float(len(a[0].segments)),
                    }

                # keep every query (random heads score low) so that the results are not empty
                cp_model = build_sam_cp(
                    "tiny-synth", object_mask_threshold=0.0, affinity_threshold=0.0
                )
                r = _system(cp_model, cp, modes, args.repeats, cp_cmp)
            elif task == "sam_mi":

                def mi(m: Any) -> Any:
                    return m(image, list(CLASS_NAMES))

                def mi_cmp(a: Any, b: Any) -> dict[str, float]:
                    return {
                        "logits_rel_error": _rel(a.logits, b.logits),
                        "argmax_agreement": _agree(a.logits.argmax(1), b.logits.argmax(1)),
                    }

                r = _system(build_sam_mi("tiny-synth"), mi, modes, args.repeats, mi_cmp)
            else:
                raise SystemExit(f"unknown task {task!r}")
            fp32 = r["time"]["fp32"]["median_s"]
            r["speedup_vs_fp32"] = {m: fp32 / t["median_s"] for m, t in r["time"].items()}
            res["results"][task] = r
            print(task, json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    lines = ["| measurement | mode | median [range] | fp32 / mode | accuracy vs fp32 |"]
    lines.append("|---|---|---:|---:|---|")
    for task, r in res["results"].items():
        for mode, t in r["time"].items():
            acc = ", ".join(f"{k} {v:.4g}" for k, v in r["accuracy"].get(mode, {}).items())
            lines.append(
                f"| {task} | {mode} | {t['median_s'] * 1000:.1f} ms "
                f"[{t['min_s'] * 1000:.1f}-{t['max_s'] * 1000:.1f}] | "
                f"{r['speedup_vs_fp32'][mode]:.2f}x | {acc or '-'} |"
            )
    table = "\n".join(lines)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return res


if __name__ == "__main__":
    main()
