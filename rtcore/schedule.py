"""CPU-resident scheduler maths: the training schedule, the DDIM/CycleDiffusion step table and the DPM-Solver++
(2M) table.

Everything the denoising loop needs besides tensors — timesteps, √ᾱ, σ, c, whether a noise draw happens — is a
function of (scheduler config, N, strength, η) alone, so it is computed here once, in float64 on the CPU, before
the loop starts. The loop never reads a value back from the device.

ᾱ is computed exactly as diffusers' DDIMScheduler does (float32 betas, float32 cumprod), so the timesteps and
alphas equal diffusers' bit for bit; only the derived scalars are carried in float64.
"""

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True)
class DDIMConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    rescale_betas_zero_snr: bool = False
    thresholding: bool = False

    @classmethod
    def from_dict(cls, cfg):
        """Reads a diffusers ``scheduler_config.json`` dict (any scheduler class: SD checkpoints often ship PNDM's
        config; its beta schedule is what matters, and the DDIM defaults fill the rest as diffusers'
        ``DDIMScheduler.from_config`` would)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in cfg.items() if k in known}
        if kwargs.get("trained_betas") is not None:
            kwargs["trained_betas"] = tuple(kwargs["trained_betas"])
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self):
        if self.trained_betas is None and self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"scheduler config: beta_schedule={self.beta_schedule!r}; accepted: {BETA_SCHEDULES}")
        if self.timestep_spacing not in SPACINGS:
            raise ValueError(f"scheduler config: timestep_spacing={self.timestep_spacing!r}; accepted: {SPACINGS}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler config: prediction_type={self.prediction_type!r}; accepted: {PREDICTION_TYPES}")
        if not 0 <= self.steps_offset < self.num_train_timesteps:
            raise ValueError(f"scheduler config: steps_offset={self.steps_offset}; accepted: 0 <= steps_offset < "
                             f"num_train_timesteps ({self.num_train_timesteps})")
        if self.thresholding:
            raise ValueError("scheduler config: thresholding=True (dynamic thresholding) is for pixel-space models "
                             "and is not supported by CycleDiffusion; set it to false")


def _cosine_betas(n, max_beta=0.999):
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def _rescale_zero_terminal_snr(betas):
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt ** 2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(cfg: DDIMConfig) -> np.ndarray:
    """ᾱ_t for t = 0 … T−1, float32 values (as diffusers computes them) returned as float64."""
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        betas = torch.tensor(cfg.trained_betas, dtype=torch.float32)
    elif cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float32) ** 2
    else:
        betas = _cosine_betas(n)
    if cfg.rescale_betas_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return torch.cumprod(1.0 - betas, dim=0).numpy().astype(np.float64)


def ddim_timesteps(cfg: DDIMConfig, num_inference_steps: int) -> np.ndarray:
    """The N inference timesteps, high to low, as diffusers' ``DDIMScheduler.set_timesteps``."""
    n, T = num_inference_steps, cfg.num_train_timesteps
    if cfg.timestep_spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if cfg.timestep_spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + cfg.steps_offset
    return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1


def check_within_schedule(cfg: DDIMConfig, timesteps, num_inference_steps):
    """Refuses a step list that starts past the last trained timestep. SD's ``steps_offset=1`` puts the first
    "leading" timestep at T when N = T (DDIM at strength 1) or N >= T - 1 (DPM++): diffusers indexes past its
    table there, or interpolates to repeated σ and divides by zero."""
    if timesteps[0] >= cfg.num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} starts at timestep {timesteps[0]} "
                         f"(steps_offset={cfg.steps_offset}), past the last trained one "
                         f"({cfg.num_train_timesteps - 1}); use fewer steps (or, for an edit, a lower strength)")


