"""DPM-Solver++(2M), the multistep solver of Lu et al. (arXiv 2211.01095), for text-to-image, with all of its
scheduler maths in one float64 table on the CPU.

It matches diffusers' DPMSolverMultistepScheduler with the settings that diffusers uses by default:
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True and
final_sigmas_type="zero". The config is the checkpoint's own, read with ``DPMSolverMultistepScheduler.from_config``:
the beta schedule, the timestep spacing and steps_offset. The model output is converted to x̂0 (data prediction).
Step i combines x̂0 of this step (D0) with the difference to the previous step's (D1):

    x' = (σ_{i+1}/σ_i)·x + α_{i+1}(1 − e^{−h})·(D0 + ½·D1/r),   h = λ_{i+1} − λ_i,  r = (λ_i − λ_{i−1}) / h

The first step, and the last (whose final σ is 0), are first order (D1 = 0). The last step therefore returns x̂0.
"""

from dataclasses import dataclass

import numpy as np
import torch

from .cycle import split_prediction
from .schedule import DDIMConfig, alphas_cumprod, check_within_schedule, validate_steps


@dataclass(frozen=True)
class DPMTable:
    timesteps: np.ndarray  # (N,) int64
    alpha: np.ndarray  # (N,) α_i = 1/√(σ_i²+1) of the current step: x̂0 conversion
    sigma: np.ndarray  # (N,) σ_i·α_i
    x_coef: np.ndarray  # (N,) σ_{i+1}/σ_i (in α-σ form)
    d0_coef: np.ndarray  # (N,) α_{i+1}(1 − e^{−h})
    d1_coef: np.ndarray  # (N,) ½·α_{i+1}(1 − e^{−h})/r, 0 on first-order steps
    prediction_type: str


def dpm_timesteps(cfg: DDIMConfig, n):
    """diffusers' DPMSolverMultistepScheduler.set_timesteps (no clipping of λ): N timesteps, high to low."""
    last = cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if cfg.timestep_spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
    return np.arange(last, 0, -cfg.num_train_timesteps / n).round().copy().astype(np.int64) - 1


def dpm_table(cfg: DDIMConfig, num_inference_steps) -> DPMTable:
    validate_steps(num_inference_steps, 1.0, 0.0, cfg)
    acp = alphas_cumprod(cfg)
    ts = dpm_timesteps(cfg, num_inference_steps)
    check_within_schedule(cfg, ts, num_inference_steps)
    all_sigmas = np.sqrt((1 - acp) / acp).astype(np.float32)  # diffusers keeps these in float32
    sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    sig = np.concatenate([sig, [0.0]]).astype(np.float32).astype(np.float64)
    alpha = 1 / np.sqrt(sig ** 2 + 1)
    sigma = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)  # +inf at the final σ = 0
    n = num_inference_steps
    h = lam[1:] - lam[:-1]
    decay = -np.expm1(-h)  # 1 − e^{−h}; 1 where h = ∞
    x_coef = sigma[1:] / sigma[:-1]
    d0 = alpha[1:] * decay
    d1 = np.zeros(n)
    for i in range(1, n):
        if i < n - 1:  # the first and the last step (final σ = 0) are first order
            r = (lam[i] - lam[i - 1]) / h[i]
            d1[i] = 0.5 * d0[i] / r
    return DPMTable(ts, alpha[:-1], sigma[:-1], x_coef, d0, d1, cfg.prediction_type)


def dpm_sample(unet, table: DPMTable, guidance_scale, x, context, dtype, callback=None, callback_steps=1):
    """DPM-Solver++(2M) from x (N, C, h, w) float32; context rows as in :func:`rtcore.generate.sample`."""
    cfg = guidance_scale > 1.0
    timesteps = torch.as_tensor(table.timesteps, device=x.device)
    previous = None
    for i in range(len(table.timesteps)):
        rows = [x, x] if cfg else [x]
        out = unet(torch.cat(rows).to(dtype), timesteps[i:i + 1], context).float().chunk(len(rows))
        model_out = out[0] + guidance_scale * (out[1] - out[0]) if cfg else out[0]
        x0, _ = split_prediction(x, model_out, float(table.alpha[i]), float(table.sigma[i]), table.prediction_type, 0)
        update = float(table.d0_coef[i]) * x0
        if table.d1_coef[i]:
            update = update + float(table.d1_coef[i]) * (x0 - previous)
        x = float(table.x_coef[i]) * x + update
        previous = x0
        if callback is not None and i % callback_steps == 0:
            callback(i, int(table.timesteps[i]), x)
    return x
