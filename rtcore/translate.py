"""Two-model CycleDiffusion: encode with model A's DPM-Encoder, decode with model B (unpaired image-to-image
translation, e.g. cat → dog), as in Wu & De la Torre's paper.

The source trajectory and its per-step residuals d = y' − μ_A(y) come from model A alone. The target follows
x' = μ_B(x) + d with model B. That is the same σ-free update as the one-model edit, with the target rows on
another network. Both models must share the forward process: the same scheduler config, and for latent models
the same VAE latent space.

- ``translate(source_pipe, target_pipe, ...)``: two latent Stable Diffusion pipelines (CycleDiffusion objects)
  that share a VAE. Prompts are optional (empty prompts give the unconditional models).
- ``PixelCycleDiffusion``: two pixel-space DDPMs (diffusers' UNet2DModel layout, e.g. google/ddpm-cat-256 →
  google/ddpm-dog-256). It has no VAE and no text, so each step runs one source row (model A) and one target row
  (model B): the loop's "cycle" mode with a UNet callable that sends each row to its model.
"""

import json
from pathlib import Path

import numpy as np
import torch

from .engines import resolve_device, resolve_dtype
from .images import postprocess, preprocess
from .pipeline import check_generator, check_output, stage
from .sampling import Rows, denoise, draw_noise, noisy_steps
from .schedule import DDIMConfig, step_table


def _same_schedule(a, b):
    return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("timesteps", "a_t", "a_prev", "sigma"))


def translate(source_pipe, target_pipe, image, source_prompt="", prompt="", strength=0.8, num_inference_steps=50,
              guidance_scale=1.0, source_guidance_scale=1.0, eta=0.1, generator=None, output_type="pil"):
    """Encodes ``image`` with ``source_pipe``'s UNet and decodes it with ``target_pipe``'s (latent models)."""
    a, b = source_pipe.engines, target_pipe.engines
    for attr in ("latent_channels", "vae_scale_factor", "scaling_factor"):
        if getattr(a, attr) != getattr(b, attr):
            raise ValueError(f"target_pipe: the two models do not share a latent space ({attr}: {getattr(a, attr)} "
                             f"vs {getattr(b, attr)}); two-model CycleDiffusion needs a shared VAE")
    if not _same_schedule(step_table(a.scheduler, num_inference_steps, strength, eta),
                          step_table(b.scheduler, num_inference_steps, strength, eta)):
        raise ValueError("target_pipe: the two models' scheduler configs give different step tables; "
                         "two-model CycleDiffusion needs one shared forward process")
    source = source_pipe.encode(image=image, source_prompt=source_prompt, strength=strength,
                                num_inference_steps=num_inference_steps, source_guidance_scale=source_guidance_scale,
                                eta=eta, generator=generator)
    return target_pipe.edit(source, prompt=prompt, guidance_scale=guidance_scale, output_type=output_type)


def _load_pixel_model(path, device, dtype):
    from rtcore.export.checkpoint import load_weights, resolve
    from rtcore.export.unet2d import UNet2DConfig, UNet2DModel

    root = resolve(path)
    for needed in ("unet/config.json", "scheduler/scheduler_config.json"):
        if not (root / needed).is_file():
            raise FileNotFoundError(f"{root} is not a pixel-space DDPM folder: missing {needed}")
    with torch.device("meta"):
        model = UNet2DModel(UNet2DConfig.from_dict(json.loads((root / "unet" / "config.json").read_text())))
    model.load_state_dict(load_weights(root / "unet", "diffusion_pytorch_model"), strict=True, assign=True)
    scheduler = DDIMConfig.from_dict(json.loads((root / "scheduler" / "scheduler_config.json").read_text()))
    return model.to(device, dtype).eval(), scheduler


class PixelCycleDiffusion:
    """CycleDiffusion between two pixel-space DDPMs that share a noise schedule."""

    def __init__(self, source_unet, target_unet, scheduler: DDIMConfig, device, dtype, scale_factor=1):
        self.source_unet, self.target_unet = source_unet, target_unet
        self.scheduler, self.device, self.dtype, self.scale_factor = scheduler, device, dtype, scale_factor

    @classmethod
    def from_pretrained(cls, source, target, device="cpu", dtype=torch.float32):
        device, dtype = resolve_device(device), resolve_dtype(dtype)
        source_unet, source_schedule = _load_pixel_model(source, device, dtype)
        target_unet, target_schedule = _load_pixel_model(target, device, dtype)
        if source_schedule != target_schedule:
            raise ValueError(f"target {target}: its scheduler config differs from the source model's; two-model "
                             "CycleDiffusion needs one shared forward process")
        levels = len(source_unet.config.block_out_channels) - 1
        return cls(source_unet, target_unet, source_schedule, device, dtype, scale_factor=2 ** levels)

    def _unet(self, sample, timestep, context):
        """The rows of one step, [y, x] (Rows("cycle") without guidance): y to model A, x to model B; no text."""
        y, x = sample.chunk(2)
        return torch.cat([self.source_unet(y, timestep), self.target_unet(x, timestep)])

    def __call__(self, image, strength=0.8, num_inference_steps=100, eta=0.1, generator=None, output_type="pil"):
        output_type = check_output(output_type, True, None, 1)
        table = step_table(self.scheduler, num_inference_steps, strength, eta)
        x0 = preprocess(image, self.scale_factor).to(self.device, torch.float32)
        n = x0.shape[0]
        check_generator(generator, n)
        draws = draw_noise(generator, tuple(x0.shape), 1 + len(noisy_steps(table))).to(self.device)
        z = table.a_start * x0 + table.b_start * draws[0]
        timings = {}
        with stage(timings, "denoise", self.device), torch.inference_mode():
            x, _ = denoise(self._unet, table, Rows("cycle", 1.0, 1.0), z, None, self.dtype, x0=x0,
                           step_noise=draws[1:])
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"the translation produced NaN/inf pixels ({self.dtype})")
        return x if output_type == "latent" else postprocess(x, output_type)


def is_pixel_model(path):
    """True for a diffusers folder whose unet/config.json is a UNet2DModel (no text conditioning)."""
    config = Path(path) / "unet" / "config.json"
    return config.is_file() and "cross_attention_dim" not in json.loads(config.read_text())
