"""UNet-row micro-benchmark at real shapes on the CPU: every rtcore CPU engine and precision against diffusers
eager and raw OpenVINO, as seconds per row, achieved GFLOP/s and the fraction of this machine's GEMM throughput.

    rtcore export CKPT --backend onnx --out sd15-onnx            # the ONNX graph every ONNX/OpenVINO engine reads
    python -m rtcore.bench.unet_row --checkpoint CKPT --onnx sd15-onnx --latents 64,96 --out bench_out

One row is one UNet call on a batch of 1 (latent h×w, 77 text tokens), with the same random inputs for every
engine. Engines run one at a time (an SD 1.5 UNet is 3.4 GB in fp32: they do not all fit side by side in 24 GB),
each loaded, warmed up once per latent size (OpenVINO compiles a static-shape model on first call), then timed
``runs`` times; the ratios are of minimums measured in this one process. The roofline is torch's own GEMM
(oneDNN/MKL) on 2048² matrices in fp32 and bf16, measured in the same run. "drift" is the row's max abs error
and PSNR against rtcore eager fp32 on the same inputs.

Engines:
    diffusers-fp32                     diffusers' UNet2DConditionModel, eager (the baseline of the ratios)
    eager-fp32, eager-bf16             rtcore's reference UNet in torch
    onnx-fp32                          ONNX Runtime on rtcore's ONNX graph
    openvino-raw-f32, -bf16            OpenVINO on the same ONNX graph, as a user would call it (dynamic shapes,
                                       INFERENCE_PRECISION_HINT set: left alone it picks bf16 on this CPU)
    openvino-fp32, -bf16, -int8        rtcore's openvino backend (static shapes per call; int8: NNCF int8 weights,
                                       activations quantized at run time by OpenVINO's CPU plugin)
    openvino-int8-static               and int8 convolutions, calibrated (export.calibration) at the first latent size
    compile-fp32, compile-bf16         rtcore's compile backend: an AOTInductor package with freezing (slow to build)
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

from .common import header

ENGINES = ("diffusers-fp32", "eager-fp32", "eager-bf16", "onnx-fp32", "openvino-raw-f32", "openvino-raw-bf16",
           "openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-static", "compile-fp32", "compile-bf16")
DEFAULT_ENGINES = tuple(e for e in ENGINES if not e.startswith("compile"))
REFERENCE = "eager-fp32"


def gemm_gflops(dtype, n=2048, runs=5):
    """This machine's measured dense GEMM throughput in GFLOP/s: the CPU roofline a UNet row is measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _inputs(latent, context_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, latent, latent, generator=g), torch.tensor([500]),
            torch.randn(1, 77, context_dim, generator=g))


def _onnx_entry(onnx_dir):
    """The whole UNet of an onnx engine directory (its outputs: the model output, then the deep features)."""
    entry = json.loads((Path(onnx_dir) / "manifest.json").read_text())["models"]["unet"]
    return Path(onnx_dir) / entry["file"], tuple(entry["inputs"]), tuple(entry["outputs"])


