"""The sampling core (docs/DESIGN.md §3): what every sampler in rtcore shares, written once.

- :func:`draw_noise`: every random draw of a run, made up front on the CPU in diffusers' order;
- :func:`split_prediction`, :func:`ddim_mean`, :func:`guide`: a model output → (x̂0, ε) for each prediction type,
  the DDIM mean μ = a'·x̂0 + c·ε, classifier-free guidance;
- :class:`Rows`: the UNet rows of one step and their text embeddings, for an explicit mode;
- :func:`denoise`: the one denoising loop, for every mode (the table below).

Per step t → t' with the scalars of a :class:`~rtcore.schedule.StepTable` (a = √ᾱ_t, b = √(1−ᾱ_t),
a' = √ᾱ_{t'}, σ, c), CycleDiffusion's two trajectories are

    source posterior   y' = a'·x0 + c·(y − a·x0)/b + σ·n          (y' = x0 when t' ≤ 0)
    source mean        μ_src = a'·x̂0(y, ε_src) + c·ε_src
    target mean        μ_tgt = a'·x̂0(x, ε_tgt) + c·ε_tgt
    target update      x' = μ_tgt + (y' − μ_src)

diffusers writes the last line as x' = μ_tgt + σ·z with z = (y' − μ_src)/σ; σ cancels, so this form has no division
and stays finite at σ = 0 (η = 0, or the last step with ``set_alpha_to_one``). The residual d = y' − μ_src depends
only on the source, which is what lets one encoded source serve many target prompts. Plain DDIM is the target
update with d = σ·n (a fresh draw), and DPM-Solver++(2M) replaces the DDIM mean by its multistep update.

| mode     | rows per item      | target update                      | used by                                   |
|----------|--------------------|------------------------------------|-------------------------------------------|
| "cycle"  | source + target    | x' = μ_tgt + (y' − μ_src)          | CycleDiffusion.__call__, pixel translation |
| "source" | source             | none: records y' − μ_src per step  | CycleDiffusion.encode                     |
| "target" | target             | x' = μ_tgt + recorded residual     | CycleDiffusion.edit, two-model translate  |
| "ddim"   | target             | x' = μ_tgt (+ σ·n when η > 0)      | text_to_image (ddim), img2img (SDEdit)    |
| "dpm++"  | target             | DPM-Solver++(2M) on x̂0            | text_to_image (dpm++2m)                   |

All state (x, y, x0) is kept in float32 whatever the engine dtype; only the UNet input is cast. Every scalar comes
from the CPU tables: nothing is read back from the device.
"""

from dataclasses import dataclass

import torch

from .approximations import EXACT
from .schedule import DPMTable, StepTable

MODES = ("cycle", "source", "target", "ddim", "dpm++")  # "source"/"target": the two halves of an edit, apart


# -- random draws ------------------------------------------------------------------------------------------------


