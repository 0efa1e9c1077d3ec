"""Edit quality on trained weights: CycleDiffusion against SDEdit on the shapes world, judged by its ground truth.

    python -m rtcore.bench.quality --out bench_out/quality        # also: rtcore bench quality ...
                                                                  # ~15 min on 2 cores with the defaults

On held-out scenes of rtcore.shapes, every scene is edited three ways: its colour, its shape, its background (the
target is the scene with that one attribute changed, so the ground truth of the result is known). For each
method and strength the reader (rtcore.shapes.read) measures, from pixels alone:
- success: the edited attribute reads as the target;
- kept: the other two attributes still read as the source's;
- preservation: IoU of the object mask with the source's and the shift of its centre (colour and background
  edits: the object should not move), and the PSNR of what the edit should not touch (the background outside the
  object for colour and shape edits, the object for background edits).
Methods: CycleDiffusion (η = 0.1, rtcore's default), CycleDiffusion with η = 0 (the DPM-Encoder without noise:
the latent is then the DDIM trajectory of a forward-noised image), and SDEdit (img2img, DDIM, same strength, steps
and guidance). The same model, seed and steps for all.

Also measured: the VAE's reconstruction PSNR, text-to-image (does a generated image read as its prompt's colour
and shape), CycleDiffusion colour edits at more guidance scales (the success-against-IoU frontier), how far a
one-word prompt change moves the object from the same noise (``layout_shift``), the UNet's noise-prediction error
and colour conditioning by background (``denoising_by_background``), and precision drift: the same
CycleDiffusion edits in bf16 (and OpenVINO bf16/int8 when installed) against fp32, as PSNR of the edited images and
the change in success rate.

Writes quality.json, quality.md and quality.png (success against preservation, one panel per edit kind).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from rtcore import shapes
from rtcore.approximations import named_settings
from rtcore.metrics import colour_contrast, psnr

from .common import header
from .quality_report import approximations_markdown, markdown, plot, plot_approximations

KINDS = ("colour", "shape", "background")
VALUES = {"colour": tuple(shapes.COLOURS), "shape": shapes.SHAPES, "background": shapes.BACKGROUNDS}
METHODS = ("cycle", "cycle-eta0", "sdedit")


def edit_targets(scenes, kind):
    """The target scene of each source for an edit of ``kind``: targets cycle through the other values, so each
    value is a target about equally often."""
    values = VALUES[kind]
    targets = []
    for i, s in enumerate(scenes):
        others = [v for v in values if v != getattr(s, kind)]
        targets.append(shapes.with_attribute(s, kind, others[i % len(others)]))
    return targets


def judge(source, target, kind, edited):
    """Scores of one edit: source/target Scene, edited uint8 (64, 64, 3)."""
    original, coverage = shapes.render(source)
    truth = coverage > 0.5
    got = shapes.read(edited)
    others = [k for k in KINDS if k != kind]
    scores = {"success": getattr(got, kind) == getattr(target, kind),
              "kept": all(getattr(got, k) == getattr(source, k) for k in others)}
    if kind == "background":  # the object is what must stay
        region = ~shapes.dilate(~truth, 2)
    else:  # the background away from the old (and, for shape edits, the new) object
        region = ~shapes.dilate(truth | got.mask, 2)
    scores["psnr_kept"] = psnr(edited[region] / 255.0, original[region] / 255.0) if region.any() else None
    if kind != "shape":
        scores["iou"] = shapes.iou(got.mask, truth)
        scores["shift"] = (math.dist(got.centre, (source.cx - 0.5, source.cy - 0.5)) if got.centre is not None
                           else None)
    return scores


def summarize(rows):
    """Mean of each score over the rows (booleans as rates); None-valued scores left out."""
    out = {"n": len(rows)}
    for key in rows[0]:
        values = [float(r[key]) for r in rows if r.get(key) is not None and not math.isinf(float(r[key]))]
        out[key] = float(np.mean(values)) if values else None
    return out


def background_masks(scenes):
    """{background: bool tensor over ``scenes``}, for each background the scenes have: every by-background split."""
    masks = {bg: torch.tensor([s.background == bg for s in scenes]) for bg in shapes.BACKGROUNDS}
    return {bg: mask for bg, mask in masks.items() if mask.any()}


def score(scenes, targets, kind, edited):
    """``summarize`` of the judged edits, with the same split by the source's background (``by_background``):
    the colour-edit frontier differs by background."""
    rows = [judge(s, t, kind, e) for s, t, e in zip(scenes, targets, edited)]
    return {**summarize(rows),
            "by_background": {bg: summarize([r for r, keep in zip(rows, mask) if keep])
                              for bg, mask in background_masks(scenes).items()}}


def run_edits(cycle, sd, method, scenes, targets, strength, steps, guidance, seed, approximations=None):
    """Edited images (N, 64, 64, 3) uint8 of one method, the whole batch in one call; ``approximations``: the
    call arguments of rtcore.approximations (default exact)."""
    images = [shapes.image(s) for s in scenes]
    kw = dict(prompt=[t.caption for t in targets], image=images, strength=strength, num_inference_steps=steps,
              guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np",
              **(approximations or {}))
    if method == "sdedit":
        out = sd.img2img(eta=0.0, **kw)
    else:
        out = cycle(source_prompt=[s.caption for s in scenes], eta=0.1 if method == "cycle" else 0.0, **kw)
    return np.clip(np.rint(out.images * 255), 0, 255).astype(np.uint8)


# The approximation settings the benchmark compares (rtcore.approximations.named_settings): presets by name, "cacheN"
# for feature caching every N steps, "cutoffC" for a guidance cutoff at C, joined by "+".
APPROXIMATIONS = ("exact", "cache2", "cache3", "cache4", "cache5", "cutoff0.4", "cutoff0.6", "cutoff0.8",
                  "cache4+cutoff0.8", "cache4+cutoff0.6", "cache5+cutoff0.8", "fast")


def approximation_flops(flops, settings, steps, strength, guidance):
    """UNet FLOPs of one CycleDiffusion edit with ``settings``, as a fraction of the exact edit's (counted from
    ``flops``, the model's bench.flops.stage_flops)."""
    from rtcore.approximations import EXACT, Approximations
    from rtcore.sampling import Rows

    from .flops import denoise_flops

    k, rows = int(steps * strength), Rows("cycle", guidance)
    return denoise_flops(flops, k, rows, Approximations(**settings)) / denoise_flops(flops, k, rows, EXACT)