def _make(engine, checkpoint, onnx_dir, workdir, latent):
    """engine name → a callable (sample, timestep, text) → output, and its load time in seconds (cold start)."""
    start = time.perf_counter()
    if engine == "diffusers-fp32":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(Path(checkpoint) / "unet", torch_dtype=torch.float32).eval()
        fn = lambda s, t, c: unet(s, t, encoder_hidden_states=c).sample  # noqa: E731
    elif engine.startswith("eager-"):
        from rtcore.engines import eager_engines, resolve_dtype
        from rtcore.export import load_checkpoint

        dtype = resolve_dtype(engine[6:])
        unet = eager_engines(load_checkpoint(checkpoint), torch.device("cpu"), dtype).unet
        fn = lambda s, t, c: unet(s.to(dtype), t, c.to(dtype))  # noqa: E731  (the pipeline casts the same way)
    elif engine == "onnx-fp32":
        from rtcore.backends import OrtModel

        model = OrtModel(*_onnx_entry(onnx_dir), torch.device("cpu"))
        fn = lambda *args: model(*args)[0]  # noqa: E731  (the model output; the deep features go unused)
    elif engine.startswith("openvino-raw-"):
        import openvino as ov

        compiled = ov.Core().compile_model(str(_onnx_entry(onnx_dir)[0]), "CPU", {
            "INFERENCE_PRECISION_HINT": engine[13:], "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request = compiled.create_infer_request()
        fn = lambda s, t, c: torch.from_numpy(request.infer([s.numpy(), t.numpy(), c.numpy()])[0])  # noqa: E731
    elif engine.startswith("openvino-"):
        from rtcore.backends import OpenVinoModel
        from rtcore.export import load_checkpoint
        from rtcore.export.build import to_openvino_ir
        from rtcore.export.calibration import unet_calibration_set

        path, inputs, outputs = _onnx_entry(onnx_dir)
        precision = engine[len("openvino-"):]
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        int8 = {"int8": "dynamic", "int8-static": "static"}.get(precision)
        calibration = None
        if int8 == "static":  # part of the build, so part of the load time
            ckpt = load_checkpoint(checkpoint)
            ckpt.vae.float()  # as build() exports them: the files may hold fp16
            ckpt.text_encoder.float()
            calibration = unet_calibration_set(ckpt, 8 * latent, 8 * latent)
        ir = to_openvino_ir(path, Path(workdir) / engine, dtype, int8, calibration)
        model = OpenVinoModel(ir, inputs, outputs, dtype, int8)
        fn = lambda *args: model(*args)[0]  # noqa: E731
    elif engine.startswith("compile-"):
        from rtcore.engines import resolve_dtype
        from rtcore.export.build import build_unet_package

        dtype = resolve_dtype(engine[8:])
        package = build_unet_package(checkpoint, Path(workdir) / engine, dtype, latent * 8)
        fn = lambda s, t, c: package(s.to(dtype), t, c.to(dtype))[0]  # noqa: E731
    else:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return fn, time.perf_counter() - start


def run(checkpoint, onnx_dir, engines=DEFAULT_ENGINES, latents=(64,), runs=3, threads=0, workdir=None):
    from rtcore.bench.flops import stage_flops

    if threads:
        torch.set_num_threads(threads)
    roofline = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    context_dim = json.loads((Path(checkpoint) / "unet" / "config.json").read_text())["cross_attention_dim"]
    flops = {n: stage_flops(checkpoint, 8 * n, 8 * n, 1, 1, 1)["unet_per_row"] for n in latents}
    order = [REFERENCE] + [e for e in engines if e != REFERENCE]  # the drift reference first
    results, reference = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in order:
            fn, load_s = _make(engine, checkpoint, onnx_dir, workdir or tmp, latents[0])
            row = {"load_s": load_s, "latents": {}}
            for n in latents:
                if engine.startswith("compile-") and n != latents[0]:
                    continue  # an AOTInductor package is built for one shape
                args = _inputs(n, context_dim)
                with torch.inference_mode():
                    start = time.perf_counter()
                    out = fn(*args).float()
                    first = time.perf_counter() - start
                    times = []
                    for _ in range(runs):
                        start = time.perf_counter()
                        fn(*args)
                        times.append(time.perf_counter() - start)
                if engine == REFERENCE:
                    reference[n] = out
                best = min(times)
                precision = "fp32" if engine.endswith(("fp32", "f32")) else "bf16"
                row["latents"][n] = {
                    "min_s": best, "median_s": float(np.median(times)), "first_call_s": first, "runs": runs,
                    "gflops": flops[n] / best / 1e9, "fraction_of_gemm": flops[n] / best / 1e9 / roofline[precision],
                    "max_abs_err": float((out - reference[n]).abs().max()),
                    # over the reference's peak-to-peak range: a UNet output has no fixed one
                    "psnr_db": psnr(out, reference[n], float(reference[n].max() - reference[n].min()))}
                print(f"{engine:>20} {n}×{n}: {best:.2f} s/row ({row['latents'][n]['gflops']:.0f} GFLOP/s), "
                      f"PSNR {row['latents'][n]['psnr_db']:.1f} dB", flush=True)
            results[engine] = row
            del fn
            gc.collect()
    base = results.get("diffusers-fp32")
    for row in results.values():
        for n, r in row["latents"].items():
            r["ratio_vs_diffusers"] = r["min_s"] / base["latents"][n]["min_s"] if base else None
    return {"benchmark": "unet_row", "header": header("cpu"),
            "settings": dict(checkpoint=str(checkpoint), latents=list(latents), runs=runs,
                             threads=torch.get_num_threads(), unet_gflop_per_row={n: f / 1e9 for n, f in flops.items()},
                             gemm_gflops=roofline),
            "results": results}


def markdown(report):
    s, h = report["settings"], report["header"]
    lines = [f"UNet row, batch 1, {h['date']}, {h['device_name']}, {s['threads']} threads; "
             f"GEMM roofline fp32 {s['gemm_gflops']['fp32']:.0f} GFLOP/s, bf16 {s['gemm_gflops']['bf16']:.0f} GFLOP/s",
             "", "| engine | latent | s / row (min) | × diffusers | GFLOP/s | of GEMM | PSNR vs eager fp32 | load s |",
             "|---|---|---|---|---|---|---|---|"]
    for engine, row in report["results"].items():
        for n, r in row["latents"].items():
            ratio = f"{r['ratio_vs_diffusers']:.2f}" if r["ratio_vs_diffusers"] else "–"
            lines.append(f"| {engine} | {n}×{n} | {r['min_s']:.2f} | {ratio} | {r['gflops']:.0f} | "
                         f"{r['fraction_of_gemm']:.0%} | {r['psnr_db']:.1f} dB | {row['load_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rtcore.bench.unet_row", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a diffusers-layout folder (e.g. a random sd15 one)")
    parser.add_argument("--onnx", required=True, help="rtcore's onnx engine directory of that checkpoint")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES), help=f"comma-separated, of {ENGINES}")
    parser.add_argument("--latents", default="64", help="latent sides, comma-separated (64: 512², 96: 768²)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(argv)
    engines = tuple(filter(None, args.engines.split(",")))
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"--engines: unknown {unknown}; choose from {', '.join(ENGINES)}")
    report = run(args.checkpoint, args.onnx, engines, tuple(int(n) for n in args.latents.split(",")), args.runs,
                 args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "unet_row.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "unet_row.md").write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    main()
