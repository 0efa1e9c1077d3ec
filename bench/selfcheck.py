"""``rtcore selfcheck --device cuda``: the first GPU run in one command. It checks, measures and writes the GPU
sections of docs/BENCHMARKS.md:

1. the gpu test tier (``pytest -m gpu``: kernels at SD shapes, CUDA graphs, every engine backend in fp16);
2. one edit per backend and dtype (fp16, bf16) on the tiny checkpoint against eager fp32, drift as PSNR;
3. CUDA-graph capture of every mode (full call, encode, edit) for the backends that replay graphs, with a
   capture failure made an error instead of the usual warning and fallback;
4. the kernel micro-benchmarks (``rtcore.bench.kernels``);
5. the SD 1.5 and SD 2.1 edit benchmarks (random weights of the real sizes, fp16) against diffusers eager and
   diffusers + torch.compile.

Backends: eager, eager+kernels and compile always; onnx where onnxruntime-gpu provides the CUDA EP, tensorrt
where TensorRT is installed. Without a CUDA device (or with --dry-run) it prints what it would run and exits 0.
"""

import argparse
import importlib.util
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- selfcheck:gpu:start -->", "<!-- selfcheck:gpu:end -->"
PRESETS = ("sd15", "sd21")


def available():
    """What this machine can run: CUDA, ONNX Runtime's CUDA EP, TensorRT."""
    import torch

    cuda = torch.cuda.is_available()
    ort_cuda = False
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        ort_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    tensorrt = importlib.util.find_spec("tensorrt") is not None
    return {"cuda": cuda, "onnx": cuda and ort_cuda, "tensorrt": cuda and tensorrt}


def backends(avail):
    return ["eager", "eager+kernels", "compile"] + [b for b in ("onnx", "tensorrt") if avail[b]]


def plan(avail, device="cuda"):
    """The steps, as (name, what it runs), for what this machine has."""
    names = backends(avail)
    bench = ",".join(b for b in names if b != "eager+kernels") + ",compile+kernels"
    return [
        ("gpu tests", f"{sys.executable} -m pytest -m gpu -q tests"),
        ("drift", f"tiny checkpoint, 64×64, 20 steps: {', '.join(names)} × fp16, bf16 vs eager fp32 (PSNR)"),
        ("graphs", "CUDA-graph capture of full call, encode and edit: eager, eager+kernels, compile in fp16 (with "
                   "step 2's pipelines)"),
        ("kernels", "python -m rtcore.bench.kernels (do_bench: CUDA events, L2 flushed)"),
        *[(preset, f"rtcore bench --preset {preset} --device {device} --dtype fp16 --backends {bench} "
                   "--peers diffusers-compile,diffusers --runs 3") for preset in PRESETS],
        ("docs", f"write the GPU sections of {DOCS.relative_to(ROOT)} (device, date, revision)"),
    ]


def psnr(a, b):
    """PSNR in dB of images in [0, 1]; inf when equal."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _edit(pipe, image):
    import torch

    return pipe(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse", image=image,
                num_inference_steps=20, strength=0.8, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def _pipeline(checkpoint, spec, dtype, device, workdir):
    from rtcore import CycleDiffusion

    backend, *flags = spec.split("+")
    if backend == "eager":
        pipe = CycleDiffusion.from_pretrained(checkpoint, device=device, dtype=dtype, kernels="kernels" in flags)
    else:
        from rtcore.export.build import build

        out = build(checkpoint, Path(workdir) / f"{spec}-{dtype}", backend=backend, dtype=dtype, height=64,
                    width=64, device=device)
        pipe = CycleDiffusion.load(out, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def drift_and_graphs(avail, device, workdir):
    """Steps 2 and 3 on the tiny checkpoint: rows (backend, dtype, PSNR vs eager fp32, graphs captured or —)."""
    from rtcore.demo import sample_image
    from rtcore.export import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(Path(workdir) / "tiny", kind="sd1")
    image = sample_image(64, 64)
    reference = _edit(_pipeline(checkpoint, "eager", "fp32", device, workdir), image)
    drift, graphs = [], []
    for spec in backends(avail):
        for dtype in ("fp16", "bf16"):
            try:
                pipe = _pipeline(checkpoint, spec, dtype, device, workdir)
                drift.append((spec, dtype, psnr(_edit(pipe, image), reference), "ok"))
            except Exception as err:  # one failing backend must not hide the others' results
                drift.append((spec, dtype, None, f"FAILED: {type(err).__name__}: {err}"))
                continue
            if dtype == "fp16" and spec in ("eager", "eager+kernels", "compile"):
                graphs.append((spec, *_capture_every_mode(pipe, image)))
    return drift, graphs


def _capture_every_mode(pipe, image):
    """(graphs captured, status): full call, encode and edit, with a capture failure turned into an error."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _edit(pipe, image)
            source = pipe.encode(image=image, source_prompt="An astronaut riding a horse", num_inference_steps=20,
                                 strength=0.8, generator=torch.Generator().manual_seed(0))
            pipe.edit(source, prompt="An astronaut riding an elephant", output_type="np")
    except Exception as err:  # reported in the table, not raised
        return 0, f"FAILED: {type(err).__name__}: {err}"
    count = len(pipe._graphed.graphs) if pipe._graphed is not None else 0
    return count, "ok" if count >= 3 else "FAILED: fewer than 3 graphs"


