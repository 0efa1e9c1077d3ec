"""Reference pixel-space UNet (diffusers' UNet2DModel layout), for unconditional DDPMs such as google/ddpm-cat-256.

It is used by two-model CycleDiffusion in pixel space, which encodes with one DDPM and decodes with another.
Parameter names equal diffusers', so a UNet2DModel state dict loads with ``strict=True``. Its blocks are the SD
UNet's ResNet blocks and samplers. The attention blocks use the VAE-style self-attention (GroupNorm, one
projection per Q/K/V, residual). Options these models do not use are refused by name: Fourier or learned time
embeddings, class conditioning, skip blocks, and the scale-shift time norm.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .layers import (
    Attention,
    Downsample2D,
    ResnetBlock2D,
    Upsample2D,
    add_unet_ends,
    config_from_dict,
    embed_timestep,
)
from .vae import VAEMidBlock

DOWN, ATTN_DOWN, UP, ATTN_UP = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"
_UNSUPPORTED = {"time_embedding_type": ("positional",), "class_embed_type": (None,), "num_class_embeds": (None,),
                "resnet_time_scale_shift": ("default",), "center_input_sample": (False,), "act_fn": ("silu",),
                "add_attention": (True,), "downsample_type": ("conv",), "upsample_type": ("conv",),
                "time_embedding_dim": (None,), "attn_norm_num_groups": (None,), "mid_block_scale_factor": (1, 1.0)}


@dataclass
class UNet2DConfig:
    sample_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = (DOWN, DOWN, DOWN, DOWN, ATTN_DOWN, DOWN)
    up_block_types: tuple = (UP, ATTN_UP, UP, UP, UP, UP)
    block_out_channels: tuple = (128, 128, 256, 256, 512, 512)
    layers_per_block: int = 2
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    downsample_padding: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @classmethod
    def from_dict(cls, cfg):
        return config_from_dict(cls, cfg, "unet2d", _UNSUPPORTED, {"down_block_types": (DOWN, ATTN_DOWN),
                                                                   "up_block_types": (UP, ATTN_UP)})


def _self_attention(ch, cfg):
    head_dim = cfg.attention_head_dim or ch  # diffusers: None means one head over all channels
    return Attention(ch, ch // head_dim, head_dim, bias=True, norm_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps)


class Block(nn.Module):
    """A down or up block: ResNets (with skip inputs on the way up), optional self-attention, a resampler."""

    def __init__(self, resnet_channels, out_ch, temb_ch, cfg, attention, sampler):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(c, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
                                      for c in resnet_channels])
        self.attentions = nn.ModuleList([_self_attention(out_ch, cfg) for _ in resnet_channels]) if attention \
            else None
        if sampler == "down":
            self.downsamplers = nn.ModuleList([Downsample2D(out_ch, cfg.downsample_padding)])
        elif sampler == "up":
            self.upsamplers = nn.ModuleList([Upsample2D(out_ch)])

    def forward(self, x, temb, skips=None, upsample_size=None):
        outputs = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x if skips is None else torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            outputs.append(x)
        if hasattr(self, "downsamplers"):
            x = self.downsamplers[0](x)
            outputs.append(x)
        if hasattr(self, "upsamplers"):
            x = self.upsamplers[0](x, upsample_size)
        return x, outputs


class UNet2DModel(nn.Module):
    """ε-prediction for a pixel-space DDPM: forward(sample (B, 3, H, W), timestep (B,) or scalar) → (B, 3, H, W)."""

    def __init__(self, cfg: UNet2DConfig):
        super().__init__()
        self.config = cfg
        ch, n, layers = cfg.block_out_channels, len(cfg.block_out_channels), cfg.layers_per_block
        temb_ch = add_unet_ends(self, cfg)
        self.down_blocks = nn.ModuleList()
        out_ch = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, ch[i]
            self.down_blocks.append(Block([in_ch] + [out_ch] * (layers - 1), out_ch, temb_ch, cfg, kind == ATTN_DOWN,
                                          "down" if i < n - 1 else None))
        self.mid_block = VAEMidBlock(ch[-1], cfg.norm_num_groups, temb_ch, cfg.norm_eps,
                                     cfg.attention_head_dim or ch[-1])
        self.up_blocks = nn.ModuleList()
        rch = ch[::-1]
        out_ch = rch[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev, out_ch, skip_in = out_ch, rch[i], rch[min(i + 1, n - 1)]
            channels = [(prev if j == 0 else out_ch) + (skip_in if j == layers else out_ch) for j in range(layers + 1)]
            self.up_blocks.append(Block(channels, out_ch, temb_ch, cfg, kind == ATTN_UP, "up" if i < n - 1 else None))

    def forward(self, sample, timestep):
        temb = embed_timestep(self.time_embedding, timestep, sample, self.config)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, outputs = block(x, temb)
            skips.extend(outputs)
        x = self.mid_block(x, temb)
        for block in self.up_blocks:
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            # upsample to the next skip's size: images need not be a multiple of 2^levels
            x, _ = block(x, temb, block_skips, tuple(skips[-1].shape[-2:]) if skips else None)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))
