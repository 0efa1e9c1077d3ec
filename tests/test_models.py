"""Reference UNet / VAE against diffusers' classes on the same weights (fp32, 1e-5), SD1-like and SD2-like."""

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers import UNet2DConditionModel

from rtcore.export.checkpoint import load_unet, load_vae
from rtcore.export.unet import UNetConfig


@pytest.fixture(params=["sd1", "sd2"])
def checkpoint(request, tiny_sd1, tiny_sd2):
    return {"sd1": tiny_sd1, "sd2": tiny_sd2}[request.param]


def _max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("latent_hw", [(8, 8), (8, 6), (5, 7)])
def test_unet_matches_diffusers(checkpoint, latent_hw):
    ours = load_unet(checkpoint / "unet")
    ref = UNet2DConditionModel.from_pretrained(checkpoint / "unet").eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    sample = torch.randn(3, 4, *latent_hw)
    context = torch.randn(3, 77, 32)
    with torch.no_grad():
        for t in (torch.tensor([1]), torch.tensor([999]), torch.tensor([10, 500, 981])):
            expected = ref(sample, t, encoder_hidden_states=context).sample
            got = ours(sample, t, context)
            print(f"t={t.tolist()} max err {_max_err(got, expected):.2e}")
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(64, 64), (64, 48)])
def test_vae_matches_diffusers(checkpoint, hw):
    ours = load_vae(checkpoint / "vae")
    ref = DiffusersVAE.from_pretrained(checkpoint / "vae").eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    image = torch.rand(2, 3, *hw) * 2 - 1
    with torch.no_grad():
        mean, std = ours.encode(image)
        dist = ref.encode(image).latent_dist
        torch.testing.assert_close(mean, dist.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std, dist.std, atol=1e-5, rtol=1e-5)
        latents = torch.randn_like(mean)
        torch.testing.assert_close(ours.decode(latents), ref.decode(latents).sample, atol=1e-5, rtol=1e-5)


def test_sd15_shaped_config_builds_with_diffusers_names():
    """The real SD 1.5 UNet layout (on the meta device: no memory) has exactly diffusers' parameter names/shapes."""
    from rtcore.export.unet import UNet

    cfg = dict(cross_attention_dim=768, attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
               layers_per_block=2, sample_size=64)
    with torch.device("meta"):
        ours = UNet(UNetConfig.from_dict(cfg))
        ref = UNet2DConditionModel(**cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 859_520_964


@pytest.mark.parametrize("key,value", [("class_embed_type", "timestep"), ("addition_embed_type", "text"),
                                       ("down_block_types", ["SimpleCrossAttnDownBlock2D"])])
def test_unsupported_unet_options_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key.split("_")[0]):
        UNetConfig.from_dict({key: value})
