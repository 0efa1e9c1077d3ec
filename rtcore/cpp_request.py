"""The C++ runner's request format (cmake/): what a C++ service needs to run a CycleDiffusion edit on the
AOTInductor packages of a ``compile`` engine directory, without Python or a JSON parser.

A request directory holds plain files, all little-endian and C-ordered:

    meta.txt        N C h w S guidance_scale prediction_type
    input_ids.i64   (3, 77) token ids of the UNet rows' prompts: [source, "" (unconditional), target]
    x0.f32          (N, C, h, w) scaled clean latents of the source image
    z.f32           (N, C, h, w) the noised start
    noise.f32       (S, N, C, h, w) the source posterior's draws, in step order
    step_table.txt  one line per step: t a_t b_t a_prev c sigma draws_noise

The engine directory's manifest carries the step table of the default edit (50 steps, strength 0.8, η 0.1).
``step_table.txt`` is its plain-text twin, one line per step. The C++ runner ``rtcore-run`` reads these files,
runs the text encoder and the 3-row UNet loop (w_s = 1), and writes the final latents as raw float32.
"""

from pathlib import Path

import numpy as np
import torch

from .approximations import Approximations
from .images import preprocess
from .prompts import tokenize
from .schedule import StepTable

DEFAULT_EDIT = dict(num_inference_steps=50, strength=0.8, eta=0.1)
CPP_PREDICTION_TYPES = ("epsilon", "v_prediction")  # what cmake/src/rtcore_embed.cpp's split() computes


def table_rows(table: StepTable):
    """One row per step, as the C++ runner reads them: [t, a_t, b_t, a_prev, c, sigma, draws_noise] in Python
    types."""
    return [[int(t), float(a), float(b), float(ap), float(c), float(s), bool(d)] for t, a, b, ap, c, s, d in
            zip(table.timesteps, table.a_t, table.b_t, table.a_prev, table.c, table.sigma, table.draws_noise)]


def table_text(table: StepTable):
    """``step_table.txt``: the rows one per line, floats in full (repr) precision, draws_noise as 0/1."""
    return "".join(f"{t} {a!r} {b!r} {ap!r} {c!r} {s!r} {int(d)}\n" for t, a, b, ap, c, s, d in table_rows(table))


def table_json(table: StepTable, settings):
    return dict(settings, prediction_type=table.prediction_type, rows=table_rows(table))


def write_request(pipe, out_dir, image, source_prompt, prompt, num_inference_steps=50, strength=0.8,
                  guidance_scale=7.5, eta=0.1, generator=None, cache_interval=1, guidance_cutoff=1.0):
    """Writes the request files for one image (the same draws as ``pipe(...)`` with the same generator)."""
    if guidance_scale <= 1.0:
        raise ValueError("guidance_scale must be > 1 for the C++ runner's 3-row loop")
    if not Approximations(cache_interval, guidance_cutoff).exact:
        raise ValueError(f"cache_interval={cache_interval}, guidance_cutoff={guidance_cutoff}: the C++ runner runs the "
                         "exact loop only (feature caching and guidance cutoff are the Python runtime's); pass "
                         "cache_interval=1, guidance_cutoff=1.0, or run the edit from Python")
    cfg = pipe.engines.scheduler
    if cfg.clip_sample or cfg.prediction_type not in CPP_PREDICTION_TYPES:
        # rtcore-run implements the x̂0/ε split for these and no clamp: anything else would compute wrong latents
        raise ValueError(f"scheduler config: the C++ runner supports prediction_type {CPP_PREDICTION_TYPES} without "
                         f"clip_sample; this checkpoint has prediction_type={cfg.prediction_type!r}, "
                         f"clip_sample={cfg.clip_sample}: run it from Python")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = preprocess(image, pipe.engines.vae_scale_factor)
    if pixels.shape[0] != 1:
        raise ValueError("image: the C++ request format holds one image")
    table, x0, z, step_noise, _ = pipe.prepare_source(
        pixels, [source_prompt], batch=1, strength=strength, num_inference_steps=num_inference_steps, eta=eta,
        num_images_per_prompt=1, generator=generator, timings={})
    ids = tokenize(pipe.engines.tokenizer, [source_prompt, "", prompt]).to(torch.int64)
    n, c, h, w = z.shape
    (out / "meta.txt").write_text(f"{n} {c} {h} {w} {step_noise.shape[0]} {guidance_scale!r} "
                                  f"{table.prediction_type}\n")
    for name, tensor, dtype in (("input_ids.i64", ids, np.int64), ("x0.f32", x0, np.float32),
                                ("z.f32", z, np.float32), ("noise.f32", step_noise, np.float32)):
        (out / name).write_bytes(np.ascontiguousarray(tensor.cpu().numpy().astype(dtype)).tobytes())
    (out / "step_table.txt").write_text(table_text(table))
    return out


def read_latents(path, shape):
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(shape))