def draw_noise(generator, shape, count, images=None):
    """``count`` standard normal draws of ``shape`` (N, C, h, w), in order on the CPU: a float32 tensor
    (count, N, C, h, w).

    One generator (or None: torch's global one) draws each tensor for the whole batch; with ``images`` the first
    draw is made for that many images only and repeated over their N / images items (diffusers draws the VAE sample
    per image, everything after it per item). A list of generators (one per item): each item draws its own
    sequence from its own generator, so each item equals that item run alone.
    """
    if count == 0:
        return torch.empty((0, *shape))
    if isinstance(generator, (list, tuple)):
        per_item = [torch.stack([torch.randn((1, *shape[1:]), generator=g) for _ in range(count)]) for g in generator]
        return torch.cat(per_item, dim=1)
    draws = []
    for k in range(count):
        if k == 0 and images is not None:
            first = torch.randn((images, *shape[1:]), generator=generator)
            draws.append(first.repeat_interleave(shape[0] // images, dim=0))
        else:
            draws.append(torch.randn(shape, generator=generator))
    return torch.stack(draws)


# -- the per-step maths ------------------------------------------------------------------------------------------


def split_prediction(sample, model_out, a, b, prediction_type, clip):
    """Model output → (x̂0, ε) for ε-, v- or x0-prediction, with sample = a·x0 + b·ε (diffusers' CycleDiffusion
    assumes ε for the source). ``clip`` > 0 clamps x̂0 to [−clip, clip]."""
    if prediction_type == "epsilon":
        x0, eps = (sample - b * model_out) / a, model_out
    elif prediction_type == "v_prediction":
        x0, eps = a * sample - b * model_out, a * model_out + b * sample
    else:  # "sample"
        x0, eps = model_out, (sample - a * model_out) / b
    if clip:
        x0 = x0.clamp(-clip, clip)
    return x0, eps


def guide(uncond, cond, scale):
    """Classifier-free guidance: the unconditional output moved ``scale`` times toward the conditional one."""
    return uncond + scale * (cond - uncond)


def ddim_mean(table: StepTable, i, sample, model_out):
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


def dpm_step(table: DPMTable, i, x, model_out, previous_x0):
    """DPM-Solver++(2M) step i: x' = (σ'/σ)·x + d0·x̂0 + d1·(x̂0 − x̂0_prev), with the coefficients of
    :func:`rtcore.schedule.dpm_table` (d1 = 0 on first-order steps). Returns (x', x̂0)."""
    x0, _ = split_prediction(x, model_out, float(table.alpha[i]), float(table.sigma[i]), table.prediction_type, 0)
    update = float(table.d0_coef[i]) * x0
    if table.d1_coef[i]:
        update = update + float(table.d1_coef[i]) * (x0 - previous_x0)
    return float(table.x_coef[i]) * x + update, x0


# -- the UNet rows of a step -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """Which UNet rows one step runs, per item and in this order: the source trajectory's [y∅ if source_cfg] + [y],
    then the target's [x∅ if target_cfg] + [x]. Each row is a batch of N items.

    ``mode`` (see the module table) says which trajectories run. Guidance is on for the target when
    guidance_scale > 1 (as in diffusers) and for the source when source_guidance_scale ≠ 1, so an edit at w_s = 1
    runs 3 rows (y, x∅, x), not diffusers' 4.
    """

    mode: str
    guidance_scale: float = 7.5
    source_guidance_scale: float = 1.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def source(self):
        return self.mode in ("cycle", "source")

    @property
    def target(self):
        return self.mode != "source"

    @property
    def source_cfg(self):
        return self.source and self.source_guidance_scale != 1.0

    @property
    def target_cfg(self):
        return self.target and self.guidance_scale > 1.0

    @property
    def per_item(self):
        return (1 + self.source_cfg) * self.source + (1 + self.target_cfg) * self.target

    def batch(self, y, x):
        """The UNet input of one step from the source point y and the target point x (each (N, C, h, w))."""
        return torch.cat([y] * ((1 + self.source_cfg) * self.source) + [x] * ((1 + self.target_cfg) * self.target))

    def guided(self, out):
        """The UNet output of one step (per_item·N rows) → (guided source output, guided target output); None for a
        trajectory that does not run."""
        out = out.chunk(self.per_item)
        source = target = None
        if self.source:
            source = guide(out[0], out[1], self.source_guidance_scale) if self.source_cfg else out[0]
            out = out[1 + self.source_cfg:]
        if self.target:
            target = guide(out[0], out[1], self.guidance_scale) if self.target_cfg else out[0]
        return source, target

    def unguided(self):
        """The same trajectories without classifier-free guidance: conditional rows only."""
        return Rows(self.mode, 1.0, 1.0)

    def conditional(self, tensor):
        """``tensor``, laid out by these rows (per_item blocks of N), cut to the blocks of :meth:`unguided`."""
        keep = ([int(self.source_cfg)] if self.source else []) + \
            ([(1 + self.source_cfg) * self.source + int(self.target_cfg)] if self.target else [])
        if len(keep) == self.per_item:
            return tensor
        blocks = tensor.chunk(self.per_item)  # views and one cat: no index tensor to copy in from the host
        return torch.cat([blocks[k] for k in keep])

    def context(self, embed, sources=(), targets=(), negatives=None):
        """The text embeddings of every row, in row order: ``embed`` maps a prompt to its embedding
        (:func:`rtcore.prompts.encode_prompts`); ``sources``/``targets`` hold one prompt per item; unconditional
        target rows use ``negatives`` (one per item; the empty prompt by default), unconditional source rows the
        empty prompt."""
        rows = []
        if self.source:
            rows += [embed[""]] * len(sources) if self.source_cfg else []
            rows += [embed[p] for p in sources]
        if self.target:
            rows += [embed[p] for p in (negatives or [""] * len(targets))] if self.target_cfg else []
            rows += [embed[p] for p in targets]
        return torch.stack(rows)


# -- the loop ----------------------------------------------------------------------------------------------------


def check_table(table, mode):
    """Every mode but "dpm++" steps by a DDIM :class:`~rtcore.schedule.StepTable`; "dpm++" by a
    :class:`~rtcore.schedule.DPMTable`. A mismatch is named here, not an AttributeError deep in the loop."""
    wanted = DPMTable if mode == "dpm++" else StepTable
    if not isinstance(table, wanted):
        raise ValueError(f"table: mode {mode!r} steps by a {wanted.__name__}, got a {type(table).__name__} "
                         f"(schedule.{'dpm_table' if wanted is DPMTable else 'step_table'} makes the right one)")


def denoise(unet, table, rows: Rows, z, context, dtype, *, x0=None, step_noise=None, residuals=None, callback=None,
            callback_steps=1, timesteps=None, progress=None, approximations=EXACT, unet_parts=None):
    """Runs the denoising loop in ``rows.mode`` from the start ``z`` (N, C, h, w) float32. Returns (x, the
    residual per step in mode "source", else None).

    - "cycle", "source": ``x0`` (the clean source latents) and ``step_noise`` (one draw per
      :func:`noisy_steps` step) drive the source trajectory.
    - "target": ``residuals`` (one per step, from "source") drive the target.
    - "ddim": ``step_noise`` holds one draw per step when η > 0, else None.
    - "dpm++": ``table`` is a :class:`~rtcore.schedule.DPMTable`.

    ``context`` holds the text embeddings of every row (:meth:`Rows.context`), or None for a model without text.
    ``timesteps`` is the table's timesteps as a device tensor (made here when not given: CUDA graphs pass their own).
    ``progress``, when given, is called once per step after its UNet call (a progress bar's update), in every
    mode. ``approximations`` (rtcore.approximations): steps past its guidance cutoff run the conditional rows alone;
    with a cache interval above 1, ``unet_parts`` = (full, shallow) (``Engines.unet_full``, ``unet_shallow``) run its
    full and cached steps, each step's rows all alike.
    """
    check_table(table, rows.mode)
    if approximations.caches and unet_parts is None:
        raise ValueError("cache_interval > 1 needs a UNet with a shallow path (Engines.unet_full, unet_shallow)")
    if timesteps is None:
        timesteps = torch.as_tensor(table.timesteps, device=z.device)
    noise_at = {i: k for k, i in enumerate(noisy_steps(table))} if rows.source else {}
    recorded = [] if rows.mode == "source" else None
    x = y = z
    previous_x0 = None  # dpm++: x̂0 of the previous step
    steps = len(table.timesteps)
    plain = rows.unguided() if approximations.guidance_cutoff < 1 else rows  # past the cutoff
    plain_context = rows.conditional(context) if plain is not rows and context is not None else context
    deep = deep_rows = None  # feature caching: the last full step's deep features, and their rows
    for i in range(steps):
        step_rows = rows if approximations.guided_step(i, steps) else plain
        step_context = context if step_rows is rows else plain_context
        sample, t = step_rows.batch(y, x).to(dtype), timesteps[i:i + 1]
        if not approximations.caches:
            out = unet(sample, t, step_context)
        elif approximations.full_step(i):
            out, deep = unet_parts[0](sample, t, step_context)
            deep_rows = step_rows
        else:
            if deep_rows is not step_rows:  # the cutoff fell between the full step and this one
                deep, deep_rows = rows.conditional(deep), step_rows
            out = unet_parts[1](sample, t, step_context, deep)
        out = out.float()
        if progress is not None:
            progress()
        out_src, out_tgt = step_rows.guided(out)
        if rows.source:
            y_next = source_posterior(table, i, y, x0, step_noise[noise_at[i]] if i in noise_at else None)
            residual = y_next - ddim_mean(table, i, y, out_src)
            y = y_next
            if recorded is not None:
                recorded.append(residual)
        elif rows.mode == "target":
            residual = residuals[i]
        elif rows.mode == "ddim" and step_noise is not None:
            residual = float(table.sigma[i]) * step_noise[i]
        else:
            residual = None
        if not rows.target:
            continue
        if rows.mode == "dpm++":
            x, previous_x0 = dpm_step(table, i, x, out_tgt, previous_x0)
        else:
            x = ddim_mean(table, i, x, out_tgt)
            if residual is not None:
                x = x + residual
        if callback is not None and i % callback_steps == 0:
            callback(i, int(table.timesteps[i]), x)
    return x, recorded
