"""Opt-in approximations that cut the UNet work of a denoising loop, and the named presets that choose them.

- **Feature caching** (DeepCache, Ma et al., CVPR 2024): every ``cache_interval``-th step (the first included) runs
  the whole UNet and keeps its deep features; the steps between run only its shallow path on them
  (export/unet.py: ``UNet.forward_shallow``). 1: off.
- **Guidance cutoff** (diffusers' ``SDCFGCutoffCallback``): of the K steps a loop runs, those after step
  ``int(K·guidance_cutoff)`` (counting from 0) run without classifier-free guidance, so without their unconditional
  rows. 1.0: off.

Both apply to every row of a step alike, the source's and the target's, so an identity edit (target prompt = source
prompt at equal guidance) still reconstructs the source. The defaults are exact: with them every output is what it
was without this module. docs/QUALITY.md measures what each setting costs in edit quality, and
docs/BENCHMARKS.md what it saves in time, which is how the "fast" preset was chosen.
"""

import math
from dataclasses import dataclass

import numpy as np

# Named settings for the CLI (--preset), the services (the "preset" form field) and rtcore bench (--speed). "fast":
# 2.8x fewer UNet FLOPs in a default SD 1.5 edit at 512²; on the shipped model its colour and shape edits stay
# within 2 points of exact success at every strength but one (shape edits at strength 0.4: 89% against 95%), and
# keep what should not change better (docs/QUALITY.md). No setting with 2.5x fewer FLOPs did better there.
PRESETS = {
    "exact": {"cache_interval": 1, "guidance_cutoff": 1.0},
    "fast": {"cache_interval": 5, "guidance_cutoff": 0.8},
}


@dataclass(frozen=True)
class Approximations:
    cache_interval: int = 1
    guidance_cutoff: float = 1.0

    def __post_init__(self):
        interval = self.cache_interval
        if isinstance(interval, (bool, np.bool_)) or not isinstance(interval, (int, np.integer)) or interval < 1:
            raise ValueError(f"cache_interval must be an int >= 1 (1: no feature caching), got {interval!r}")
        cutoff = self.guidance_cutoff
        if (isinstance(cutoff, (bool, np.bool_)) or not isinstance(cutoff, (int, float, np.integer, np.floating))
                or not math.isfinite(cutoff) or not 0.0 <= cutoff <= 1.0):
            raise ValueError(f"guidance_cutoff must be a number in [0, 1] (1: guidance on every step), got "
                             f"{cutoff!r}")

    @property
    def exact(self):
        return self.cache_interval == 1 and self.guidance_cutoff >= 1.0

    @property
    def caches(self):
        return self.cache_interval > 1

    def full_step(self, i):
        """Whether step i runs the whole UNet (else the shallow path on the last full step's deep features)."""
        return i % self.cache_interval == 0

    def guided_step(self, i, steps):
        """Whether step i of ``steps`` runs classifier-free guidance (diffusers' cutoff: after step int(K·c), off)."""
        return i <= int(steps * self.guidance_cutoff)


EXACT = Approximations()


def from_preset(name):
    """The call arguments of a named preset (a copy)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return dict(PRESETS[name])


def named_settings(name):
    """The call arguments a setting's name stands for, checked: a preset ("fast"), "cacheN" (feature caching every
    N steps), "cutoffC" (guidance cutoff at C), or both joined by "+" ("cache4+cutoff0.8"). The benchmarks' names."""
    if name in PRESETS:
        return dict(PRESETS[name])
    settings = {}
    for part in name.split("+"):
        try:
            if part.startswith("cache"):
                settings["cache_interval"] = int(part[len("cache"):])
            elif part.startswith("cutoff"):
                settings["guidance_cutoff"] = float(part[len("cutoff"):])
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"approximation setting {name!r}: use a preset ({', '.join(PRESETS)}), cacheN, cutoffC, "
                             "or both joined by '+'") from None
    Approximations(**settings)  # refuses bad values by name
    return settings
