"""``rtcore selfcheck --device cuda``: the first GPU run, in stages that each fit a 10-minute call.

    rtcore selfcheck --device cuda --dry-run              # the plan: every stage, what it runs, its estimate
    rtcore selfcheck --device cuda --stage tests,drift    # chosen stages, in plan order
    rtcore selfcheck --device cuda --budget-s 840         # every stage whose estimate fits what is left

A GPU is lent for minutes, so the work is cut into stages of at most 8 minutes each on one H100 (STAGES gives each
estimate and how it was made). Each stage writes its own section of docs/BENCHMARKS.md, and
bench_out/selfcheck/STAGE.json, as soon as it is measured, so a run cut short keeps what it did. Within a stage a
failing pipeline is a FAILED row carrying its error, and the others still run. Without a CUDA device (or with
--dry-run) it prints the plan for every stage and exits 0.
"""

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rtcore.metrics import psnr

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- selfcheck:{}:start -->", "<!-- selfcheck:{}:end -->"
EDIT_ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
                 num_inference_steps=20, strength=0.8, output_type="np")


@dataclass(frozen=True)
class Stage:
    name: str
    estimate_s: int  # on one H100 SXM with 16 host cores, caches cold
    basis: str  # how the estimate was made
    needs: str = None  # "onnx" (onnxruntime-gpu's CUDA EP) or "tensorrt": the stage is skipped without it


# Run-time figures use the FLOP counts of docs/DESIGN.md §7: a default SD 1.5 edit at 512² is 120 UNet rows of
# 0.80 TFLOP (96 TFLOP), under 0.4 s at a third of the H100's 989 dense fp16 TFLOP/s, so the five edits a pipeline
# runs in a benchmark (warm-up, 3 timed, 1 instrumented) are seconds; builds and compiles are the minutes.
STAGES = (
    Stage("tests", 330, "pytest -m gpu: 7 tests on the tiny checkpoint, one of which builds a max-autotune "
                        "AOTInductor engine (~150 s, as the compile stage's per-engine figure); tests/kernels "
                        "compiled on CUDA: ~100 cases at ~1 s of Triton compilation each"),
    Stage("drift", 240, "tiny checkpoint, 20-step edits of ~0.1 s: eager and eager+kernels in fp16 and bf16 (Triton "
                        "compiles ~30 s), onnx fp16 (export, checks, CUDA EP session ~20 s), tensorrt fp16 (4 tiny "
                        "plans ~60 s), CUDA-graph capture of 3 modes per graphed pipeline"),
    Stage("compile", 330, "tiny checkpoint: 2 AOTInductor engines (fp16, bf16) of 4 models, ~40 s per model to "
                          "autotune its few GEMM/conv shapes and compile its C++ wrapper, then drift and graphs"),
    Stage("kernels", 120, "~20 micro-benchmark cases: ~2 s of Triton compilation each, do_bench ~0.1 s"),
    Stage("sd15", 360, "random SD 1.5 checkpoint (1.07 B parameters) ~30 s; eager loads ~10 s; ONNX export of the "
                       "fp16 models with the full check and an ORT session ~150 s; the CUDA EP's first run "
                       "(cuDNN's algorithm search) ~30 s; 4 pipelines × 5 edits ~30 s"),
    Stage("sd15-compile", 450, "AOTInductor max-autotune of the SD 1.5 UNet ~240 s (inductor compiles a whole "
                               "denoiser in ~1 min on one H100: 67 s for Flux's DiT, PyTorch devlog 2026-05-11; "
                               "GEMM/conv autotuning and coordinate descent ~3-4× that), VAE decoder ~90 s, encoder "
                               "~60 s, text encoder ~20 s; checkpoint and edits ~40 s"),
    Stage("sd15-diffusers-compile", 360, "torch.compile max-autotune of diffusers' UNet (~240 s, as above) and VAE "
                                         "decode (~90 s) at their first call; checkpoint and edits ~30 s"),
    Stage("sd15-tensorrt", 450, "ONNX export ~90 s; 4 strongly typed fp16 plans: the UNet ~240 s (SDXL-size UNets "
                                "are reported at 10-30 min; SD 1.5's is 3.3× smaller), VAE decoder ~60 s, encoder "
                                "~40 s, text encoder ~20 s", needs="tensorrt"),
    Stage("sd21", 360, "as sd15, at 512² (768² with --sd21-size 768: ~2.3× the FLOPs per row, ~+60 s)"),
)
BY_NAME = {s.name: s for s in STAGES}
SPEEDS = ("exact", "fast")  # each rtcore backend of an SD stage edits exactly and with the fast preset (no new build)


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


