"""The edit benchmark harness: rtcore backends and diffusers side by side, in one process, on the same weights.

    python -m rtcore.bench --preset tiny --backends eager,onnx,compile --peers diffusers --runs 7 --out bench_out
    rtcore bench --preset sd15 --device cuda --dtype fp16 --backends eager,compile,compile+kernels \\
                 --peers diffusers,diffusers-compile
    rtcore bench --preset sd15 --size 256 --steps 10 --backends eager,openvino,openvino@bf16,openvino+int8@bf16 \\
                 --peers diffusers-compile,diffusers --runs 2 --peak-memory      # the real-shape CPU comparison

A backend spec is ``backend[+kernels][+int8 | +int8-static][@dtype]``; ``@dtype`` overrides --dtype for that pipeline.

Each pipeline is built (cold start: load, engine build, compile: timed apart), warmed up once, then all
pipelines run interleaved, alternating the order from one round to the next, so that drift hits all of them alike.
Each image is compared with rtcore eager's (in --dtype): a fast but wrong pipeline is reported as wrong, and each
pipeline's drift is its PSNR against it. An extra instrumented run per pipeline gives the stage breakdown (text
encode, VAE encode, denoise, VAE decode, host overhead). Stage FLOPs from the configs give the achieved TFLOP/s
and, on a known GPU, the fraction of peak. Cold start is timed apart: engine build (export, compile) and load.
With --peak-memory each pipeline also runs alone in a fresh process (its engine already built, OpenVINO's model
cache warm), which reports its cached load time, its first edit and the peak resident memory of the whole process
(VmHWM). Outputs: bench_edit.json, bench_edit.md, bench_edit.png (a stacked bar per pipeline), and with
--compare OLD.json a list of regressions.
"""

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rtcore.metrics import psnr

from .common import HALF_PRECISION_PIXEL_TOLERANCE, header, memory_mb, peak_rss_mb, summarize, synchronized

PRESETS = {  # preset → (image side, random checkpoint dtype on disk)
    "tiny": (64, torch.float32),
    "sd15": (512, torch.float16),
    "sd21": (768, torch.float16),
}
STAGES = ("text_encode", "vae_encode", "denoise", "vae_decode")


def parse_spec(spec, dtype):
    """'eager', 'onnx', 'compile+kernels', 'openvino+int8@bf16', 'openvino+int8-static@bf16' … → (backend,
    kernels, int8 mode or None, torch dtype)."""
    from rtcore.engines import resolve_dtype

    spec, _, spec_dtype = spec.partition("@")
    backend, *flags = spec.split("+")
    int8 = "static" if "int8-static" in flags else "dynamic" if "int8" in flags else None
    return backend, "kernels" in flags, int8, resolve_dtype(spec_dtype or dtype)


def _rtcore(spec, checkpoint, workdir, device, dtype, size, batch):
    """A backend spec → (where the pipeline loads from, its build time in s). Engines are built here, not loaded."""
    backend, kernels, int8, dtype = parse_spec(spec, dtype)
    if backend == "eager":
        return checkpoint, 0.0
    from rtcore.export.build import build

    start = time.perf_counter()
    engine_dir = build(checkpoint, Path(workdir) / f"engine-{spec}", backend=backend, dtype=dtype, height=size,
                       width=size, batch=batch, kernels=kernels, int8=int8, device=device)
    return engine_dir, time.perf_counter() - start


def _load_rtcore(spec, source, device, dtype):
    from rtcore import CycleDiffusion

    backend, kernels, int8, dtype = parse_spec(spec, dtype)
    if backend == "eager":
        pipe = CycleDiffusion.from_pretrained(source, device=device, dtype=dtype, kernels=kernels, int8=int8)
    else:
        pipe = CycleDiffusion.load(source, device)
    pipe.set_progress_bar_config(disable=True)  # the harness prints its own table
    return pipe


def _diffusers(spec, checkpoint, device, dtype):
    """'diffusers' (eager) or 'diffusers-compile' (UNet and VAE decode under torch.compile, as diffusers'
    "Accelerate inference" guide does)."""
    from diffusers import CycleDiffusionPipeline

    pipe = CycleDiffusionPipeline.from_pretrained(checkpoint, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if spec == "diffusers-compile":
        mode = "max-autotune" if torch.device(device).type == "cuda" else None
        if torch.device(device).type == "cuda":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.vae.to(memory_format=torch.channels_last)
        pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True)
    return pipe


