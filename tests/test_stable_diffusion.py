"""Text-to-image and img2img on rtcore engines against diffusers' StableDiffusion pipelines with DDIM."""

import numpy as np
import pytest
import torch

from rtcore.demo import sample_image
from rtcore.stable_diffusion import StableDiffusion


@pytest.fixture(scope="module")
def sd(pipe):
    return StableDiffusion(pipe.engines)  # the same engines as the CycleDiffusion pipeline


@pytest.fixture(scope="module")
def oracles(tiny_sd1):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                  scheduler=DDIMScheduler.from_pretrained(tiny_sd1, subfolder="scheduler"))
    t2i = StableDiffusionPipeline.from_pretrained(tiny_sd1, **kwargs)
    i2i = StableDiffusionImg2ImgPipeline(**t2i.components)
    for p in (t2i, i2i):
        p.set_progress_bar_config(disable=True)
    return t2i, i2i


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds] if isinstance(seeds, list) else \
        torch.Generator().manual_seed(seeds)


@pytest.mark.parametrize("kwargs", [
    dict(num_inference_steps=10, guidance_scale=7.5, eta=0.0, seed=0),
    dict(num_inference_steps=8, guidance_scale=3.0, eta=0.7, seed=1, negative_prompt="blurry"),
    dict(num_inference_steps=6, guidance_scale=1.0, eta=0.0, seed=2, height=48, width=64),
    dict(num_inference_steps=5, guidance_scale=5.0, eta=0.3, seed=[3, 4], prompt=["a red car", "a dog"]),
])
def test_text_to_image_matches_diffusers(sd, oracles, kwargs):
    kwargs = dict(kwargs)
    seed = kwargs.pop("seed")
    kwargs.setdefault("prompt", "An astronaut riding a horse")
    kwargs.setdefault("height", 64)
    kwargs.setdefault("width", 64)
    ours = sd.text_to_image(generator=_gens(seed), output_type="np", **kwargs).images
    ref = oracles[0](generator=_gens(seed), output_type="np", **kwargs).images
    err = np.abs(ours - ref).max()
    print(f"text-to-image vs diffusers: {err:.2e}")
    assert ours.shape == ref.shape and err <= 1e-3 and ours.std() > 0.01


def test_text_to_image_defaults_to_the_unets_size_as_diffusers(sd, oracles):
    """No height/width: the UNet's sample size × the VAE's scale factor (the tiny model's 128², not SD's 512²)."""
    ours = sd.text_to_image("a", num_inference_steps=2, generator=_gens(0), output_type="np").images
    ref = oracles[0]("a", num_inference_steps=2, generator=_gens(0), output_type="np").images
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1e-3


@pytest.mark.parametrize("kwargs", [
    dict(num_inference_steps=10, strength=0.75, guidance_scale=7.5, eta=0.0, seed=0),
    dict(num_inference_steps=12, strength=1.0, guidance_scale=2.0, eta=1.0, seed=1, size=(64, 48)),
    dict(num_inference_steps=8, strength=0.5, guidance_scale=0.5, eta=0.2, seed=2),
])
def test_img2img_matches_diffusers(sd, oracles, kwargs):
    kwargs = dict(kwargs)
    seed, size = kwargs.pop("seed"), kwargs.pop("size", (64, 64))
    args = dict(prompt="An astronaut riding an elephant", image=sample_image(*size), output_type="np", **kwargs)
    ours = sd.img2img(generator=_gens(seed), **args).images
    ref = oracles[1](generator=_gens(seed), **args).images
    err = np.abs(ours - ref).max()
    print(f"img2img vs diffusers: {err:.2e}")
    assert ours.shape == ref.shape and err <= 1e-3


def test_img2img_batch_items_equal_items_alone(sd):
    images = [sample_image(64, 64), sample_image(64, 64).rotate(90)]
    args = dict(num_inference_steps=6, eta=0.5, output_type="np")
    batch = sd.img2img(["a red car", "a dog"], images, generator=_gens([5, 6]), **args).images
    for j, (prompt, image) in enumerate(zip(["a red car", "a dog"], images)):
        alone = sd.img2img(prompt, image, generator=_gens(5 + j), **args).images[0]
        assert np.abs(batch[j] - alone).max() <= 1e-3


@pytest.mark.parametrize("call,name", [
    (lambda sd: sd.text_to_image("a", height=50, width=64), "height"),
    (lambda sd: sd.text_to_image("a", height=64, width=64, num_inference_steps=0), "num_inference_steps"),
    (lambda sd: sd.text_to_image(["a", "b"], negative_prompt=["x", "y", "z"], height=64, width=64),
     "negative_prompt"),
    (lambda sd: sd.img2img("a", None), "image"),
    (lambda sd: sd.img2img("a", sample_image(64, 64), strength=0), "strength"),
    (lambda sd: sd.img2img("a", sample_image(64, 64), eta=-1), "eta"),
])
def test_bad_arguments(sd, call, name):
    with pytest.raises(ValueError, match=name):
        call(sd)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_dpm_solver_matches_diffusers(sd, oracles, tiny_sd1, spacing, steps):
    import dataclasses

    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from rtcore.stable_diffusion import StableDiffusion as SD

    engines = dataclasses.replace(sd.engines, scheduler=dataclasses.replace(sd.engines.scheduler,
                                                                            timestep_spacing=spacing))
    config = dict(oracles[0].scheduler.config, timestep_spacing=spacing)
    ref_pipe = StableDiffusionPipeline(**dict(oracles[0].components,
                                              scheduler=DPMSolverMultistepScheduler.from_config(config)))
    ref_pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="An astronaut riding a horse", height=64, width=64, num_inference_steps=steps,
                guidance_scale=5.0, output_type="np")
    ours = SD(engines).text_to_image(generator=_gens(0), scheduler="dpm++2m", **args).images
    ref = ref_pipe(generator=_gens(0), **args).images
    err = np.abs(ours - ref).max()
    print(f"dpm++2m ({spacing}, {steps} steps) vs diffusers: {err:.2e}")
    assert err <= 1e-3 and np.isfinite(ours).all()
