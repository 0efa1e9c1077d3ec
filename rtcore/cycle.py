"""The CycleDiffusion loop (docs/DESIGN.md §3): random draws, the σ-free update, and the denoising loop itself.

Per step t → t' with the scalars of a :class:`~rtcore.schedule.StepTable` (a = √ᾱ_t, b = √(1−ᾱ_t),
a' = √ᾱ_{t'}, σ, c):

    source posterior   y' = a'·x0 + c·(y − a·x0)/b + σ·n          (y' = x0 when t' ≤ 0)
    source mean        μ_src = a'·x̂0(y, ε_src) + c·ε_src
    target mean        μ_tgt = a'·x̂0(x, ε_tgt) + c·ε_tgt
    target update      x' = μ_tgt + (y' − μ_src)

diffusers writes the last line as x' = μ_tgt + σ·z with z = (y' − μ_src)/σ; σ cancels, so this form has no
division and stays finite at σ = 0 (η = 0, or the last step with ``set_alpha_to_one``). The residual
d = y' − μ_src depends only on the source, which is what lets one encoded source serve many target prompts.

All state (x, y, x0) is kept in float32 whatever the engine dtype; only the UNet input is cast.
"""

from dataclasses import dataclass

import torch

from .schedule import StepTable


@dataclass(frozen=True)
class Guidance:
    """Which UNet rows a step needs. Rows per item: source [y∅ if source_cfg] + [y_src]; target [x∅ if target_cfg]
    + [x_tgt]. Classifier-free guidance is on for the target when guidance_scale > 1 (as in diffusers) and for the
    source when source_guidance_scale ≠ 1; w_s = 1 needs no unconditional source row (3 rows, not diffusers' 4)."""

    guidance_scale: float = 7.5
    source_guidance_scale: float = 1.0

    @property
    def target_cfg(self):
        return self.guidance_scale > 1.0

    @property
    def source_cfg(self):
        return self.source_guidance_scale != 1.0


def draw_noise(generator, num_images, num_per_image, latent_shape, num_step_draws):
    """All random draws of one run, made up front on the CPU in diffusers' order.

    One generator (or None: torch's global one): the VAE sample for all images at once, the forward noise for all
    items, then one draw for all items per noisy step. A list of generators (one per output item): the same
    sequence per item from its own generator, so each item equals that item edited alone.
    Returns float32 CPU tensors: vae_sample (N, C, h, w), forward_noise (N, C, h, w), step_noise (S, N, C, h, w).
    """
    n = num_images * num_per_image
    if isinstance(generator, (list, tuple)):
        per_item = []
        for g in generator:
            draws = [torch.randn((1, *latent_shape), generator=g) for _ in range(2 + num_step_draws)]
            per_item.append(torch.stack(draws))  # (2 + S, 1, C, h, w)
        draws = torch.cat(per_item, dim=1)
        return draws[0], draws[1], draws[2:]
    vae_sample = torch.randn((num_images, *latent_shape), generator=generator)
    vae_sample = vae_sample.repeat_interleave(num_per_image, dim=0)
    forward_noise = torch.randn((n, *latent_shape), generator=generator)
    step_noise = torch.stack([torch.randn((n, *latent_shape), generator=generator) for _ in range(num_step_draws)]) \
        if num_step_draws else torch.empty((0, n, *latent_shape))
    return vae_sample, forward_noise, step_noise


def split_prediction(sample, model_out, a, b, prediction_type, clip):
    """Model output → (x̂0, ε) for ε-, v- or x0-prediction (diffusers' CycleDiffusion assumes ε for the source)."""
    if prediction_type == "epsilon":
        x0, eps = (sample - b * model_out) / a, model_out
    elif prediction_type == "v_prediction":
        x0, eps = a * sample - b * model_out, a * model_out + b * sample
    else:  # "sample"
        x0, eps = model_out, (sample - a * model_out) / b
    if clip:
        x0 = x0.clamp(-clip, clip)
    return x0, eps


def step_mean(table: StepTable, i, sample, model_out):
    """μ = a'·x̂0 + c·ε: the deterministic part of the DDIM step from ``sample`` at step i."""
    a, b = float(table.a_t[i]), float(table.b_t[i])
    x0, eps = split_prediction(sample, model_out, a, b, table.prediction_type, table.clip_sample)
    return float(table.a_prev[i]) * x0 + float(table.c[i]) * eps


def source_posterior(table: StepTable, i, y, x0, noise):
    """y' ~ q(y_{t'} | y_t, x0): the source trajectory's next point (x0 itself when t' ≤ 0)."""
    if not table.draws_noise[i]:
        return x0
    a, b, a_prev, c = float(table.a_t[i]), float(table.b_t[i]), float(table.a_prev[i]), float(table.c[i])
    y_next = a_prev * x0 + (c / b) * (y - a * x0)
    if noise is not None:
        y_next = y_next + float(table.sigma[i]) * noise
    return y_next


def noisy_steps(table: StepTable):
    """Indices of the steps whose source posterior draws noise (t' > 0 and σ > 0), in order."""
    return [i for i in range(len(table)) if table.draws_noise[i] and table.sigma[i] > 0]


def _guided(uncond, cond, scale):
    return uncond + scale * (cond - uncond)


def denoise(unet, table: StepTable, guidance: Guidance, z, context, dtype, *, x0=None, step_noise=None,
            residuals=None, callback=None, callback_steps=1, timesteps=None):
    """Runs the loop. Two modes, chosen by what is given:

    - source known (``x0`` and ``step_noise`` given): the source rows run and each step's residual y' − μ_src is
      either used at once for the target (``context`` has target rows) or only recorded (encode).
    - ``residuals`` given (edit): only the target rows run, the residuals come from an earlier encode.

    ``context`` holds the text embeddings of every row, in row order (see :class:`Guidance`), already repeated per
    item. ``z`` (N, C, h, w) float32 is the noised start. ``timesteps`` is the table's timesteps as a device
    tensor (made here when not given). Returns (x, recorded residuals or None). Nothing is read back from the
    device: every scalar comes from the CPU table.
    """
    with_source = residuals is None
    n_src_rows = (2 if guidance.source_cfg else 1) if with_source else 0
    n_rows = context.shape[0] // z.shape[0]
    with_target = n_rows > n_src_rows
    noise_at = {i: k for k, i in enumerate(noisy_steps(table))} if with_source else {}
    if timesteps is None:
        timesteps = torch.as_tensor(table.timesteps, device=z.device)
    recorded = [] if with_source and not with_target else None
    x = y = z
    for i in range(len(table)):
        rows = [y] * n_src_rows + [x] * (n_rows - n_src_rows)
        out = unet(torch.cat(rows).to(dtype), timesteps[i:i + 1], context).float().chunk(n_rows)
        if with_source:
            eps_src = _guided(out[0], out[1], guidance.source_guidance_scale) if guidance.source_cfg else out[0]
            noise = step_noise[noise_at[i]] if i in noise_at else None
            y_next = source_posterior(table, i, y, x0, noise)
            residual = y_next - step_mean(table, i, y, eps_src)
            y = y_next
            if recorded is not None:
                recorded.append(residual)
        else:
            residual = residuals[i]
        if with_target:
            tgt = out[n_src_rows:]
            eps_tgt = _guided(tgt[0], tgt[1], guidance.guidance_scale) if guidance.target_cfg else tgt[0]
            x = step_mean(table, i, x, eps_tgt) + residual
            if callback is not None and i % callback_steps == 0:
                callback(i, int(table.timesteps[i]), x)
    return x, recorded