def _diffusers_stages(pipe, run, device):
    """One instrumented diffusers run: times encode_prompt, vae.encode, the UNet calls and vae.decode."""
    times = dict.fromkeys(STAGES, 0.0)
    sync = synchronized(lambda: None, device)

    def wrap(obj, attr, stage):
        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync()
            times[stage] += time.perf_counter() - start
            return out

        setattr(obj, attr, timed)
        return obj, attr, original

    patched = [wrap(pipe, "encode_prompt", "text_encode"), wrap(pipe.vae, "encode", "vae_encode"),
               wrap(pipe.vae, "decode", "vae_decode"), wrap(pipe.unet, "forward", "denoise")]
    try:
        run()
    finally:
        for obj, attr, original in patched:
            setattr(obj, attr, original)
    return times


TARGETS = ("An astronaut riding an elephant", "An astronaut riding a camel", "An astronaut riding a zebra",
           "A knight riding a horse", "An astronaut riding a horse at night")


def encode_once_edit_many(pipe, image, source_prompt, edits, settings, steps, strength, guidance_scale, device):
    """``encode`` once, then ``edits`` ``edit`` calls toward other targets, each timed (the service pattern: one
    photo, many prompts): {"encode_ms", "edit_ms" (summarize), "edits"}."""
    encode = synchronized(lambda: pipe.encode(image=image, source_prompt=source_prompt, strength=strength,
                                              num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                                              **settings), device)
    start = time.perf_counter()
    source = encode()
    encode_ms = (time.perf_counter() - start) * 1e3
    times = []
    for k in range(edits):
        edit = synchronized(lambda k=k: pipe.edit(source, prompt=TARGETS[k % len(TARGETS)],
                                                  guidance_scale=guidance_scale, output_type="np", **settings), device)
        start = time.perf_counter()
        edit()
        times.append(time.perf_counter() - start)
    return {"encode_ms": encode_ms, "edit_ms": summarize(times), "edits": edits}


def _load(name, source, device, dtype):
    """A pipeline name and where it loads from → (the pipeline, its load time in s)."""
    start = time.perf_counter()
    pipe = _load_rtcore(name[7:].split(" ")[0], source, device, dtype) if name.startswith("rtcore ") else \
        _diffusers(name, source, device, dtype)
    return pipe, time.perf_counter() - start


def _child(payload):
    """The body of an isolated measurement (``_isolated``): load, edit twice, report; prints one JSON line."""
    from rtcore.demo import sample_image
    from rtcore.engines import resolve_dtype

    torch.set_num_threads(payload["threads"])
    p = payload
    pipe, load_s = _load(p["name"], p["source"], p["device"], resolve_dtype(p["dtype"]))
    image = sample_image(p["size"], p["size"])
    times = []
    for _ in range(2):
        start = time.perf_counter()
        pipe(image=[image] * p["batch"], generator=[torch.Generator().manual_seed(k) for k in range(p["batch"])],
             **p["args"])
        times.append(time.perf_counter() - start)
    print(json.dumps({"load_s": load_s, "first_edit_s": times[0], "edit_s": times[1], "peak_rss_mb": peak_rss_mb()}))


