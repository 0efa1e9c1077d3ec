"""Two-model CycleDiffusion against an independent float64 implementation of docs/DESIGN.md §3 with two networks:
pixel-space DDPMs (rtcore's UNet2DModel, itself checked against diffusers') and latent models sharing a VAE."""

import shutil
import subprocess
import sys

import pytest
import torch
from oracle import reference_cycle

from rtcore import CycleDiffusion
from rtcore.demo import sample_image
from rtcore.translate import PixelCycleDiffusion, is_pixel_model, translate


@pytest.fixture(scope="module")
def ddpms(tmp_path_factory):
    from rtcore.export import make_tiny_ddpm

    root = tmp_path_factory.mktemp("ddpm")
    return make_tiny_ddpm(root / "cat", seed=0), make_tiny_ddpm(root / "dog", seed=1)


def test_pixel_translation_matches_float64_reference(ddpms):
    from rtcore.export.unet2d import UNet2DConfig  # noqa: F401  (the models come from the folders)
    from rtcore.images import preprocess

    pipe = PixelCycleDiffusion.from_pretrained(*ddpms)
    image = sample_image(32, 32)
    ours = pipe(image, strength=0.6, num_inference_steps=20, eta=0.3, generator=torch.Generator().manual_seed(4),
                output_type="latent")
    a, b = pipe.source_unet.double(), pipe.target_unet.double()
    with torch.no_grad():
        ref = reference_cycle(lambda s, t: a(s, torch.tensor([t])), lambda s, t: b(s, torch.tensor([t])),
                                  pipe.scheduler, preprocess(image).double(), 20, 0.6, 0.3, seed=4)
    pipe.source_unet.float(), pipe.target_unet.float()
    assert torch.isfinite(ours).all()
    err = (ours.double() - ref).abs().max().item()
    print(f"pixel translation vs float64 reference: {err:.2e}")
    assert err < 1e-3
    same = PixelCycleDiffusion.from_pretrained(ddpms[0], ddpms[0])(image, strength=0.6, num_inference_steps=20,
                                                                  eta=0.3, generator=torch.Generator().manual_seed(4),
                                                                  output_type="latent")
    assert (ours - same).abs().max() > 1e-2  # the target model matters


def test_pixel_unet_matches_diffusers(ddpms):
    from diffusers import UNet2DModel

    pipe = PixelCycleDiffusion.from_pretrained(*ddpms)
    ref = UNet2DModel.from_pretrained(ddpms[0] / "unet").eval()
    sample = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(pipe.source_unet(sample, torch.tensor([3, 700])),
                                   ref(sample, torch.tensor([3, 700])).sample, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def second_latent_model(tiny_sd1, tmp_path_factory):
    """The tiny checkpoint with another UNet: same VAE, text encoder and schedule."""
    from rtcore.export import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("latent-b")
    other = make_tiny_checkpoint(root / "other", seed=7)
    path = root / "b"
    shutil.copytree(tiny_sd1, path)
    shutil.rmtree(path / "unet")
    shutil.copytree(other / "unet", path / "unet")
    return path


def test_latent_translation_matches_float64_reference(tiny_sd1, second_latent_model, pipe):
    from rtcore.export.checkpoint import load_unet, load_vae
    from rtcore.images import preprocess
    from rtcore.prompts import encode_prompts

    target = CycleDiffusion.from_pretrained(second_latent_model)
    image = sample_image(64, 64)
    ours = translate(pipe, target, image, "a horse", "an elephant", strength=0.8, num_inference_steps=10,
                     guidance_scale=1.0, eta=0.2, generator=torch.Generator().manual_seed(2), output_type="latent")
    emb = encode_prompts(pipe.engines, ["a horse", "an elephant"])
    a, b = load_unet(tiny_sd1 / "unet").double(), load_unet(second_latent_model / "unet").double()
    vae = load_vae(tiny_sd1 / "vae").double()
    with torch.no_grad():
        mean, std = vae.encode(preprocess(image).double())
        ref = reference_cycle(lambda s, t: a(s, torch.tensor([t]), emb["a horse"][None].double()),
                                  lambda s, t: b(s, torch.tensor([t]), emb["an elephant"][None].double()),
                                  pipe.engines.scheduler, mean, 10, 0.8, 0.2, seed=2,
                                  x0_from_draw=lambda sample: 0.18215 * (mean + std * sample))
    err = (ours.images.double() - ref).abs().max().item()
    print(f"latent translation vs float64 reference: {err:.2e}")
    assert err < 1e-3


def test_translation_refuses_models_without_a_shared_schedule(pipe, tiny_sd1, tmp_path, ddpms):
    import json

    path = tmp_path / "other-schedule"
    shutil.copytree(tiny_sd1, path)
    cfg = path / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), beta_schedule="linear")))
    with pytest.raises(ValueError, match="forward process"):
        translate(pipe, CycleDiffusion.from_pretrained(path), sample_image(64, 64), num_inference_steps=4)
    pixel = tmp_path / "pixel-other"
    shutil.copytree(ddpms[1], pixel)
    cfg = pixel / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), beta_end=0.03)))
    with pytest.raises(ValueError, match="forward process"):
        PixelCycleDiffusion.from_pretrained(ddpms[0], pixel)
    assert is_pixel_model(ddpms[0]) and not is_pixel_model(tiny_sd1)


def test_cli_translate(ddpms, tmp_path):
    import PIL.Image

    sample_image(32, 32).save(tmp_path / "cat.png")
    result = subprocess.run([sys.executable, "-m", "rtcore", "translate", "--source-model", str(ddpms[0]),
                             "--target-model", str(ddpms[1]), "--image", str(tmp_path / "cat.png"), "--out",
                             str(tmp_path / "dog.png"), "--steps", "10"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(tmp_path / "dog.png").size == (32, 32)
