"""Measures that both the trainer of the shipped model (rtcore.export.train_shapes) and the benchmarks
(rtcore.bench) use, kept here so that the dependency runs one way: editing a benchmark cannot change how the
shipped model would be trained (docs/DESIGN.md §1)."""

import numpy as np


def psnr(got, want, peak=1.0):
    """PSNR in dB of ``got`` against ``want`` (numpy arrays or tensors) for signals of range ``peak``; inf if equal."""
    mse = float(((np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def colour_contrast(scene, recoloured, background):
    """Per scene, how far recolouring its object moves its latent, next to how far removing the object does
    (squared distances; latents (N, C, H, W) tensors). ``bench.quality.latent_change`` reports its square root;
    ``train_shapes --colour-contrast`` trains a VAE to keep it low. The first shipped VAE, trained without that, had
    about 0.7 on white and black backgrounds, where its colour edits took in place, and 1.7 on grey ones, where they
    did not (docs/QUALITY.md)."""
    scene, recoloured, background = (z.flatten(1) for z in (scene, recoloured, background))
    return (scene - recoloured).pow(2).sum(1) / (scene - background).pow(2).sum(1).clamp_min(1e-6)
