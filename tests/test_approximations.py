"""Fewer UNet FLOPs per edit, opt in (rtcore.approximations): feature caching (DeepCache) and guidance cutoff.

The shallow path reproduces the UNet from its own deep features; the guidance cutoff is diffusers'
SDCFGCutoffCallback, pixel for pixel; the loop runs the steps and rows the settings say; the identity edit still
reconstructs the source; the halves of an edit still make the whole; bad values are refused by name."""

import dataclasses

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion, StableDiffusion
from rtcore.approximations import PRESETS, Approximations, from_preset
from rtcore.demo import sample_image

EDIT = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=20, strength=0.8)


@pytest.mark.parametrize("kind", ["tiny_sd1", "tiny_sd2"])
def test_the_shallow_path_from_its_own_features_is_the_unet(kind, request):
    """forward_shallow on the deep features forward_full just made is the whole UNet again: the shallow path
    recomputes exactly what the cache point leaves out (SD 2's layout too: linear projections, head counts)."""
    from rtcore.export import load_checkpoint

    unet = load_checkpoint(request.getfixturevalue(kind)).unet
    sample, t = torch.randn(3, 4, 8, 6), torch.tensor([420])
    text = torch.randn(3, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        out, deep = unet.forward_full(sample, t, text)
        assert deep.shape == (3, unet.deep_channels, 8, 6)
        assert torch.equal(unet(sample, t, text), out)  # forward is forward_full's first output, op for op
        torch.testing.assert_close(unet.forward_shallow(sample, t, text, deep), out, rtol=0, atol=1e-6)
        other = unet.forward_full(sample, torch.tensor([900]), text)[1]  # another step's features: an approximation
        assert (unet.forward_shallow(sample, t, text, other) - out).abs().max() > 1e-3


class Spy:
    """Records the rows of every call to the engines' full and shallow UNet (which still run for real)."""

    def __init__(self, engines):
        self.calls = []
        self.engines = dataclasses.replace(engines, unet_full=self.wrap("full", engines.unet_full),
                                           unet_shallow=self.wrap("shallow", engines.unet_shallow),
                                           unet=self.wrap("exact", engines.unet))

    def wrap(self, name, fn):
        def call(sample, *args):
            self.calls.append((name, sample.shape[0]))
            return fn(sample, *args)

        return call


def test_the_loop_runs_the_steps_and_rows_the_settings_say(pipe, image):
    spy = Spy(pipe.engines)
    cycle = CycleDiffusion(spy.engines)
    cycle.set_progress_bar_config(disable=True)
    cycle(image=image, cache_interval=3, guidance_cutoff=0.4, **EDIT)  # 16 steps; cutoff after step int(6.4) = 6
    kinds = [name for name, _ in spy.calls]
    assert kinds == ["full" if i % 3 == 0 else "shallow" for i in range(16)]
    assert [rows for _, rows in spy.calls] == [3] * 7 + [2] * 9  # y·src, x·∅, x·tgt; then y·src, x·tgt
    spy.calls.clear()
    cycle(image=image, source_guidance_scale=2.0, guidance_cutoff=0.5, **EDIT)  # 4 rows, then 2: both ∅ rows go
    assert spy.calls == [("exact", 4)] * 9 + [("exact", 2)] * 7
    spy.calls.clear()
    cycle(image=image, **EDIT)
    assert spy.calls == [("exact", 3)] * 16  # the defaults: the exact UNet, every row, every step


def test_guidance_cutoff_is_diffusers_cfg_cutoff_callback(pipe, tiny_sd1):
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from diffusers.callbacks import SDCFGCutoffCallback

    kwargs = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                  scheduler=DDIMScheduler.from_pretrained(tiny_sd1, subfolder="scheduler"))
    t2i = StableDiffusionPipeline.from_pretrained(tiny_sd1, **kwargs)
    i2i = StableDiffusionImg2ImgPipeline(**t2i.components)
    sd = StableDiffusion(pipe.engines)
    for p in (t2i, i2i, sd):
        p.set_progress_bar_config(disable=True)
    args = dict(prompt="An astronaut riding a horse", num_inference_steps=10, guidance_scale=7.5, output_type="np")
    cut = {}
    for ratio in (0.0, 0.4, 0.75):
        ours = cut[ratio] = sd.text_to_image(height=64, width=64, guidance_cutoff=ratio,
                                             generator=torch.Generator().manual_seed(0), **args).images
        ref = t2i(height=64, width=64, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=ratio),
                  generator=torch.Generator().manual_seed(0), **args).images
        assert np.abs(ours - ref).max() <= 1e-3, ratio
        image = sample_image(64, 64)
        ours = sd.img2img(image=image, strength=0.7, guidance_cutoff=ratio, generator=torch.Generator().manual_seed(1),
                          **args).images
        ref = i2i(image=image, strength=0.7, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=ratio),
                  generator=torch.Generator().manual_seed(1), **args).images
        assert np.abs(ours - ref).max() <= 1e-3, ratio
    exact = sd.text_to_image(height=64, width=64, generator=torch.Generator().manual_seed(0), **args).images
    # the cutoff changes the image by more than the tolerance of the comparisons above: they mean something
    assert np.abs(exact - cut[0.0]).max() > 3e-3 and np.abs(exact - cut[0.4]).max() > 3e-3


