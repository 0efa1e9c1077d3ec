"""Reference SD UNet (diffusers' UNet2DConditionModel layout), configured from ``unet/config.json``.

Covers the options Stable Diffusion v1.x and v2.x checkpoints use: cross-attention down/mid/up blocks, per-block
head counts (``attention_head_dim`` as a list in SD 2.x, which diffusers reads as the number of heads), linear
projections, ``upcast_attention``, per-block ``layers_per_block`` / ``transformer_layers_per_block``. Options that
no SD 1.x/2.x checkpoint sets (class embeddings, added conditioning, other block types) are refused by name.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .layers import (
    Downsample2D,
    ResnetBlock2D,
    Transformer2DModel,
    Upsample2D,
    add_unet_ends,
    config_from_dict,
    embed_timestep,
)

CROSS_DOWN, PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
CROSS_UP, PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"

# config keys whose non-default values this reference does not implement: key -> accepted values
_UNSUPPORTED = {
    "class_embed_type": (None,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "time_cond_proj_dim": (None,),
    "num_class_embeds": (None,),
    "dual_cross_attention": (False,),
    "only_cross_attention": (False,),
    "center_input_sample": (False,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "act_fn": ("silu",),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "mid_block_scale_factor": (1, 1.0),
    "attention_type": ("default",),
}


@dataclass
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple = (CROSS_DOWN, CROSS_DOWN, CROSS_DOWN, PLAIN_DOWN)
    up_block_types: tuple = (PLAIN_UP, CROSS_UP, CROSS_UP, CROSS_UP)
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: object = 2
    transformer_layers_per_block: object = 1
    attention_head_dim: object = 8
    num_attention_heads: object = None
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    downsample_padding: int = 1
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    use_linear_projection: bool = False
    upcast_attention: bool = False
    sample_size: int = 64

    @classmethod
    def from_dict(cls, cfg):
        if isinstance(cfg.get("cross_attention_dim"), (list, tuple)):
            raise ValueError("unet config: cross_attention_dim must be one int for SD 1.x/2.x checkpoints")
        return config_from_dict(cls, cfg, "unet", _UNSUPPORTED, {"down_block_types": (CROSS_DOWN, PLAIN_DOWN),
                                                                 "up_block_types": (CROSS_UP, PLAIN_UP)})

    def per_block(self, value):
        n = len(self.block_out_channels)
        return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n

    @property
    def heads(self):
        # diffusers' historical naming: attention_head_dim is the number of heads unless num_attention_heads is set
        return self.per_block(self.num_attention_heads or self.attention_head_dim)


def _transformers(cfg, ch, heads, transformer_layers, count):
    return nn.ModuleList(
        [Transformer2DModel(heads, ch // heads, ch, transformer_layers, cfg.cross_attention_dim, cfg.norm_num_groups,
                            cfg.use_linear_projection, cfg.upcast_attention) for _ in range(count)])


class DownBlock(nn.Module):
    def __init__(self, in_ch, out_ch, temb_ch, num_layers, cfg, heads=None, transformer_layers=1, downsample=True):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_ch if i == 0 else out_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
             for i in range(num_layers)]
        )
        self.attentions = _transformers(cfg, out_ch, heads, transformer_layers, num_layers) if heads else None
        self.downsamplers = nn.ModuleList([Downsample2D(out_ch, cfg.downsample_padding)]) if downsample else None

    def forward(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    def __init__(self, in_ch, out_ch, prev_out_ch, temb_ch, num_layers, cfg, heads=None, transformer_layers=1,
                 upsample=True):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_ch = in_ch if i == num_layers - 1 else out_ch
            resnet_in = prev_out_ch if i == 0 else out_ch
            resnets.append(ResnetBlock2D(resnet_in + skip_ch, out_ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _transformers(cfg, out_ch, heads, transformer_layers, num_layers) if heads else None
        self.upsamplers = nn.ModuleList([Upsample2D(out_ch)]) if upsample else None

    def layers(self, x, temb, context, skips, start=0, stop=None):
        """Layers ``start`` to ``stop`` (resnet and attention), each fed the last skip left in ``skips``."""
        for i in range(start, len(self.resnets) if stop is None else stop):
            x = self.resnets[i](torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        return x

    def forward(self, x, temb, context, skips, upsample_size=None):
        x = self.layers(x, temb, context, skips)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch, temb_ch, cfg, heads, transformer_layers):
        super().__init__()
        self.attentions = _transformers(cfg, ch, heads, transformer_layers, 1)
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb_ch, cfg.norm_num_groups, cfg.norm_eps)
                                      for _ in range(2)])

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, context)
        return self.resnets[1](x, temb)


# DeepCache (Ma et al., CVPR 2024) on SD: the shallowest skip branch (its reference code's cache_layer_id=0,
# cache_block_id=0). The last up block's final CACHE_BRANCH layers are the ones fed by the two shallowest skips,
# conv_in's output and the first down layer's; everything deeper is cached.
CACHE_BRANCH = 2


class UNet(nn.Module):
    """ε (or v) prediction: forward(sample (B, 4, h, w), timestep (B,) or scalar, text (B, L, C)) → (B, 4, h, w).

    For feature caching (DeepCache), ``forward_full`` also returns the deep features: the input of the last up
    block's final CACHE_BRANCH layers. ``forward_shallow`` computes the same output from them and the shallow path
    alone: conv_in, the first down layer, those layers and the output head, about a quarter of the UNet's FLOPs at SD
    shapes. Given the deep features of the same inputs it reproduces ``forward``; given an earlier step's, it is
    DeepCache's approximation.
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch = cfg.block_out_channels
        n = len(ch)
        temb_ch = add_unet_ends(self, cfg)
        heads = cfg.heads
        layers = cfg.per_block(cfg.layers_per_block)
        tlayers = cfg.per_block(cfg.transformer_layers_per_block)

        self.down_blocks = nn.ModuleList()
        out_ch = ch[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, ch[i]
            cross = kind == CROSS_DOWN
            self.down_blocks.append(DownBlock(in_ch, out_ch, temb_ch, layers[i], cfg, heads[i] if cross else None,
                                              tlayers[i], downsample=i < n - 1))

        self.mid_block = MidBlock(ch[-1], temb_ch, cfg, heads[-1], tlayers[-1])

        self.up_blocks = nn.ModuleList()
        rch, rheads, rlayers, rtlayers = ch[::-1], heads[::-1], layers[::-1], tlayers[::-1]
        out_ch = rch[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_out, out_ch = out_ch, rch[i]
            in_ch = rch[min(i + 1, n - 1)]
            cross = kind == CROSS_UP
            self.up_blocks.append(UpBlock(in_ch, out_ch, prev_out, temb_ch, rlayers[i] + 1, cfg,
                                          rheads[i] if cross else None, rtlayers[i], upsample=i < n - 1))

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.forward_full(sample, timestep, encoder_hidden_states)[0]

    def forward_full(self, sample, timestep, encoder_hidden_states):
        """(model output, deep features (B, deep_channels, h, w)): the whole UNet, the same operations as forward."""
        temb = embed_timestep(self.time_embedding, timestep, sample, self.config)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, encoder_hidden_states)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, encoder_hidden_states)
        for block in self.up_blocks[:-1]:
            block_skips = skips[-len(block.resnets):]
            del skips[-len(block.resnets):]
            # upsample to the next skip's size: latents need not be a multiple of 2^levels
            x = block(x, temb, encoder_hidden_states, block_skips, tuple(skips[-1].shape[-2:]))
        last = self.up_blocks[-1]  # its skips are all that is left; it does not upsample
        deep = last.layers(x, temb, encoder_hidden_states, skips, stop=self._cache_start)
        x = last.layers(deep, temb, encoder_hidden_states, skips, start=self._cache_start)
        return self.conv_out(self.conv_act(self.conv_norm_out(x))), deep

    def forward_shallow(self, sample, timestep, encoder_hidden_states, deep):
        """The model output from the deep features of ``forward_full`` and the shallow path alone."""
        temb = embed_timestep(self.time_embedding, timestep, sample, self.config)
        x = self.conv_in(sample)
        first = self.down_blocks[0]
        skip = first.resnets[0](x, temb)
        if first.attentions is not None:
            skip = first.attentions[0](skip, encoder_hidden_states)
        x = self.up_blocks[-1].layers(deep, temb, encoder_hidden_states, [x, skip], start=self._cache_start)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))

    @property
    def _cache_start(self):
        """The first of the last up block's layers on the shallow path."""
        return len(self.up_blocks[-1].resnets) - CACHE_BRANCH

    @property
    def deep_channels(self):
        """Channels of the deep features: what the first shallow layer takes besides its skip."""
        first_skip = self.down_blocks[0].resnets[0].conv2.out_channels
        return self.up_blocks[-1].resnets[self._cache_start].conv1.in_channels - first_skip
