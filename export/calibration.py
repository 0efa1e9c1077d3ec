"""UNet inputs like the ones an edit feeds it: the calibration set of static int8 quantization.

Static quantization fixes each activation's int8 range ahead of time, so the ranges must come from the inputs the
engine will see. A CycleDiffusion edit calls the UNet on three rows per step, at the engine's size: the source
latents noised to step t (y_src, under the source prompt), and the target latents under the empty and the target
prompt (x∅, x_tgt). In the DPM-Encoder the source row is exactly q(z_t | z_0) and the target rows start from it,
so this module draws z_t = √ᾱ_t·z_0 + √(1-ᾱ_t)·ε from VAE-encoded images at timesteps spread over the schedule,
with (source prompt, "", target prompt) contexts from the checkpoint's own text encoder.

The images: the caller's own (a production service should pass photos like its users'), or by default scenes of
the shapes world (rtcore.shapes, from the training seed range, never the held-out one) resized to the engine's
size, captioned by the world's captions, each edited to another scene's caption.
"""

import numpy as np
import torch

from rtcore import shapes
from rtcore.images import preprocess
from rtcore.prompts import tokenize
from rtcore.schedule import DDIMConfig, alphas_cumprod


def default_images(n, seed=0):
    """n shapes-world scenes (training seeds) as PIL images, with their captions."""
    scenes = [shapes.scene(s) for s in shapes.TRAIN_SEEDS[seed * n:(seed + 1) * n]]
    return [shapes.image(s) for s in scenes], [s.caption for s in scenes]


@torch.no_grad()
def shallow_calibration_set(checkpoint, samples):
    """The shallow UNet's calibration set (feature caching): each UNet sample with the deep features the full
    UNet computes from it, which is what a cached step feeds the shallow graph (from an earlier step's inputs)."""
    unet = checkpoint.unet
    out = []
    for s in samples:
        inputs = [torch.from_numpy(s[k]).to(next(unet.parameters()).dtype if k != "timestep" else torch.int64)
                  for k in ("sample", "timestep", "encoder_hidden_states")]
        _, deep = unet.forward_full(*inputs)
        out.append({**s, "deep": deep.float().numpy()})
    return out


@torch.no_grad()
def unet_calibration_set(checkpoint, height, width, samples=16, images=None, prompts=None, seed=0):
    """``samples`` UNet input dicts (numpy, the engine contract's names) of three rows each, at height × width.
    ``images``/``prompts``: the calibration photos and their captions (default: shapes scenes and their captions);
    each sample's target prompt is the next image's caption."""
    if images is None:
        images, prompts = default_images(min(samples, 8), seed)
    if prompts is None or len(prompts) != len(images):
        raise ValueError("calibration prompts: pass one caption per calibration image")
    generator = torch.Generator().manual_seed(seed)
    vae, scale = checkpoint.vae, checkpoint.vae.config.scaling_factor
    pixels = torch.cat([torch.nn.functional.interpolate(preprocess(im, name="calibration image"), size=(height, width),
                                                        mode="bilinear", antialias=True) for im in images])
    latents = []
    for x in pixels.split(4):
        mean, std = vae.encode(x.float())
        latents.append(scale * (mean + std * torch.randn(mean.shape, generator=generator)))
    latents = torch.cat(latents)
    ids = tokenize(checkpoint.tokenizer, [*prompts, ""])
    contexts = checkpoint.text_encoder(ids).last_hidden_state.float()
    empty = contexts[-1]
    acp = torch.from_numpy(alphas_cumprod(DDIMConfig.from_dict(checkpoint.scheduler_config))).float()
    n = len(images)
    # timesteps evenly over the schedule (an edit of strength s visits [0, s·T)), in a seeded order
    timesteps = torch.linspace(0, len(acp) - 1, samples).round().long()[torch.randperm(samples, generator=generator)]
    out = []
    for k, t in enumerate(timesteps.tolist()):
        z0 = latents[k % n]
        a = acp[t]
        y, x = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn((2, *z0.shape), generator=generator)
        # y_src, x∅, x_tgt: an edit's x starts at y and drifts from it, so x is the same noising, another draw
        rows = torch.stack([y, x, x])
        context = torch.stack([contexts[k % n], empty, contexts[(k + 1) % n]])
        out.append({"sample": rows.numpy(), "timestep": np.array([t], dtype=np.int64),
                    "encoder_hidden_states": context.numpy()})
    return out