def vae_psnr(cycle, scenes):
    """Mean reconstruction PSNR (dB) of the VAE (posterior mean, decoded) on ``scenes``."""
    eng = cycle.engines
    pixels = shapes.pixels(scenes)
    with torch.inference_mode():
        mean, _ = eng.vae_encode(pixels.to(eng.device, eng.dtype))
        recon = eng.vae_decode(mean).float().clamp(-1, 1).cpu()
    return float(np.mean([psnr(r, p, peak=2.0) for r, p in zip(recon.numpy(), pixels.numpy())]))


def generate(sd, captions, steps, guidance, seed):
    """The readings (rtcore.shapes.read) of text-to-image of ``captions``: deterministic DDIM from one seeded batch
    of noise, so image i starts from the same noise whatever the captions."""
    out = sd.text_to_image(captions, height=shapes.SIZE, width=shapes.SIZE, num_inference_steps=steps,
                           guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np")
    return [shapes.read(np.clip(np.rint(im * 255), 0, 255).astype(np.uint8)) for im in out.images]


def text_to_image(readings, scenes):
    """Rate at which images generated from the scenes' captions (their readings) show the prompted colour and
    shape (and background)."""
    return {"n": len(scenes),
            "colour_and_shape": float(np.mean([r.colour == s.colour and r.shape == s.shape
                                               for r, s in zip(readings, scenes)])),
            "colour": float(np.mean([r.colour == s.colour for r, s in zip(readings, scenes)])),
            "shape": float(np.mean([r.shape == s.shape for r, s in zip(readings, scenes)])),
            "background": float(np.mean([r.background == s.background for r, s in zip(readings, scenes)]))}


def scene_latents(eng, scenes, objects=True):
    """The scaled VAE latents (posterior mean, fp32, on the CPU) of ``scenes`` (their backgrounds alone when
    ``objects`` is False): what the UNet sees of them before noise."""
    with torch.inference_mode():
        mean, _ = eng.vae_encode(shapes.pixels(scenes, objects).to(eng.device, eng.dtype))
    return mean.float().cpu() * eng.scaling_factor


def latent_change(cycle, scenes):
    """How much of an object's VAE latent each attribute is: the latent distance (scaled latents, posterior mean)
    from a scene to the same scene with its colour (or shape) changed, relative to the distance to the scene without
    its object, and the cosine between the object's latent signal in its colour and in the target colour. A colour
    change that moves the latent as far as removing the object leaves a denoiser little to tell "this object,
    recoloured" from "another object". The colour ratio is also given by the scene's background: the VAE shipped
    before ``train_shapes --colour-contrast`` had 1.3 on grey and 0.8 on white and black, and its colour edits did
    not take on grey; the shipped one has 0.4 on each (docs/QUALITY.md).
    By channel: the mean squared change a colour (background) edit makes in each latent channel, as a fraction of
    the channel's variance over the scenes; near 0, the channel does not see that attribute (a VAE trained with
    --invariant-channels keeps the object's place there). Only --colour-contrast trains a VAE on empty scenes; for
    the others they are out of distribution, and for an --invariant-channels VAE the by-channel figures are the
    ones to read."""
    eng = cycle.engines

    def by_channel(changed):
        moved = (changed - z).transpose(0, 1).flatten(1)
        return [float(v) for v in moved.pow(2).mean(1) / z.transpose(0, 1).flatten(1).var(1)]

    z = scene_latents(eng, scenes)
    recoloured = scene_latents(eng, edit_targets(scenes, "colour"))
    reshaped = scene_latents(eng, edit_targets(scenes, "shape"))
    empty = scene_latents(eng, scenes, objects=False)
    colour_vs_object = colour_contrast(z, recoloured, empty).sqrt()
    return {"colour_vs_object": float(colour_vs_object.mean()),
            "colour_vs_object_by_background": {bg: float(colour_vs_object[mask].mean())
                                               for bg, mask in background_masks(scenes).items()},
            "shape_vs_object": float(colour_contrast(z, reshaped, empty).sqrt().mean()),
            "object_cosine_across_colours": float(torch.nn.functional.cosine_similarity(
                (z - empty).flatten(1), (recoloured - empty).flatten(1)).mean()),
            "colour_change_by_channel": by_channel(recoloured),
            "background_change_by_channel": by_channel(scene_latents(eng, edit_targets(scenes, "background")))}


DIAGNOSTIC_TIMESTEPS = (150, 300, 450, 600, 800)


def denoising_by_background(cycle, scenes, seed, timesteps=DIAGNOSTIC_TIMESTEPS):
    """What the UNet makes of each background, at fixed timesteps: its ε-prediction error (mean squared) on the
    scenes' own latents (posterior mean, scaled) noised with seeded noise and their own captions, and its colour
    conditioning, the RMS change in its prediction when the caption's colour word is changed (to the colour edit's
    target). A colour edit changes only what the model is told, so the conditioning is how hard an edit can pull
    the colour, and the error how well the model reads each background from its latent."""
    from rtcore.prompts import encode_prompts
    from rtcore.schedule import alphas_cumprod

    eng = cycle.engines
    captions = [s.caption for s in scenes]
    recoloured = [t.caption for t in edit_targets(scenes, "colour")]
    acp = torch.from_numpy(alphas_cumprod(eng.scheduler)).float()
    generator = torch.Generator().manual_seed(seed)
    z0 = scene_latents(eng, scenes)
    with torch.inference_mode():
        embeds = encode_prompts(eng, captions + recoloured)
        own = torch.stack([embeds[c] for c in captions])
        other = torch.stack([embeds[c] for c in recoloured])
        error, conditioning = [], []
        for t in timesteps:
            noise = torch.randn(z0.shape, generator=generator)
            zt = (acp[t].sqrt() * z0 + (1 - acp[t]).sqrt() * noise).to(eng.device, eng.dtype)
            step = torch.tensor([t], device=eng.device)
            predicted = eng.unet(zt, step, own).float().cpu()
            told_other = eng.unet(zt, step, other).float().cpu()
            error.append((predicted - noise).pow(2).mean((1, 2, 3)))
            conditioning.append((told_other - predicted).pow(2).mean((1, 2, 3)).sqrt())
    out = {"timesteps": list(timesteps)}
    for background, pick in background_masks(scenes).items():
        out[background] = {"n": int(pick.sum()), "error": [float(e[pick].mean()) for e in error],
                           "colour_conditioning": [float(c[pick].mean()) for c in conditioning]}
    return out


def layout_shift(before, after):
    """How far the object moves when one word of the prompt changes and nothing else does: ``before``/``after`` are
    the readings (:func:`generate`, same seed) of captions and of the same captions with one word changed; returns
    the mean centre distance (px) and mask IoU of the pairs where both images have an object. It measures how much
    the model ties the object's place to the word an edit changes: what CycleDiffusion's encoded noise has to hold
    against to keep it there."""
    found = [(a, b) for a, b in zip(before, after) if a.centre is not None and b.centre is not None]
    if not found:  # no pair where both images have an object
        return {"shift": None, "iou": None, "pairs": 0}
    return {"shift": float(np.mean([math.dist(a.centre, b.centre) for a, b in found])),
            "iou": float(np.mean([shapes.iou(a.mask, b.mask) for a, b in found])), "pairs": len(found)}


OPENVINO_INT8 = {"openvino-bf16": None, "openvino-int8": "dynamic", "openvino-int8-static": "static"}
PRECISIONS = ("fp32", "bf16", *OPENVINO_INT8)


def load(model, variant):
    """(CycleDiffusion, StableDiffusion) sharing one set of engines, for a precision variant."""
    from rtcore import CycleDiffusion
    from rtcore.stable_diffusion import StableDiffusion

    if variant == "fp32":
        cycle = CycleDiffusion.from_pretrained(model)
    elif variant == "bf16":
        cycle = CycleDiffusion.from_pretrained(model, dtype=torch.bfloat16)
    elif variant in OPENVINO_INT8:
        cycle = CycleDiffusion.from_pretrained(model, backend="openvino", dtype=torch.bfloat16,
                                               int8=OPENVINO_INT8[variant], height=shapes.SIZE, width=shapes.SIZE)
    else:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {variant!r}")
    sdedit = StableDiffusion(cycle.engines)
    for pipe in (cycle, sdedit):
        pipe.set_progress_bar_config(disable=True)  # thousands of edits: the benchmark reports its own progress
    return cycle, sdedit


def compare_approximations(cycle, sd, model, scenes, names, kinds, strengths, steps, guidance, seed, log=print):
    """CycleDiffusion edits of ``kinds`` with each approximation setting of ``names`` (its exact edit included by
    name), at ``steps`` (the default edit's 50): rows of scores with the UNet FLOPs per edit as a fraction of exact."""
    from rtcore.export.checkpoint import resolve

    from .flops import stage_flops

    flops = stage_flops(resolve(model), shapes.SIZE, shapes.SIZE, 1, 1, 1)  # per row and stage, counted once
    rows = []
    for name in names:
        settings = named_settings(name)
        for kind in kinds:
            targets = edit_targets(scenes, kind)
            for strength in strengths:
                start = time.perf_counter()
                edited = run_edits(cycle, sd, "cycle", scenes, targets, strength, steps, guidance, seed, settings)
                scores = score(scenes, targets, kind, edited)
                rows.append({"setting": name, **settings, "kind": kind, "strength": strength, **scores,
                             "unet_flops_fraction": approximation_flops(flops, settings, steps, strength, guidance),
                             "seconds": time.perf_counter() - start})
                log(f"{name:<16} {kind:<10} strength {strength:.2f}: success {scores['success']:.0%}  PSNR kept "
                    f"{scores['psnr_kept'] or float('nan'):.1f} dB  IoU {scores.get('iou') or float('nan'):.2f}")
    return rows


def run_approximations(model, n_images, strengths, guidance, seed, names, kinds, steps=50, log=print):
    """The approximation comparison alone (``rtcore bench quality --approximations-only``): a report with the
    header and its rows."""
    scenes = shapes.held_out(n_images)
    cycle, sd = load(model, "fp32")
    return {**header(), "model": str(model), "images": n_images, "guidance_scale": guidance, "seed": seed,
            "strengths": list(strengths), "approximation_steps": steps,
            "approximations": compare_approximations(cycle, sd, model, scenes, names, kinds, strengths, steps,
                                                     guidance, seed, log)}


def run(model, n_images, strengths, steps, guidance, precisions, seed, colour_guidance=(), log=print,
        approximations=(), approximation_steps=50, approximation_kinds=("colour", "shape")):
    scenes = shapes.held_out(n_images)
    report = {**header(), "model": str(model), "images": n_images, "steps": steps, "guidance_scale": guidance,
              "seed": seed, "strengths": list(strengths), "edits": [], "drift": []}
    cycle, sd = load(model, "fp32")
    report["vae_psnr_db"] = vae_psnr(cycle, scenes)
    log(f"VAE reconstruction PSNR {report['vae_psnr_db']:.2f} dB on {n_images} held-out scenes")
    start = time.perf_counter()
    drawn = generate(sd, [s.caption for s in scenes], steps, guidance, seed)
    report["text_to_image"] = text_to_image(drawn, scenes)
    log(f"text-to-image reads as prompted (colour and shape): {report['text_to_image']['colour_and_shape']:.1%} "
        f"({time.perf_counter() - start:.0f} s)")
    # the same noise as ``drawn``, one word of each caption changed
    report["layout_shift"] = {kind: layout_shift(drawn, generate(sd, [t.caption for t in edit_targets(scenes, kind)],
                                                                 steps, guidance, seed)) for kind in KINDS}
    log("one-word prompt change, same noise: " + ", ".join(
        f"{kind} moves the object {v['shift'] or float('nan'):.1f} px (mask IoU {v['iou'] or float('nan'):.2f})"
        for kind, v in report["layout_shift"].items()))
    report["latent_change"] = latent_change(cycle, scenes)
    log("latent distance of a colour change / of removing the object: "
        f"{report['latent_change']['colour_vs_object']:.2f} (shape change: "
        f"{report['latent_change']['shape_vs_object']:.2f})")
    report["denoising_by_background"] = denoising_by_background(cycle, scenes, seed)
    log("UNet ε error / colour conditioning at t = 300, by background: " + ", ".join(
        f"{bg} {v['error'][1]:.4f} / {v['colour_conditioning'][1]:.3f}"
        for bg, v in report["denoising_by_background"].items() if bg != "timesteps"))
    reference = {}  # kind → fp32 CycleDiffusion images and scores at the middle strength: the drift baseline
    middle = strengths[len(strengths) // 2]
    for kind in KINDS:
        targets = edit_targets(scenes, kind)
        for method in METHODS:
            for strength in strengths:
                start = time.perf_counter()
                edited = run_edits(cycle, sd, method, scenes, targets, strength, steps, guidance, seed)
                scores = score(scenes, targets, kind, edited)
                if method == "cycle" and strength == middle:
                    reference[kind] = edited, scores
                report["edits"].append({"kind": kind, "method": method, "strength": strength, **scores,
                                        "seconds": time.perf_counter() - start})
                log(f"{kind:<10} {method:<10} strength {strength:.2f}: success {scores['success']:.0%}  "
                    f"kept {scores['kept']:.0%}  PSNR kept {scores['psnr_kept'] or float('nan'):.1f} dB  "
                    f"IoU {scores.get('iou') or float('nan'):.2f}")
    # CycleDiffusion colour edits at other guidance scales: the success-against-IoU frontier (the target)
    report["colour_guidance"] = []
    targets = edit_targets(scenes, "colour")
    for g in colour_guidance:
        for strength in strengths:
            edited = run_edits(cycle, sd, "cycle", scenes, targets, strength, steps, g, seed)
            scores = score(scenes, targets, "colour", edited)
            report["colour_guidance"].append({"guidance_scale": g, "strength": strength, **scores})
            log(f"colour cycle guidance {g:g} strength {strength:.2f}: success {scores['success']:.0%}  "
                f"IoU {scores['iou']:.2f}  shift {scores['shift'] or float('nan'):.1f} px")
    report["approximation_steps"] = approximation_steps
    report["approximations"] = compare_approximations(cycle, sd, model, scenes, approximations, approximation_kinds,
                                                      strengths, approximation_steps, guidance, seed, log)
    for variant in precisions:
        if variant == "fp32":
            continue
        try:
            v_cycle, v_sd = load(model, variant)
        except (ImportError, RuntimeError, ValueError) as err:
            log(f"{variant}: skipped ({type(err).__name__}: {err})")
            continue
        for kind in KINDS:
            targets = edit_targets(scenes, kind)
            edited = run_edits(v_cycle, v_sd, "cycle", scenes, targets, middle, steps, guidance, seed)
            ours = score(scenes, targets, kind, edited)
            fp32, fp32_scores = reference[kind]
            row = {"precision": variant, "kind": kind, "strength": middle,
                   "psnr_vs_fp32_db": float(np.mean([psnr(a / 255.0, b / 255.0) for a, b in zip(edited, fp32)])),
                   "max_abs_vs_fp32": int(np.abs(edited.astype(int) - fp32.astype(int)).max()),
                   "success": ours["success"], "success_fp32": fp32_scores["success"]}
            report["drift"].append(row)
            log(f"{variant:<14} {kind:<10}: PSNR vs fp32 {row['psnr_vs_fp32_db']:.1f} dB, success "
                f"{row['success']:.0%} (fp32 {row['success_fp32']:.0%})")
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(prog="rtcore bench quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rtcore-shapes", help="a checkpoint of the shapes world")
    parser.add_argument("--images", type=int, default=100, help="held-out scenes per edit kind")
    parser.add_argument("--strengths", default="0.4,0.55,0.7,0.85")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps over the whole schedule (as strength 1)")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--colour-guidance", default="2,3,5",
                        help="more guidance scales for CycleDiffusion colour edits over the strengths ('' for none)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="drift of CycleDiffusion edits against fp32 ('' for none)")
    parser.add_argument("--approximations", default=",".join(APPROXIMATIONS),
                        help="CycleDiffusion edits with feature caching and guidance cutoff settings: preset names, "
                             "cacheN, cutoffC, or both joined by '+' ('' for none)")
    parser.add_argument("--approximation-steps", type=int, default=50,
                        help="steps of the approximation comparison (default 50: the default edit's)")
    parser.add_argument("--approximation-kinds", default="colour,shape",
                        help="edit kinds of the approximation comparison (default: the two its bar is set on)")
    parser.add_argument("--approximations-only", action="store_true",
                        help="run the approximation comparison alone: quality_approximations.json, .md and .png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="bench_out/quality")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    try:
        strengths = [float(s) for s in args.strengths.split(",")]
    except ValueError:
        parser.error(f"--strengths must be comma-separated numbers in (0, 1], got {args.strengths!r}")
    if not strengths or not all(0 < s <= 1 for s in strengths):
        parser.error(f"--strengths must be comma-separated numbers in (0, 1], got {args.strengths!r}")
    try:
        colour_guidance = [float(g) for g in args.colour_guidance.split(",") if g]
    except ValueError:
        parser.error(f"--colour-guidance must be comma-separated numbers, got {args.colour_guidance!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    approximations = [a for a in args.approximations.split(",") if a]
    try:
        for name in approximations:
            named_settings(name)
    except ValueError as err:
        parser.error(f"--approximations: {err}")
    kinds = [k for k in args.approximation_kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        parser.error(f"--approximation-kinds: each of {', '.join(KINDS)}, got {args.approximation_kinds!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.approximations_only:
        if not approximations:
            parser.error("--approximations-only needs --approximations")
        report = run_approximations(args.model, args.images, strengths, args.guidance_scale, args.seed,
                                    approximations, kinds, args.approximation_steps)
        (out / "quality_approximations.json").write_text(json.dumps(report, indent=2))
        (out / "quality_approximations.md").write_text(approximations_markdown(report) + "\n")
        plot_approximations(report, out / "quality_approximations.png")
        print(approximations_markdown(report))
        return report
    report = run(args.model, args.images, strengths, args.steps, args.guidance_scale,
                 [p for p in args.precisions.split(",") if p], args.seed, colour_guidance,
                 approximations=approximations, approximation_steps=args.approximation_steps,
                 approximation_kinds=kinds)
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    (out / "quality.md").write_text(markdown(report))
    plot(report, out / "quality.png")
    if report["approximations"]:
        plot_approximations(report, out / "quality_approximations.png")
    print(f"wrote {out / 'quality.json'}, {out / 'quality.md'} and the plots in {out}")
    return report


if __name__ == "__main__":
    main()