def _isolated(name, source, device, dtype, threads, size, batch, args):
    """Runs one pipeline alone in a fresh Python process: its cached load time, first edit and peak RSS."""
    import subprocess
    import sys

    payload = dict(name=name, source=str(source), device=str(device), dtype=dtype, threads=threads, size=size,
                   batch=batch, args={k: v for k, v in args.items() if k != "image"})
    code = "import json, sys; from rtcore.bench.bench_edit import _child; _child(json.loads(sys.argv[1]))"
    result = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(preset="tiny", checkpoint=None, backends=("eager",), peers=("diffusers",), steps=50, strength=0.8,
        guidance_scale=7.5, size=None, batch=1, dtype="fp32", runs=7, threads=1, device="cpu", peak_memory=False,
        speeds=("exact",), edits_per_encode=0):
    """``speeds``: approximation settings (rtcore.approximations.named_settings: "exact", "fast", "cache3", ...)
    each rtcore backend runs with, as pipelines of their own ("rtcore openvino@bf16 fast") on one loaded engine.
    ``edits_per_encode`` > 0: each rtcore pipeline also encodes once and edits that many targets, each timed."""
    from diffusers.utils import logging

    from rtcore.approximations import Approximations, named_settings
    from rtcore.demo import sample_image
    from rtcore.engines import resolve_dtype
    from rtcore.export import make_random_checkpoint
    from rtcore.sampling import Rows

    from .flops import denoise_flops, peak_tflops, stage_flops

    if threads:
        torch.set_num_threads(threads)
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch_dtype = resolve_dtype(dtype)
    size = size or PRESETS[preset][0]
    speed_of = {(f"rtcore {b}" if s == "exact" else f"rtcore {b} {s}"): s for b in backends for s in speeds}
    spec_of = {name: name[7:].split(" ")[0] for name in speed_of}
    settings_of = {name: named_settings(s) for name, s in speed_of.items()}
    names = list(speed_of) + list(peers)
    pipes, cold = {}, {}
    checkpoint_given = checkpoint is not None
    with tempfile.TemporaryDirectory() as tmp:
        if checkpoint is None:
            checkpoint = make_random_checkpoint(Path(tmp) / preset, preset, dtype=PRESETS[preset][1])
        image = sample_image(size, size)
        args = dict(prompt=["An astronaut riding an elephant"] * batch,
                    source_prompt=["An astronaut riding a horse"] * batch, image=[image] * batch,
                    num_inference_steps=steps, strength=strength, guidance_scale=guidance_scale, output_type="np")
        calls, warmup, memory, built, sources, failed = {}, {}, {}, {}, {}, {}
        for name in names:  # one pipeline at a time, so that the memory it adds is its own
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()  # the previous pipeline's cached blocks are not counted as this one's
            before = memory_mb(device)
            loaded = next((n for n in pipes if name in spec_of and spec_of.get(n) == spec_of[name]), None)
            try:
                if loaded is not None:  # another speed of a backend already loaded: the same engines
                    sources[name], built[name], pipes[name], cold[name] = sources[loaded], 0.0, pipes[loaded], 0.0
                else:
                    sources[name], built[name] = (_rtcore(spec_of[name], checkpoint, tmp, device, torch_dtype, size,
                                                          batch) if name in spec_of else (checkpoint, 0.0))
                    pipes[name], cold[name] = _load(name, sources[name], device, torch_dtype)
                extra = settings_of.get(name, {})
                calls[name] = synchronized(lambda p=pipes[name], extra=extra: p(
                    generator=[torch.Generator().manual_seed(k) for k in range(batch)], **args, **extra), device)
                start = time.perf_counter()
                calls[name]()
                warmup[name] = time.perf_counter() - start
            except Exception as err:  # a pipeline that cannot build, load or edit is a FAILED row; the rest go on
                failed[name] = f"{type(err).__name__}: {err}"
                pipes.pop(name, None), calls.pop(name, None)
                continue
            # weights, engines, workspaces, graph pools and the allocator's cache after one edit: what it holds
            memory[name] = [None if b is None or a is None else a - b for a, b in zip(memory_mb(device), before)]
        every_name, names = names, [n for n in names if n not in failed]
        if not names:
            raise RuntimeError(f"every pipeline failed: {failed}")
        times, outputs = {n: [] for n in names}, {}
        for r in range(runs):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                outputs[name] = calls[name]()
                times[name].append(time.perf_counter() - start)
        encode_edit = {}
        if edits_per_encode:
            for name in names:
                if name in speed_of:
                    encode_edit[name] = encode_once_edit_many(pipes[name], image, args["source_prompt"][0],
                                                              edits_per_encode, settings_of[name], steps, strength,
                                                              guidance_scale, device)
        stages = {}
        for name in names:
            if name.startswith("rtcore "):
                stages[name] = dict(outputs[name].timings)
            else:
                stages[name] = _diffusers_stages(pipes[name], calls[name], device)
        isolated = {}
        if peak_memory:
            # this process lets its pipelines go first: at SD shapes five of them and a sixth in the child process
            # exceed 24 GB (the first real-shape run was killed by the kernel's OOM killer here)
            pipes.clear()
            calls.clear()
            gc.collect()
            for name in names:  # one process each, after the timed runs: nothing else is loaded in it
                if speed_of.get(name, "exact") == "exact":  # another speed holds the same engines
                    isolated[name] = _isolated(name, sources[name], device, dtype, torch.get_num_threads(), size,
                                               batch, args)
        k = int(steps * strength)
        # rows per step and prompts encoded per edit: rtcore skips the unused unconditional source row (w_s = 1)
        # and encodes each distinct prompt once; diffusers runs 4 rows and 4 prompt encodings
        flops = {"rtcore": stage_flops(checkpoint, size, size, 3 if guidance_scale > 1 else 2, 3, k),
                 "diffusers": stage_flops(checkpoint, size, size, 4 if guidance_scale > 1 else 2, 4, k)}
        # the UNet FLOPs of each speed's loop, counted: its rows step by step, whole or shallow
        for speed in speeds:
            flops[f"rtcore {speed}"] = dict(flops["rtcore"], denoise=denoise_flops(
                flops["rtcore"], k, Rows("cycle", guidance_scale), Approximations(**named_settings(speed))))

    # each rtcore pipeline against the first of the same speed (rtcore eager's, unless it failed); diffusers against
    # the first exact one
    first_of = {}
    for name in names:
        first_of.setdefault(speed_of.get(name, "exact"), name)
    hdr = header(device)
    results = {}
    baseline = every_name[-1] if peers else None
    base = summarize(times[baseline])["median_ms"] if baseline in times else None
    for name in names:
        t = summarize(times[name])
        stage_ms = {s: stages[name].get(s, 0.0) * 1e3 for s in STAGES}
        total_ms = t["median_ms"]
        stage_ms["host_overhead"] = max(total_ms - sum(stage_ms.values()), 0.0)
        stage_ms["denoise_per_step"] = stage_ms["denoise"] / k
        fl = flops[f"rtcore {speed_of[name]}" if name in speed_of else "diffusers"]
        achieved = {s: batch * fl[s] / (stage_ms[s] / 1e3) / 1e12 for s in STAGES if stage_ms[s] > 0}
        peak_tf = peak_tflops(hdr["device_name"], dtype) if torch.device(device).type == "cuda" else None
        reference = outputs[first_of[speed_of.get(name, "exact")]].images
        err = float(np.abs(outputs[name].images - reference).max())
        drift = psnr(outputs[name].images, reference)  # images in [0, 1]
        pipe_dtype = parse_spec(spec_of[name], dtype)[3] if name in spec_of else torch_dtype
        exact = f"rtcore {spec_of[name]}" if name in spec_of else None
        exact_ms = summarize(times[exact])["median_ms"] if exact in times and exact != name else None
        # same dtype as the reference: equal up to rounding; another precision: close (a wrong edit is ~10 dB)
        tolerance = 1e-3 if torch_dtype == torch.float32 else HALF_PRECISION_PIXEL_TOLERANCE
        correct = err <= tolerance if pipe_dtype == torch_dtype else drift >= 25
        results[name] = dict(
            t, warmup_ms=warmup[name] * 1e3, build_ms=built[name] * 1e3, cold_start_ms=cold[name] * 1e3,
            isolated=isolated.get(name), psnr_db_vs_rtcore_eager=drift,
            stages_ms=stage_ms,
            tflops=achieved, fraction_of_peak={s: v / peak_tf for s, v in achieved.items()} if peak_tf else None,
            device_memory_mb=memory[name][0], host_rss_mb=memory[name][1],
            ratio_vs_baseline=total_ms / base if base else None,
            speed=speed_of.get(name), unet_tflop_per_edit=batch * fl["denoise"] / 1e12,
            ratio_vs_exact=total_ms / exact_ms if exact_ms else None,
            psnr_db_vs_exact=psnr(outputs[name].images, outputs[exact].images) if exact_ms else None,
            encode_edit=encode_edit.get(name),
            max_abs_err_vs_rtcore_eager=err, correct=bool(correct))
    results.update({name: {"error": error, "correct": False} for name, error in failed.items()})
    return {
        "benchmark": "bench_edit",
        "header": hdr,
        "settings": dict(preset=preset, size=size, steps=steps, strength=strength, guidance_scale=guidance_scale,
                         batch=batch, dtype=dtype, runs=runs, threads=torch.get_num_threads(),
                         checkpoint=str(checkpoint) if checkpoint_given else None,
                         baseline=baseline, reference=first_of, speeds=list(speeds), flops=flops),
        "results": results,
    }