def markdown(hdr, results):
    """The GPU sections of docs/BENCHMARKS.md from this run's results."""
    lines = [f"Measured by `rtcore selfcheck --device cuda` on {hdr['device_name']} ({hdr['device']}), {hdr['date']}, "
             f"rev {hdr['git_revision']}; torch {hdr['versions']['torch']}, triton {hdr['versions']['triton']}, "
             f"onnxruntime {hdr['versions']['onnxruntime']}.", ""]
    if "gpu tests" in results:
        lines += [f"gpu test tier: {results['gpu tests']}", ""]
    if "drift" in results:
        drift, graphs = results["drift"]
        lines += ["### Drift against eager fp32 (tiny checkpoint, 20 steps)", "",
                  "| backend | dtype | PSNR dB | status |", "|---|---|---|---|"]
        lines += [f"| {b} | {d} | {'—' if p is None else f'{p:.1f}'} | {s} |" for b, d, p, s in drift]
        lines += ["", "### CUDA graphs (full call, encode, edit)", "", "| backend | graphs | status |", "|---|---|---|"]
        lines += [f"| {b} | {n} | {s} |" for b, n, s in graphs]
        lines.append("")
    if "kernels" in results:
        from .kernels import markdown as kernel_table

        lines += ["### Triton kernels", "", kernel_table(results["kernels"]), ""]
    for preset in PRESETS:
        if preset in results:
            from .report import markdown as edit_table

            lines += [f"### CycleDiffusion edit, {preset}", "", edit_table(results[preset]), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_gpu_sections(text, path=DOCS):
    """Replaces what lies between the selfcheck markers of ``path`` with ``text``."""
    doc = path.read_text()
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{text}{END}{tail}")


def run(device, skip, workdir):
    import torch

    from .common import header

    avail = available()
    hdr = header(device)
    results, failed = {}, []
    for name, what in plan(avail, device):
        if name in skip or name == "docs":
            continue
        start = time.perf_counter()
        print(f"== {name}: {what}", flush=True)
        if name == "gpu tests":
            code = subprocess.run(what.split(), cwd=ROOT).returncode
            results[name] = "passed" if code == 0 else f"FAILED (pytest exit status {code})"
            failed += [name] if code else []
        elif name == "drift":
            results[name] = drift_and_graphs(avail, device, workdir)
            failed += [f"drift {b} {d}" for b, d, _, s in results[name][0] if s != "ok"]
            failed += [f"graphs {b}" for b, _, s in results[name][1] if s != "ok"]
        elif name == "graphs":
            pass  # measured on the drift step's pipelines
        elif name == "kernels":
            from .kernels import run as run_kernels

            results[name] = run_kernels(device)
        elif name in PRESETS:
            from .bench_edit import run as run_edit

            specs = what.split("--backends ")[1].split()[0].split(",")
            results[name] = run_edit(name, backends=tuple(specs), peers=("diffusers-compile", "diffusers"), runs=3,
                                     dtype="fp16", device=device)
            failed += [f"{name} {n}" for n, r in results[name]["results"].items() if not r["correct"]]
        torch.cuda.empty_cache()
        print(f"   {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return hdr, results, failed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rtcore selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--skip", default="", help="steps to leave out, comma-separated (names as in the plan)")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    import tempfile

    import torch

    avail = available()
    steps = plan(avail, args.device)
    cuda = torch.device(args.device).type == "cuda" and avail["cuda"]
    print("rtcore selfcheck" + ("" if cuda else f": no CUDA device here ({args.device}), so nothing is run") +
          (" (dry run)" if args.dry_run else "") + ". The plan:")
    for k, (name, what) in enumerate(steps, 1):
        print(f"  {k}. {name}: {what}")
    if args.dry_run or not cuda:
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        hdr, results, failed = run(args.device, set(filter(None, args.skip.split(","))), workdir)
    text = markdown(hdr, results)
    print(text)
    if not args.no_docs:
        write_gpu_sections(text)
        print(f"wrote the GPU sections of {DOCS}")
    print(f"selfcheck took {time.perf_counter() - start:.0f} s; " + (f"FAILED: {'; '.join(failed)}" if failed else
                                                                      "everything passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
