"""The ``rtcore`` command: edit, generate, img2img, export, serve, bench, selfcheck, demo."""

import argparse
import math
import sys
import time
from pathlib import Path

from .engines import BACKENDS, DTYPES


def _edit(args):
    import torch

    from rtcore import CycleDiffusion
    from rtcore.images import load_image

    _check_sampling(args)
    out = _check_out(args.out, args.overwrite, inputs=(args.image,))
    image = load_image(args.image)
    start = time.perf_counter()
    pipe = CycleDiffusion.from_pretrained(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - start
    pipe.set_progress_bar_config(desc="denoising", disable=args.quiet)
    result = pipe(prompt=args.prompt, source_prompt=args.source_prompt, image=image, strength=args.strength,
                  num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                  source_guidance_scale=args.source_guidance_scale, eta=args.eta,
                  generator=torch.Generator().manual_seed(args.seed), **_approximations(args))
    _save(result.images[0], out)
    if not args.quiet:
        stages = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in result.timings.items())
        print(f"wrote {out} (load {load_s * 1e3:.0f} ms; {stages})")


def _approximations(args):
    """--preset, with --cache-interval / --guidance-cutoff over it: the pipeline call's arguments, checked."""
    from rtcore.approximations import Approximations, from_preset

    settings = from_preset(args.preset)
    if args.cache_interval is not None:
        settings["cache_interval"] = args.cache_interval
    if args.guidance_cutoff is not None:
        settings["guidance_cutoff"] = args.guidance_cutoff
    try:
        Approximations(**settings)
    except ValueError as err:
        raise ValueError(f"--{str(err).replace('_', '-', 1)}") from None  # the flag's name, not the argument's
    return settings


def _check_sampling(args):
    """The sampling flags, checked before a model is loaded (the pipeline checks them again against its schedule)."""
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    strength = getattr(args, "strength", None)
    if strength is not None and not 0 < strength <= 1:
        raise ValueError(f"--strength must be in (0, 1], got {strength}")
    if not (math.isfinite(args.eta) and args.eta >= 0):
        raise ValueError(f"--eta must be a finite number >= 0, got {args.eta}")
    for name in ("guidance_scale", "source_guidance_scale"):
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if hasattr(args, "preset"):  # translate has no approximation options
        _approximations(args)


def _check_out(out, overwrite, inputs=()):
    """Fails before any work if --out would overwrite an input, or an existing file without --overwrite."""
    out = Path(out)
    if any(out.resolve() == Path(p).resolve() for p in inputs):
        raise ValueError("--out must not be the input image: rtcore never overwrites what it was given")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ValueError(f"--out must end in .png, .jpg, .jpeg or .webp, got {out.name!r}")
    return out


