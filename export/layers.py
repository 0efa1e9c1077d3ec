"""Building blocks shared by the reference UNet and VAE.

Parameter names follow diffusers exactly (``norm1``, ``conv1``, ``time_emb_proj``, ``to_q``, ``to_out.0``,
``ff.net.0.proj`` ...) so a diffusers state dict loads with ``strict=True``. The forward passes follow the same
operation order as diffusers' default attention processor (``AttnProcessor2_0``), which is what keeps fp32
outputs within ~1e-6 of diffusers on the same weights.

Only what Stable Diffusion v1.x / v2.x checkpoints use is here: no LoRA hooks, no processors, no dropout at
inference (dropout modules are kept as ``nn.Identity`` only where diffusers' names need an index for them).
"""

import math
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn


def config_from_dict(cls, cfg, name, unsupported, block_types):
    """A diffusers config dict → the dataclass ``cls``. Options that change the model beyond what is built here
    (``unsupported``: key → accepted values) and unknown block types (``block_types``: key → accepted names) are
    refused by name; keys the dataclass does not hold are ignored; JSON lists become tuples."""
    for key, accepted in unsupported.items():
        if key in cfg and cfg[key] not in accepted:
            raise ValueError(f"{name} config: {key}={cfg[key]!r} is not supported (accepted: {accepted})")
    for key, accepted in block_types.items():
        unknown = [block for block in cfg.get(key, ()) if block not in accepted]
        if unknown:
            raise ValueError(f"{name} config: {key} entries {unknown} are not supported (accepted: {accepted})")
    known = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in known})


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000):
    """Sinusoidal timestep embedding, as diffusers' ``get_timestep_embedding``. timesteps: (B,) → (B, dim) fp32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, time_embed_dim):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


def embed_timestep(time_embedding, timestep, sample, cfg):
    """Scalar or (B,) timesteps → the (B, temb) embedding of a UNet whose config has block_out_channels,
    flip_sin_to_cos and freq_shift (diffusers' UNet2DConditionModel and UNet2DModel compute it alike)."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], device=sample.device)
    timestep = timestep.reshape(-1).expand(sample.shape[0])
    t_emb = timestep_embedding(timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    return time_embedding(t_emb.to(sample.dtype))


def add_unet_ends(unet, cfg):
    """The layers every diffusers UNet has around its blocks, under diffusers' names: the input convolution and the
    timestep MLP before, GroupNorm → SiLU → convolution after. Returns the timestep embedding's width."""
    ch0, temb_ch = cfg.block_out_channels[0], cfg.block_out_channels[0] * 4
    unet.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)
    unet.time_embedding = TimestepEmbedding(ch0, temb_ch)
    unet.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch0, eps=cfg.norm_eps)
    unet.conv_act = nn.SiLU()
    unet.conv_out = nn.Conv2d(ch0, cfg.out_channels, 3, padding=1)
    return temb_ch


class ResnetBlock2D(nn.Module):
    """GroupNorm → SiLU → conv, plus the (optional) timestep projection, and a 1×1 shortcut when channels change."""

    def __init__(self, in_channels, out_channels, temb_channels, groups, eps):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        # separate activation modules so that kernel patching can fuse each GroupNorm→SiLU pair
        self.act1, self.act2 = nn.SiLU(), nn.SiLU()

    def forward(self, x, temb=None):
        h = self.conv1(self.act1(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.act2(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names.

    ``group_norm``/``residual`` are the VAE mid-block variant (one head over all channels, 4-D input).
    ``upcast`` runs the attention product in fp32 when the model runs in half precision (SD 2.1's
    ``upcast_attention``), which is what keeps those checkpoints from overflowing in fp16.
    """

    def __init__(self, query_dim, heads, dim_head, cross_attention_dim=None, bias=False, upcast=False,
                 norm_groups=None, norm_eps=1e-6):
        super().__init__()
        inner = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.is_cross = cross_attention_dim is not None
        self.upcast = upcast
        self.group_norm = nn.GroupNorm(norm_groups, query_dim, eps=norm_eps) if norm_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])

    def attend(self, q, k, v):
        """q: (B, S, H·D), k/v: (B, L, H·D) → (B, S, H·D)."""
        b, s, _ = q.shape
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        dtype = q.dtype
        if self.upcast and dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v)
        return out.to(dtype).transpose(1, 2).reshape(b, s, -1)

    def forward(self, x, context=None):
        if self.group_norm is None:  # (B, S, C) token input: the UNet transformer blocks
            context = x if context is None else context
            return self.to_out[0](self.attend(self.to_q(x), self.to_k(context), self.to_v(context)))
        # (B, C, H, W) image input: the VAE mid-block, with its own norm and residual
        b, c, h, w = x.shape
        tokens = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        out = self.to_out[0](self.attend(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)))
        return out.transpose(1, 2).reshape(b, c, h, w) + x


class GEGLU(nn.Module):
    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text tokens, and a GEGLU feed-forward, each residual."""

    def __init__(self, dim, heads, dim_head, cross_attention_dim, upcast):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim=cross_attention_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, projection to tokens (1×1 conv, or Linear for SD 2.x), transformer blocks, projection back."""

    def __init__(self, heads, dim_head, in_channels, num_layers, cross_attention_dim, groups, linear_projection,
                 upcast):
        super().__init__()
        inner = heads * dim_head
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        if linear_projection:
            self.proj_in = nn.Linear(in_channels, inner)
            self.proj_out = nn.Linear(inner, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_attention_dim, upcast) for _ in range(num_layers)]
        )

    def forward(self, x, context):
        b, _, h, w = x.shape
        hidden = self.norm(x)
        if self.linear_projection:
            hidden = self.proj_in(hidden.permute(0, 2, 3, 1).reshape(b, h * w, -1))
        else:
            hidden = self.proj_in(hidden)
            hidden = hidden.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        for block in self.transformer_blocks:
            hidden = block(hidden, context)
        if self.linear_projection:
            hidden = self.proj_out(hidden).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        else:
            hidden = self.proj_out(hidden.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous())
        return hidden + x


class Downsample2D(nn.Module):
    """Stride-2 3×3 conv. ``padding=0`` is the VAE variant, which pads one pixel right and bottom first."""

    def __init__(self, channels, padding=1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest 2× upsampling (or to an explicit size, for latents that are not a multiple of 2^levels) then 3×3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on every backend
            x = x.float()
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x.to(dtype))