def drift_pipelines(avail):
    """(backend spec, dtype) pairs of the drift stage: bf16 only where it builds (ONNX convolutions have none)."""
    pairs = [(spec, dtype) for spec in ("eager", "eager+kernels") for dtype in ("fp16", "bf16")]
    return pairs + [(spec, "fp16") for spec in ("onnx", "tensorrt") if avail[spec]]


def benchmark(stage, avail, device, sd21_size=512):
    """The bench_edit settings of an SD stage: (preset, size, rtcore backends, peers)."""
    preset = "sd21" if stage == "sd21" else "sd15"
    size = sd21_size if stage == "sd21" else 512
    backends = {"sd15-compile": ["compile"], "sd15-tensorrt": ["tensorrt"], "sd15-diffusers-compile": []}.get(
        stage, ["eager", "eager+kernels"] + (["onnx"] if avail["onnx"] else []))
    peers = ["diffusers-compile", "diffusers"] if stage == "sd15-diffusers-compile" else ["diffusers"]
    return preset, size, backends, peers


def describe(stage, avail, device, sd21_size=512):
    """What a stage runs, in one line."""
    if stage == "tests":
        return f"{sys.executable} -m pytest -m gpu tests; {sys.executable} -m pytest tests/kernels (compiled on CUDA)"
    if stage in ("drift", "compile"):
        pairs = drift_pipelines(avail) if stage == "drift" else [("compile", "fp16"), ("compile", "bf16")]
        return ("tiny checkpoint, 64×64, 20 steps against eager fp32 (PSNR), CUDA-graph capture of full call, "
                f"encode and edit: {', '.join(f'{s}@{d}' for s, d in pairs)}")
    if stage == "kernels":
        return "python -m rtcore.bench.kernels (do_bench: CUDA events, L2 flushed)"
    preset, size, backends, peers = benchmark(stage, avail, device, sd21_size)
    return (f"rtcore bench --preset {preset} --size {size} --device {device} --dtype fp16 "
            f"--backends {','.join(backends)} --peers {','.join(peers)} --speed {','.join(SPEEDS)} --runs 3")


# -- the stages ----------------------------------------------------------------------------------------------------