def _save(image, out):
    """Writes the image whole or not at all (a temporary name, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial{out.suffix}")
    image.save(tmp)
    tmp.replace(out)


def _generate(args):
    import torch

    from rtcore import StableDiffusion
    from rtcore.images import load_image

    _check_sampling(args)
    out = _check_out(args.out, args.overwrite, inputs=(args.image,) if args.command == "img2img" else ())
    pipe = StableDiffusion.from_pretrained(args.model, backend=args.backend, device=args.device, dtype=args.dtype)
    common = dict(num_inference_steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
                  negative_prompt=args.negative_prompt, generator=torch.Generator().manual_seed(args.seed),
                  **_approximations(args))
    if args.command == "img2img":
        result = pipe.img2img(args.prompt, load_image(args.image), strength=args.strength, **common)
    else:
        result = pipe.text_to_image(args.prompt, height=args.height, width=args.width, scheduler=args.scheduler,
                                    **common)
    _save(result.images[0], out)
    print(f"wrote {out}")


def _translate(args):
    import torch

    from rtcore import CycleDiffusion
    from rtcore.images import load_image
    from rtcore.translate import PixelCycleDiffusion, is_pixel_model, translate

    _check_sampling(args)
    out = _check_out(args.out, args.overwrite, inputs=(args.image,))
    image = load_image(args.image)
    generator = torch.Generator().manual_seed(args.seed)
    if is_pixel_model(args.source_model):
        pipe = PixelCycleDiffusion.from_pretrained(args.source_model, args.target_model, device=args.device)
        result = pipe(image, strength=args.strength, num_inference_steps=args.steps, eta=args.eta,
                      generator=generator)[0]
    else:
        source = CycleDiffusion.from_pretrained(args.source_model, device=args.device)
        target = CycleDiffusion.from_pretrained(args.target_model, device=args.device)
        result = translate(source, target, image, args.source_prompt, args.prompt, strength=args.strength,
                           num_inference_steps=args.steps, guidance_scale=args.guidance_scale, eta=args.eta,
                           generator=generator).images[0]
    _save(result, out)
    print(f"wrote {out}")


def _export(args):
    from rtcore.export.build import build

    start = time.perf_counter()
    out = build(args.checkpoint, args.out, backend=args.backend, dtype=args.dtype, height=args.height,
                width=args.width, batch=args.batch, kernels=args.kernels, int8=args.int8, device=args.device,
                overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {args.backend} engine directory {out} in {time.perf_counter() - start:.1f} s")


def _serve(args):
    from rtcore.serve import serve

    serve(args.model, host=args.host, port=args.port, backend=args.backend, device=args.device, dtype=args.dtype,
          max_concurrency=args.max_concurrency, max_queue=args.max_queue, timeout_s=args.timeout,
          max_pixels=args.max_pixels, max_upload_bytes=args.max_upload_mb and args.max_upload_mb << 20, ray=args.ray,
          num_replicas=args.num_replicas, max_batch=args.max_batch,
          batch_wait_s=None if args.batch_wait_ms is None else args.batch_wait_ms / 1e3)


def _demo(args):
    from rtcore.demo import run_demo

    run_demo(args.out_dir, steps=args.steps, strength=args.strength, scene=args.scene, seed=args.seed,
             device=args.device, checkpoint=args.model)


def _engine_options(parser, backend=True, dtype=True):
    """Where and on what a pipeline runs: --backend, --device, --dtype."""
    if backend:
        parser.add_argument("--backend", default=None, choices=BACKENDS,
                            help="for a checkpoint: eager (default) or a backend to build into the cache; "
                                 "for an engine directory: leave unset")
    parser.add_argument("--device", default="cpu")
    if dtype:
        parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default fp32 (engine dirs: theirs)")


def _output_options(parser, what="output image file (.png/.jpg/.webp)"):
    parser.add_argument("--out", required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _approximation_options(parser):
    """How much UNet work to skip (rtcore.approximations): a named preset, or its two settings."""
    from rtcore.approximations import PRESETS

    parser.add_argument("--preset", default="exact", choices=sorted(PRESETS),
                        help="exact (default) or fast: feature caching and a guidance cutoff, fewer UNet FLOPs at "
                             "the quality cost docs/QUALITY.md measures")
    parser.add_argument("--cache-interval", type=int, default=None,
                        help="run the whole UNet every N steps, the shallow path on its cached features between "
                             "(1: off; overrides the preset)")
    parser.add_argument("--guidance-cutoff", type=float, default=None,
                        help="classifier-free guidance on the first fraction of the steps only (1: all; overrides "
                             "the preset)")


def _sampling_options(parser, steps=50, strength=0.8, guidance_scale=7.5, eta=0.1):
    """The loop's settings, with each command's defaults; ``strength=None``: the command has none."""
    parser.add_argument("--steps", type=int, default=steps, help=f"num_inference_steps (default {steps})")
    if strength is not None:
        parser.add_argument("--strength", type=float, default=strength, help=f"in (0, 1] (default {strength})")
    parser.add_argument("--guidance-scale", type=float, default=guidance_scale,
                        help=f"classifier-free guidance, off at 1 (default {guidance_scale})")
    parser.add_argument("--eta", type=float, default=eta, help=f"DDIM noise, 0 deterministic (default {eta})")
    parser.add_argument("--seed", type=int, default=0, help="CPU generator seed (default 0)")


def build_parser():
    parser = argparse.ArgumentParser(prog="rtcore", description="CycleDiffusion image editing on compiled engines")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit an image with a source and a target prompt")
    edit.add_argument("--model", required=True, help="diffusers-layout checkpoint folder, hub id or engine directory")
    edit.add_argument("--image", required=True, help="input image file")
    edit.add_argument("--source-prompt", required=True, help="what the input image shows")
    edit.add_argument("--prompt", required=True, help="what the edited image should show")
    _output_options(edit)
    _sampling_options(edit)
    edit.add_argument("--source-guidance-scale", type=float, default=1.0)
    _approximation_options(edit)
    _engine_options(edit)
    edit.add_argument("--quiet", action="store_true", help="no progress bar or timing line")
    edit.set_defaults(run=_edit)

    export = sub.add_parser("export", help="build an engine directory from a checkpoint")
    export.add_argument("checkpoint", help="diffusers-layout checkpoint folder or hub id")
    export.add_argument("--backend", default="onnx", choices=[b for b in BACKENDS if b != "eager"])
    export.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    export.add_argument("--height", type=int, default=None, help="image height of the shape profile")
    export.add_argument("--width", type=int, default=None, help="image width of the shape profile")
    export.add_argument("--batch", type=int, default=1, help="images per call of the shape profile")
    export.add_argument("--kernels", action="store_true", help="Triton kernels (compile backend)")
    export.add_argument("--int8", nargs="?", const="dynamic", default=None, choices=("dynamic", "static"),
                        help="int8 quantization. dynamic (what a bare --int8 means): Triton GEMMs (compile backend, "
                        "CUDA) or NNCF int8 linear layers (openvino backend, with --dtype bf16); static (openvino): "
                        "int8 convolutions too, calibrated at export on shapes-world scenes")
    export.add_argument("--device", default="cpu", help="where to build (TensorRT and GPU compile need cuda)")
    _output_options(export, "engine directory to write")
    export.add_argument("--quiet", action="store_true", help="print nothing but errors (no stage times)")
    export.set_defaults(run=_export)

    srv = sub.add_parser("serve", help="serve edits over HTTP (POST /edit, GET /healthz, GET /metrics)")
    srv.add_argument("model", help="engine directory or checkpoint")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    _engine_options(srv)
    srv.add_argument("--max-concurrency", type=int, default=1, help="pipeline calls running at once")
    srv.add_argument("--max-queue", type=int, default=8,
                     help="edits waiting beyond max-concurrency x max-batch; beyond this: 429")
    # their defaults are rtcore.batching's (which needs the serve extra, so the CLI does not import it to start)
    srv.add_argument("--max-batch", type=int, default=None,
                     help="requests sharing their settings run as one call of up to this many images (1: no "
                          "batching; default: rtcore.batching.MAX_BATCH)")
    srv.add_argument("--batch-wait-ms", type=float, default=None,
                     help="how long a request waits for others to batch with (default: rtcore.batching.BATCH_WAIT_S)")
    srv.add_argument("--timeout", type=float, default=60.0, help="seconds per request; beyond this: 504")
    srv.add_argument("--max-pixels", type=int, default=None,
                     help="largest uploaded image, width x height, read from its header before decoding "
                          "(default 2048x2048 = 4194304); beyond this: 413")
    srv.add_argument("--max-upload-mb", type=int, default=None,
                     help="largest request body in MiB, chunked bodies included (default 20); beyond this: 413")
    srv.add_argument("--ray", action="store_true", help="serve from Ray Serve replicas (pip install 'rtcore[ray]')")
    srv.add_argument("--num-replicas", type=int, default=1, help="Ray Serve replicas (one per GPU)")
    srv.set_defaults(run=_serve)

    for name, helptext in (("generate", "text-to-image (DDIM or DPM-Solver++(2M))"),
                           ("img2img", "SDEdit img2img (DDIM)")):
        gen = sub.add_parser(name, help=helptext)
        gen.add_argument("--model", required=True, help="checkpoint or engine directory")
        gen.add_argument("--prompt", required=True)
        gen.add_argument("--negative-prompt", default=None)
        _output_options(gen)
        _sampling_options(gen, strength=0.8 if name == "img2img" else None, eta=0.0)
        _approximation_options(gen)
        _engine_options(gen)
        if name == "img2img":
            gen.add_argument("--image", required=True)
        else:
            gen.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm++2m"])
            gen.add_argument("--height", type=int, default=None)
            gen.add_argument("--width", type=int, default=None)
        gen.set_defaults(run=_generate)

    tr = sub.add_parser("translate", help="two-model CycleDiffusion: encode with one model, decode with another")
    tr.add_argument("--source-model", required=True, help="pixel DDPM folder, or SD checkpoint")
    tr.add_argument("--target-model", required=True, help="a model sharing the source's noise schedule (and VAE)")
    tr.add_argument("--image", required=True)
    _output_options(tr)
    tr.add_argument("--source-prompt", default="", help="latent models only")
    tr.add_argument("--prompt", default="", help="latent models only")
    _sampling_options(tr, steps=100, guidance_scale=1.0)  # --guidance-scale: latent models only
    _engine_options(tr, backend=False, dtype=False)
    tr.set_defaults(run=_translate)

    sub.add_parser("bench", help="benchmark rtcore backends against diffusers (see rtcore bench --help); "
                                 "rtcore bench quality: edit quality on the shipped model; rtcore bench load: "
                                 "rtcore serve under concurrent clients")
    sub.add_parser("selfcheck", help="on a GPU: check and measure every GPU path, write docs/BENCHMARKS.md "
                                     "(see rtcore selfcheck --help)")
    demo = sub.add_parser("demo", help="edit a held-out shapes scene three ways with the shipped model (offline)")
    demo.add_argument("--out-dir", default="demo_out", help="where grid.png and the images go")
    demo.add_argument("--model", default="rtcore-shapes", help="checkpoint (default: the shipped rtcore-shapes)")
    demo.add_argument("--scene", type=int, default=0, help="which held-out scene of rtcore.shapes")
    demo.add_argument("--steps", type=int, default=50)
    demo.add_argument("--strength", type=float, default=0.6)
    demo.add_argument("--seed", type=int, default=0)
    _engine_options(demo, backend=False, dtype=False)
    demo.set_defaults(run=_demo)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "load"]:  # rtcore serve under concurrent clients: rtcore bench load --help
        from rtcore.bench.load import main as load_main

        load_main(argv[2:])
        return 0
    if argv[:2] == ["bench", "quality"]:  # edit quality on the shipped model: rtcore bench quality --help
        from rtcore.bench.quality import main as quality_main

        quality_main(argv[2:])
        return 0
    if argv[:1] == ["bench"]:  # the harness owns its options: rtcore bench --help
        from rtcore.bench.bench_edit import main as bench_main

        bench_main(argv[1:])
        return 0
    if argv[:1] == ["selfcheck"]:  # its own options too: rtcore selfcheck --help
        from rtcore.bench.selfcheck import main as selfcheck_main

        return selfcheck_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, FloatingPointError) as err:
        print(f"rtcore {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