def is_real(value):
    """A finite real number: a Python or numpy int or float, never a bool (``strength=True`` is not 1.0)."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def validate_steps(num_inference_steps, strength, eta, cfg: DDIMConfig):
    """Checks the loop parameters; returns K = int(N·s), the number of steps that will run."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= cfg.num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {cfg.num_train_timesteps}], got {num_inference_steps}")
    if not is_real(strength) or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    if not is_real(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    k = min(int(num_inference_steps * strength), num_inference_steps)
    if k == 0:
        raise ValueError(f"strength * num_inference_steps must reach at least one step: int({num_inference_steps} * "
                         f"{strength}) = 0; raise strength or num_inference_steps")
    return k


@dataclass(frozen=True)
class StepTable:
    """Per-step float64 scalars of one CycleDiffusion (or DDIM) run; arrays have one entry per step run.

    For step i, t → t' = t − T//N:
      a_t = √ᾱ_t, b_t = √(1−ᾱ_t), a_prev = √ᾱ_{t'} (final alpha when t' < 0),
      sigma = η·√((1−ᾱ_{t'})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t'}), c = √(1−ᾱ_{t'}−σ²),
      draws_noise: the source posterior draws fresh noise (False when t' ≤ 0, where y' = x0 exactly).
    """

    timesteps: np.ndarray
    a_t: np.ndarray
    b_t: np.ndarray
    a_prev: np.ndarray
    sigma: np.ndarray
    c: np.ndarray
    draws_noise: np.ndarray
    prediction_type: str
    clip_sample: float  # 0 when off, else the clamp range of x̂0

    def __len__(self):
        return len(self.timesteps)

    @property
    def a_start(self):
        """√ᾱ at the first timestep run: the forward noising z = a·x0 + b·ε."""
        return float(self.a_t[0])

    @property
    def b_start(self):
        return float(self.b_t[0])


def step_table(cfg: DDIMConfig, num_inference_steps: int, strength: float = 1.0, eta: float = 0.0) -> StepTable:
    k = validate_steps(num_inference_steps, strength, eta, cfg)
    acp = alphas_cumprod(cfg)
    final = 1.0 if cfg.set_alpha_to_one else acp[0]
    ts = ddim_timesteps(cfg, num_inference_steps)[num_inference_steps - k:]
    check_within_schedule(cfg, ts, num_inference_steps)  # the steps that run: N = T at strength 0.3 is fine
    prev = ts - cfg.num_train_timesteps // num_inference_steps
    alpha = acp[ts]
    alpha_prev = np.where(prev >= 0, acp[np.clip(prev, 0, None)], final)
    variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)
    sigma = eta * np.sqrt(variance)
    c_squared = 1 - alpha_prev - sigma ** 2
    if (c_squared < -1e-12).any():  # only reachable with eta > 1
        raise ValueError(f"eta={eta} is too large for this schedule: the DDIM direction coefficient "
                         "sqrt(1 - alpha_prev - sigma^2) would be imaginary; use eta in [0, 1]")
    return StepTable(
        timesteps=ts,
        a_t=np.sqrt(alpha),
        b_t=np.sqrt(1 - alpha),
        a_prev=np.sqrt(alpha_prev),
        sigma=sigma,
        c=np.sqrt(np.maximum(c_squared, 0.0)),
        draws_noise=prev > 0,
        prediction_type=cfg.prediction_type,
        clip_sample=float(cfg.clip_sample_range) if cfg.clip_sample else 0.0,
    )


# -- DPM-Solver++(2M) ---------------------------------------------------------------------------------------------
# The multistep solver of Lu et al. (arXiv 2211.01095) for text-to-image, matching diffusers'
# DPMSolverMultistepScheduler with its defaults: algorithm_type="dpmsolver++", solver_order=2,
# solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero", and the checkpoint's beta schedule,
# timestep spacing and steps_offset. Step i combines x̂0 of this step (D0) with the difference to the previous
# step's (D1):
#
#     x' = (σ_{i+1}/σ_i)·x + α_{i+1}(1 − e^{−h})·(D0 + ½·D1/r),   h = λ_{i+1} − λ_i,  r = (λ_i − λ_{i−1}) / h
#
# The first step, and the last (whose final σ is 0), are first order (D1 = 0): the last step returns x̂0.


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