def _pipeline(checkpoint, spec, dtype, device, workdir):
    from rtcore import CycleDiffusion

    backend, *flags = spec.split("+")
    if backend == "eager":
        pipe = CycleDiffusion.from_pretrained(checkpoint, device=device, dtype=dtype, kernels="kernels" in flags)
    else:
        from rtcore.export.build import build

        out = build(checkpoint, Path(workdir) / f"{spec}-{dtype}", backend=backend, dtype=dtype, height=64,
                    width=64, device=device, quiet=True)
        pipe = CycleDiffusion.load(out, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _edit(pipe, image):
    import torch

    return pipe(image=image, generator=torch.Generator().manual_seed(0), **EDIT_ARGS).images


def _capture_every_mode(pipe, image):
    """(graphs captured, status): full call, encode and edit, with a capture failure turned into an error."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _edit(pipe, image)
            source = pipe.encode(image=image, source_prompt=EDIT_ARGS["source_prompt"], num_inference_steps=20,
                                 strength=0.8, generator=torch.Generator().manual_seed(0))
            pipe.edit(source, prompt=EDIT_ARGS["prompt"], output_type="np")
    except Exception as err:  # reported in the table, not raised
        return 0, f"FAILED: {type(err).__name__}: {err}"
    count = len(pipe._graphed.graphs) if pipe._graphed is not None else 0
    return count, "ok" if count >= 3 else "FAILED: fewer than 3 graphs"


def drift_and_graphs(pairs, device, workdir):
    """Edits of the tiny checkpoint per (spec, dtype) against eager fp32: {"drift": rows, "graphs": rows}."""
    from rtcore.demo import sample_image
    from rtcore.export import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint(Path(workdir) / "tiny", kind="sd1")
    image = sample_image(64, 64)
    reference = _edit(_pipeline(checkpoint, "eager", "fp32", device, workdir), image)
    drift, graphs = [], []
    for spec, dtype in pairs:
        try:
            pipe = _pipeline(checkpoint, spec, dtype, device, workdir)
            drift.append((spec, dtype, psnr(_edit(pipe, image), reference), "ok"))
        except Exception as err:  # one failing backend must not hide the others' results
            drift.append((spec, dtype, None, f"FAILED: {type(err).__name__}: {err}"))
            continue
        if spec.split("+")[0] in ("eager", "compile"):  # the backends that replay CUDA graphs
            graphs.append((spec, dtype, *_capture_every_mode(pipe, image)))
    return {"drift": drift, "graphs": graphs}


def run_tests():
    rows = []
    for name, args in (("gpu tier", ["-m", "gpu", "tests"]), ("tests/kernels", ["tests/kernels"])):
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                                capture_output=True, text=True)
        summary = re.findall(r"=+ (.*(?:passed|failed|error).*) =+", result.stdout)
        last = (result.stdout.strip() or result.stderr.strip() or "no output").splitlines()[-1]
        rows.append((name, "passed" if result.returncode == 0 else f"FAILED (exit {result.returncode})",
                     summary[-1] if summary else last))
    return {"rows": rows}


def run_stage(stage, avail, device, workdir, sd21_size):
    """One stage's results (JSON-able), measured."""
    if stage == "tests":
        return run_tests()
    if stage == "drift":
        return drift_and_graphs(drift_pipelines(avail), device, workdir)
    if stage == "compile":
        return drift_and_graphs([("compile", "fp16"), ("compile", "bf16")], device, workdir)
    if stage == "kernels":
        from .kernels import run as run_kernels

        return run_kernels(device)
    from .bench_edit import run as run_edit

    preset, size, backends, peers = benchmark(stage, avail, device, sd21_size)
    return run_edit(preset, size=size, backends=tuple(backends), peers=tuple(peers), runs=3, dtype="fp16",
                    device=device, speeds=SPEEDS)


def failures(stage, results):
    """What failed in a stage's results, one line each."""
    if stage == "tests":
        return [f"{name}: {status}" for name, status, _ in results["rows"] if status != "passed"]
    if stage in ("drift", "compile"):
        return ([f"drift {b}@{d}: {s}" for b, d, _, s in results["drift"] if s != "ok"]
                + [f"graphs {b}@{d}: {s}" for b, d, _, s in results["graphs"] if s != "ok"])
    if stage == "kernels":
        return []
    return [f"{n}: {r.get('error', 'wrong image')}" for n, r in results["results"].items() if not r.get("correct")]


def markdown(stage, hdr, results, elapsed_s):
    """A stage's section of docs/BENCHMARKS.md."""
    lines = [f"### {stage}", "",
             f"`rtcore selfcheck --stage {stage}` on {hdr['device_name']} ({hdr['device']}), {hdr['date']}, "
             f"rev {hdr['git_revision']}; torch {hdr['versions']['torch']}, triton {hdr['versions']['triton']}, "
             f"onnxruntime {hdr['versions'].get('onnxruntime')}; {elapsed_s:.0f} s (estimate "
             f"{BY_NAME[stage].estimate_s} s).", ""]
    if "error" in results:
        return "\n".join(lines + [f"FAILED: {results['error']}", ""])
    if stage == "tests":
        lines += ["| run | status | pytest |", "|---|---|---|"]
        lines += [f"| {name} | {status} | {summary} |" for name, status, summary in results["rows"]]
    elif stage in ("drift", "compile"):
        lines += ["| backend | dtype | PSNR dB vs eager fp32 | status |", "|---|---|---|---|"]
        lines += [f"| {b} | {d} | {'—' if p is None else f'{p:.1f}'} | {s} |" for b, d, p, s in results["drift"]]
        lines += ["", "CUDA graphs (full call, encode, edit):", "", "| backend | dtype | graphs | status |",
                  "|---|---|---|---|"]
        lines += [f"| {b} | {d} | {n} | {s} |" for b, d, n, s in results["graphs"]]
    elif stage == "kernels":
        from .kernels import markdown as kernel_table

        lines.append(kernel_table(results))
    else:
        from .report import markdown as edit_table

        lines.append(edit_table(results))
    return "\n".join(lines).rstrip() + "\n"


def write_section(stage, text, path=DOCS):
    """Replaces what lies between ``stage``'s markers in ``path`` with ``text`` (markers added at the end when the
    document has none yet)."""
    start, end = START.format(stage), END.format(stage)
    doc = path.read_text()
    if start not in doc:
        doc = doc.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}{end}{tail}")


