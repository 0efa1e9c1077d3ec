"""Kernel patching: patched reference models equal unpatched ones; an edit with kernels on stays within 5e-3."""

import copy

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion
from rtcore.demo import sample_image
from rtcore.export.checkpoint import load_unet, load_vae
from rtcore.export.patch import FusedAttention, GroupNormAct, Int8Linear, int8_policy, patch

pytestmark = pytest.mark.interpreter


@pytest.fixture(scope="module")
def models(tiny_sd1, tiny_sd2):
    return {"sd1": load_unet(tiny_sd1 / "unet"), "sd2": load_unet(tiny_sd2 / "unet"), "vae": load_vae(tiny_sd1 / "vae")}


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_patched_unet_equals_unpatched(models, kind):
    ref = models[kind]
    patched = copy.deepcopy(ref)
    report = patch(patched)
    assert report.attentions == 14 and report.group_norms == 30 and report.fused_silu == 23
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in patched.modules())
    assert sum(isinstance(m, FusedAttention) for m in patched.modules()) == 14
    sample, context, t = torch.randn(1, 4, 8, 6), torch.randn(1, 77, 32), torch.tensor([601])
    with torch.no_grad():
        torch.testing.assert_close(patched(sample, t, context), ref(sample, t, context), atol=2e-5, rtol=2e-5)


def test_patched_vae_equals_unpatched(models):
    ref = models["vae"]
    patched = copy.deepcopy(ref)
    report = patch(patched)
    assert report.attentions == 2 and all(isinstance(m, GroupNormAct) for m in [patched.decoder.conv_norm_out])
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for got, want in zip(patched.encode(image), ref.encode(image)):
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
        latents = torch.randn(1, 4, 4, 4)
        torch.testing.assert_close(patched.decode(latents), ref.decode(latents), atol=2e-5, rtol=2e-5)


@pytest.mark.slow  # a whole UNet in int8 under the Triton interpreter
def test_int8_policy_and_patched_unet(models):
    ref = models["sd1"]
    assert int8_policy(ref) == []  # no tiny layer reaches the SD-sized default threshold
    chosen = int8_policy(ref, min_params=32 * 32)
    assert "down_blocks.0.attentions.0.proj_in" in chosen  # 1×1 convs count too
    patched = copy.deepcopy(ref)
    report = patch(patched, int8=True, int8_min_params=32 * 32)
    assert len(report.int8_layers) > 0 and any(name.endswith("to_qkv") for name in report.int8_layers)
    assert sum(isinstance(m, Int8Linear) for m in patched.modules()) == len(report.int8_layers)
    sample, context, t = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32), torch.tensor([301])
    with torch.no_grad():
        got, want = patched(sample, t, context), ref(sample, t, context)
    rel = ((got - want).norm() / want.norm()).item()
    print(f"int8 UNet relative error {rel:.3e} over {len(report.int8_layers)} layers")
    assert rel < 5e-2
    # casting the model to half precision keeps the per-channel weight scales in fp32, the codes in int8
    layer = next(m for m in patched.half().modules() if isinstance(m, Int8Linear))
    assert layer.w_scales.dtype == torch.float32 and layer.w_codes.dtype == torch.int8


@pytest.mark.slow  # a whole edit under the Triton interpreter
def test_edit_with_kernels_matches_eager(tiny_sd1, pipe):
    kernels = CycleDiffusion.from_pretrained(tiny_sd1, kernels=True)
    # 32×32 images: the interpreted kernels' time goes mostly to the VAE's full-resolution GroupNorms
    args = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
                image=sample_image(32, 32), num_inference_steps=4, strength=0.5, output_type="np")
    got = kernels(generator=torch.Generator().manual_seed(0), **args).images
    want = pipe(generator=torch.Generator().manual_seed(0), **args).images
    err = np.abs(got - want).max()
    print(f"kernels vs eager: max abs pixel difference {err:.2e}")
    assert err <= 5e-3


@pytest.mark.slow  # a whole fp16 edit under the Triton interpreter
def test_fp16_edit_on_cpu(tiny_sd1, pipe):
    """The gpu tier's fp16 checks, run on the CPU: eager fp16 and kernels fp16 (interpreted) against fp32. This
    covers the half-precision plumbing (fp16 engines, fp32 loop state) that CUDA runs use. Each half-precision
    run is measured against fp32, not against the other: their rounding differs, and on the tiny random model two
    fp16 runs are further apart than either is from fp32."""
    # 32×32 images: the interpreted kernels' time goes mostly to the VAE's full-resolution GroupNorms
    args = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
                image=sample_image(32, 32), num_inference_steps=4, strength=0.5, output_type="np")
    fp32 = pipe(generator=torch.Generator().manual_seed(0), **args).images
    for kernels in (False, True):
        half = CycleDiffusion.from_pretrained(tiny_sd1, dtype="fp16", kernels=kernels)
        assert half.engines.dtype == torch.float16
        got = half(generator=torch.Generator().manual_seed(0), **args).images
        err = np.abs(got - fp32).max()
        print(f"fp16 (kernels={kernels}) vs fp32: max abs pixel difference {err:.2e}")
        assert np.isfinite(got).all() and err <= 3e-2
