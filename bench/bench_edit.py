"""rtcore backends vs diffusers' CycleDiffusionPipeline: per-edit time on the same weights and inputs, one process.

    python -m rtcore.bench.bench_edit [--backends eager,onnx] [--steps 50] [--strength 0.8] [--runs 7]
                                      [--threads 1] [--out bench_out]

Runs are interleaved (alternating which pipeline goes first) so drift hits both alike; the first call of each
is a warm-up reported apart. Both images are compared: a fast but wrong result is reported as wrong. Writes
``bench_edit.json`` and prints a Markdown table. On CPU only the ratio means something.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import header, summarize


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _rtcore_pipeline(backend, checkpoint, workdir, device, size):
    """(pipeline, cold-start seconds): eager loads the checkpoint; other backends build an engine dir, then load."""
    from rtcore import CycleDiffusion

    start = time.perf_counter()
    if backend == "eager":
        pipe = CycleDiffusion.from_pretrained(checkpoint, device=device)
    else:
        from rtcore.export.build import build

        engine_dir = build(checkpoint, Path(workdir) / f"engine-{backend}", backend=backend, height=size, width=size,
                           device=device)
        pipe = CycleDiffusion.load(engine_dir, device)
    return pipe, time.perf_counter() - start


def run(checkpoint=None, steps=50, strength=0.8, guidance_scale=7.5, runs=7, threads=1, size=64, device="cpu",
        backends=("eager",)):
    from diffusers import CycleDiffusionPipeline
    from diffusers.utils import logging

    from rtcore.demo import sample_image

    if threads:
        torch.set_num_threads(threads)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    label = "tiny" if checkpoint is None else str(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            from rtcore.export import make_tiny_checkpoint

            checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        ours, cold = {}, {}
        for backend in backends:
            ours[backend], cold[f"rtcore {backend}"] = _rtcore_pipeline(backend, checkpoint, tmp, device, size)
        start = time.perf_counter()
        theirs = CycleDiffusionPipeline.from_pretrained(checkpoint, safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False).to(device)
        cold["diffusers eager"] = time.perf_counter() - start
    theirs.set_progress_bar_config(disable=True)
    args = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
                image=sample_image(size, size), num_inference_steps=steps, strength=strength,
                guidance_scale=guidance_scale, output_type="np")
    calls = {f"rtcore {b}": (lambda p=p: p(generator=torch.Generator().manual_seed(0), **args).images)
             for b, p in ours.items()}
    calls["diffusers eager"] = lambda: theirs(generator=torch.Generator().manual_seed(0), **args).images
    warmup = {name: _timed(fn)[0] for name, fn in calls.items()}
    times = {name: [] for name in calls}
    images = {}
    order = list(calls)
    for r in range(runs):
        for name in order if r % 2 == 0 else order[::-1]:
            seconds, images[name] = _timed(calls[name])
            times[name].append(seconds)
    base = times["diffusers eager"]
    rows = {}
    for name, t in times.items():
        err = float(np.abs(images[name] - images["diffusers eager"]).max())
        rows[name] = dict(summarize(t), warmup_ms=warmup[name] * 1e3, cold_start_ms=cold[name] * 1e3,
                          ratio_vs_diffusers=summarize(t)["median_ms"] / summarize(base)["median_ms"],
                          max_abs_err_vs_diffusers=err, correct=err <= 1e-3)
    return {
        "benchmark": "bench_edit",
        "header": header(device),
        "settings": dict(steps=steps, strength=strength, guidance_scale=guidance_scale, size=size, runs=runs,
                         threads=torch.get_num_threads(), checkpoint=label),
        "results": rows,
    }


def markdown(report):
    s, h = report["settings"], report["header"]
    lines = [f"CycleDiffusion edit, {s['checkpoint']} checkpoint, {s['size']}x{s['size']}, {s['steps']} steps, "
             f"strength {s['strength']}, guidance {s['guidance_scale']}, {s['threads']} thread(s), "
             f"{h['device_name']} ({h['device']}), {h['date']}, rev {h['git_revision']}", "",
             "| pipeline | median ms | p20 ms | p80 ms | × diffusers | max abs err | warm-up ms | cold start ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        verdict = f"{r['max_abs_err_vs_diffusers']:.1e}" + ("" if r["correct"] else " WRONG")
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['p20_ms']:.1f} | {r['p80_ms']:.1f} | "
                     f"**{r['ratio_vs_diffusers']:.3f}** | {verdict} | {r['warmup_ms']:.1f} | "
                     f"{r['cold_start_ms']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="diffusers-layout folder (default: build the tiny one)")
    parser.add_argument("--backends", default="eager", help="comma-separated rtcore backends (eager,onnx,compile)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(argv)
    report = run(args.checkpoint, args.steps, args.strength, args.guidance_scale, args.runs, args.threads, args.size,
                 args.device, tuple(args.backends.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_edit.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