@pytest.mark.parametrize("settings", [dict(cache_interval=3), dict(guidance_cutoff=0.5),
                                      dict(cache_interval=2, guidance_cutoff=0.3)])
def test_identity_edits_still_reconstruct_the_source(pipe, image, settings):
    """Target prompt = source prompt at equal guidance: every step treats the two trajectories alike, so the edit
    ends on the source's own latents x0, as the exact edit does."""
    args = dict(prompt="a horse", source_prompt="a horse", guidance_scale=3.0, source_guidance_scale=3.0,
                num_inference_steps=20, strength=0.8)
    out = pipe(image=image, generator=torch.Generator().manual_seed(2), output_type="latent", **settings,
               **args).images
    _, x0, _, _, _ = pipe.prepare_source(
        pipe_pixels(pipe, image), ["a horse"], batch=1, strength=0.8, num_inference_steps=20, eta=0.1,
        num_images_per_prompt=1, generator=torch.Generator().manual_seed(2), timings={})
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-4)


def pipe_pixels(pipe, image):
    from rtcore.images import preprocess

    return preprocess(image, pipe.engines.vae_scale_factor)


def test_encode_and_edit_with_approximations_equal_the_call(pipe, image):
    fast = from_preset("fast")
    whole = pipe(image=image, generator=torch.Generator().manual_seed(3), output_type="np", **fast, **EDIT).images
    source = pipe.encode(image=image, source_prompt=EDIT["source_prompt"], strength=0.8, num_inference_steps=20,
                         generator=torch.Generator().manual_seed(3), **fast)
    halves = pipe.edit(source, prompt=EDIT["prompt"], output_type="np").images  # the source's settings by default
    np.testing.assert_allclose(halves, whole, atol=1e-5)
    assert np.abs(pipe.edit(source, prompt=EDIT["prompt"], output_type="np", cache_interval=1,
                            guidance_cutoff=1.0).images - whole).max() > 1e-3  # other settings may be asked for
    exact = pipe(image=image, generator=torch.Generator().manual_seed(3), output_type="np", **EDIT).images
    assert np.abs(exact - whole).max() > 1e-3


@pytest.mark.parametrize("name,value,match", [
    ("cache_interval", 0, "cache_interval must be an int >= 1"),
    ("cache_interval", 2.0, "cache_interval must be an int >= 1"),
    ("cache_interval", True, "cache_interval must be an int >= 1"),
    ("guidance_cutoff", 1.5, "guidance_cutoff must be a number in \\[0, 1\\]"),
    ("guidance_cutoff", float("nan"), "guidance_cutoff must be a number in \\[0, 1\\]"),
    ("guidance_cutoff", "0.5", "guidance_cutoff must be a number in \\[0, 1\\]"),
])
def test_bad_values_are_refused_by_name_before_any_work(pipe, image, name, value, match):
    sd = StableDiffusion(pipe.engines)
    calls = [lambda: pipe(image=image, **EDIT, **{name: value}),
             lambda: pipe.encode(image=image, source_prompt="a", **{name: value}),
             lambda: sd.text_to_image("a", **{name: value}),
             lambda: sd.img2img("a", image=image, **{name: value})]
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()
    source = pipe.encode(image=image, source_prompt="a", num_inference_steps=2)
    with pytest.raises(ValueError, match=match):
        pipe.edit(source, prompt="b", **{name: value})


def test_presets_are_named_settings_and_exact_is_the_default():
    assert set(PRESETS) >= {"exact", "fast"} and Approximations(**PRESETS["exact"]) == Approximations()
    assert Approximations().exact and not Approximations(**PRESETS["fast"]).exact
    with pytest.raises(ValueError, match="preset must be one of"):
        from_preset("fastest")