# -- the command ---------------------------------------------------------------------------------------------------


def plan(stages, avail, budget_s=None):
    """[(stage, runs: bool, why not)] in plan order: a stage runs if its needs are met and its estimate fits the
    budget left by the stages before it."""
    rows, left = [], budget_s
    for stage in stages:
        s = BY_NAME[stage]
        if s.needs and not avail[s.needs]:
            rows.append((stage, False, f"skipped: needs {s.needs}, not on this machine"))
        elif left is not None and s.estimate_s > left:
            rows.append((stage, False, f"skipped: its estimate {s.estimate_s} s exceeds the {left:.0f} s left"))
        else:
            rows.append((stage, True, ""))
            left = None if left is None else left - s.estimate_s
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rtcore selfcheck", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--stage", default="", help=f"stages to run, comma-separated, of: {', '.join(BY_NAME)} "
                                                    "(default: all, in that order)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="device time available: a stage is skipped when its estimate does not fit what is left, "
                             "by the estimates in the plan and by the time the stages before it really took")
    parser.add_argument("--sd21-size", type=int, default=512, choices=(512, 768), help="SD 2.1's image side")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/BENCHMARKS.md")
    parser.add_argument("--out", default="bench_out/selfcheck", help="where each stage's JSON goes")
    args = parser.parse_args(argv)
    chosen = [s for s in args.stage.split(",") if s] or list(BY_NAME)
    unknown = [s for s in chosen if s not in BY_NAME]
    if unknown:
        parser.error(f"--stage: unknown {', '.join(unknown)}; the stages are {', '.join(BY_NAME)}")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    import torch

    avail = available()
    cuda = torch.device(args.device).type == "cuda" and avail["cuda"]
    if not cuda:  # say what a CUDA machine with onnxruntime-gpu and TensorRT would run
        avail = {"cuda": True, "onnx": True, "tensorrt": True}
    rows = plan([s for s in BY_NAME if s in chosen], avail, args.budget_s)
    print("rtcore selfcheck" + ("" if cuda else f": no CUDA device here ({args.device}), so nothing is run") +
          (" (dry run)" if args.dry_run else "") + ". The plan, each estimate for one H100:")
    for k, (stage, runs, why) in enumerate(rows, 1):
        s = BY_NAME[stage]
        print(f"  {k}. {stage} (~{s.estimate_s / 60:.1f} min){'' if runs else ' ' + why}: "
              f"{describe(stage, avail, args.device, args.sd21_size)}\n       estimate: {s.basis}")
    if args.dry_run or not cuda:
        return 0
    return _run(rows, avail, args)


def _run(rows, avail, args):
    import tempfile

    import torch

    from .common import header

    hdr, failed, out = header(args.device), [], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        for stage, runs, why in rows:
            left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
            if runs and left is not None and BY_NAME[stage].estimate_s > left:  # the stages before took longer
                runs, why = False, f"skipped: its estimate {BY_NAME[stage].estimate_s} s exceeds the {left:.0f} s left"
            if not runs:
                print(f"== {stage}: {why}", flush=True)
                continue
            print(f"== {stage}: {describe(stage, avail, args.device, args.sd21_size)}", flush=True)
            began = time.perf_counter()
            try:
                results = run_stage(stage, avail, args.device, workdir, args.sd21_size)
            except Exception as err:  # the stage as a whole failed: say so in its section, go on with the next
                results = {"error": f"{type(err).__name__}: {err}"}
            elapsed = time.perf_counter() - began
            problems = [results["error"]] if "error" in results else failures(stage, results)
            failed += [f"{stage}: {p}" for p in problems]
            (out / f"{stage}.json").write_text(json.dumps({"header": hdr, "elapsed_s": elapsed, "results": results},
                                                          indent=2, default=str))
            text = markdown(stage, hdr, results, elapsed)
            print(text, flush=True)
            if not args.no_docs:
                write_section(stage, text)
            torch.cuda.empty_cache()
            print(f"   {stage} done in {elapsed:.0f} s (estimate {BY_NAME[stage].estimate_s} s)", flush=True)
    print(f"selfcheck took {time.perf_counter() - start:.0f} s; " +
          (f"FAILED: {'; '.join(failed)}" if failed else "everything passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