def main(argv=None):
    from .report import chart, compare, markdown

    parser = argparse.ArgumentParser(prog="rtcore bench", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--checkpoint", default=None,
                        help="a diffusers-layout folder instead of the preset's random one")
    parser.add_argument("--backends", default="eager", help="rtcore backends, comma-separated: eager, onnx, compile, "
                                                            "tensorrt, openvino, with +kernels / +int8 (eager, "
                                                            "compile, openvino) / +int8-static (openvino), @dtype")
    parser.add_argument("--peers", default="diffusers", help="diffusers, diffusers-compile, comma-separated; the "
                                                             "last one is the baseline of the ratios ('' for none)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the preset's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--compare", default=None, help="an earlier bench_edit.json: flag regressions")
    parser.add_argument("--speed", default="exact",
                        help="approximation settings each rtcore backend also runs with, comma-separated: exact, "
                             "fast, cacheN, cutoffC, cacheN+cutoffC (rtcore.approximations)")
    parser.add_argument("--edits-per-encode", type=int, default=0,
                        help="also encode once and edit N targets with each rtcore pipeline, each edit timed")
    parser.add_argument("--peak-memory", action="store_true",
                        help="also run each pipeline alone in a fresh process: cached load, first edit, peak RSS")
    args = parser.parse_args(argv)
    report = run(args.preset, args.checkpoint, tuple(filter(None, args.backends.split(","))),
                 tuple(filter(None, args.peers.split(","))), args.steps, args.strength, args.guidance_scale,
                 args.size, args.batch, args.dtype, args.runs, args.threads, args.device, args.peak_memory,
                 tuple(filter(None, args.speed.split(","))), args.edits_per_encode)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        report["regressions"] = compare(json.loads(Path(args.compare).read_text()), report)
    (out / "bench_edit.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "bench_edit.md").write_text(text + "\n")
    chart(report, out / "bench_edit.png")
    print(text)
    return report


if __name__ == "__main__":
    main()
