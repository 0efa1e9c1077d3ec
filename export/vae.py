"""Reference AutoencoderKL (diffusers' layout), configured from ``vae/config.json``.

``encode`` returns the Gaussian posterior as (mean, std) rather than a sample: the runtime draws the sample itself
from the CPU generator, in diffusers' order, so any backend (eager, ONNX, TensorRT) reproduces diffusers' output.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .layers import Attention, Downsample2D, ResnetBlock2D, Upsample2D, config_from_dict

_UNSUPPORTED = {
    "act_fn": ("silu",),
    "shift_factor": (None, 0, 0.0),
    "latents_mean": (None,),
    "latents_std": (None,),
    "use_quant_conv": (True,),
    "use_post_quant_conv": (True,),
    "mid_block_add_attention": (True,),
}


@dataclass
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215

    @classmethod
    def from_dict(cls, cfg):
        return config_from_dict(cls, cfg, "vae", _UNSUPPORTED, {"down_block_types": ("DownEncoderBlock2D",),
                                                                "up_block_types": ("UpDecoderBlock2D",)})

    @property
    def scale_factor(self):
        """Pixels per latent along each side (8 for every SD checkpoint)."""
        return 2 ** (len(self.block_out_channels) - 1)


class EncoderBlock(nn.Module):
    def __init__(self, in_ch, out_ch, num_layers, groups, downsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, 1e-6) for i in range(num_layers)]
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, padding=0)]) if downsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class DecoderBlock(nn.Module):
    def __init__(self, in_ch, out_ch, num_layers, groups, upsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, None, groups, 1e-6) for i in range(num_layers)]
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class VAEMidBlock(nn.Module):
    """ResNet → self-attention (with its own GroupNorm and residual) → ResNet: diffusers' UNetMidBlock2D. The VAE
    uses one head over all channels and no timestep; pixel-space DDPM UNets pass temb_ch and head_dim."""

    def __init__(self, ch, groups, temb_ch=None, eps=1e-6, head_dim=None):
        super().__init__()
        head_dim = head_dim or ch
        self.attentions = nn.ModuleList([Attention(ch, ch // head_dim, head_dim, bias=True, norm_groups=groups,
                                                   norm_eps=eps)])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, groups, eps) for _ in range(2)])

    def forward(self, x, temb=None):
        return self.resnets[1](self.attentions[0](self.resnets[0](x, temb)), temb)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, groups, i < len(ch) - 1)
             for i in range(len(ch))]
        )
        self.mid_block = VAEMidBlock(ch[-1], groups)
        self.conv_norm_out = nn.GroupNorm(groups, ch[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        rch, groups = cfg.block_out_channels[::-1], cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, rch[0], 3, padding=1)
        self.mid_block = VAEMidBlock(rch[0], groups)
        self.up_blocks = nn.ModuleList(
            [DecoderBlock(rch[max(i - 1, 0)], rch[i], cfg.layers_per_block + 1, groups, i < len(rch) - 1)
             for i in range(len(rch))]
        )
        self.conv_norm_out = nn.GroupNorm(groups, rch[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode(self, image):
        """image (B, 3, H, W) in [-1, 1] → posterior (mean, std), each (B, 4, H/8, W/8), unscaled."""
        mean, logvar = self.quant_conv(self.encoder(image)).chunk(2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        return mean, std

    def decode(self, latents):
        """latents (B, 4, h, w), unscaled → image (B, 3, 8h, 8w) in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))

    def forward(self, image):
        return self.encode(image)
