"""An independent float64 implementation of one CycleDiffusion run (docs/DESIGN.md §3), written the way the paper
and diffusers write it: z = (y' − μ_src)/σ, x' = μ_tgt + σ·z, with ᾱ computed in float64 from the betas (not through
rtcore.schedule). The oracle of tests/test_reference.py (one model, guidance) and tests/test_translate.py (two
models)."""

import numpy as np
import torch

from rtcore.schedule import ddim_timesteps


def alphas64(cfg):
    """ᾱ_t in float64 straight from the beta schedule."""
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "scaled_linear":
        betas = np.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n) ** 2
    elif cfg.beta_schedule == "linear":
        betas = np.linspace(cfg.beta_start, cfg.beta_end, n)
    else:
        raise NotImplementedError(f"the oracle computes scaled_linear and linear schedules, not {cfg.beta_schedule}")
    return np.cumprod(1 - betas)


def reference_cycle(source, target, cfg, x0, steps, strength, eta, seed, x0_from_draw=None):
    """The final target latents (or pixels) of a CycleDiffusion run. ``source(sample, t)`` and ``target(sample, t)``
    give the (guided) model outputs of the two trajectories: ε, or v for v-prediction. ``x0`` is the clean start, or
    with ``x0_from_draw`` only its shape: latent models draw the VAE sample first and make x0 from it."""
    acp = alphas64(cfg)
    final = 1.0 if cfg.set_alpha_to_one else acp[0]
    k = int(steps * strength)
    ts = ddim_timesteps(cfg, steps)[steps - k:]
    g = torch.Generator().manual_seed(seed)
    shape = x0.shape
    if x0_from_draw is not None:
        x0 = x0_from_draw(torch.randn(shape, generator=g).double())
    a1 = acp[ts[0]]
    y = x = np.sqrt(a1) * x0 + np.sqrt(1 - a1) * torch.randn(shape, generator=g).double()
    jump = cfg.num_train_timesteps // steps
    noises = [torch.randn(shape, generator=g).double() for t in ts if t - jump > 0]
    clip = cfg.clip_sample_range if cfg.clip_sample else None

    def mean(sample, out, a, ap, c):
        if cfg.prediction_type == "v_prediction":
            x0_hat, eps = np.sqrt(a) * sample - np.sqrt(1 - a) * out, np.sqrt(a) * out + np.sqrt(1 - a) * sample
        else:
            x0_hat, eps = (sample - np.sqrt(1 - a) * out) / np.sqrt(a), out
        if clip:
            x0_hat = x0_hat.clamp(-clip, clip)
        return np.sqrt(ap) * x0_hat + c * eps

    for t in ts:
        prev = t - jump
        a, ap = acp[t], (acp[prev] if prev >= 0 else final)
        sigma = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
        c = np.sqrt(1 - ap - sigma ** 2)
        y_next = x0 if prev <= 0 else np.sqrt(ap) * x0 + c * (y - np.sqrt(a) * x0) / np.sqrt(1 - a) + \
            sigma * noises.pop(0)
        mu_src, mu_tgt = mean(y, source(y, t), a, ap, c), mean(x, target(x, t), a, ap, c)
        if sigma > 0:
            x = mu_tgt + sigma * ((y_next - mu_src) / sigma)
        else:  # set_alpha_to_one's last step (the DDPM configs' default): the σ → 0 limit
            x = mu_tgt + (y_next - mu_src)
        y = y_next
    return x
