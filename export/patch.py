"""Kernel patching: rewrite a reference UNet / VAE so that it runs on rtcore's Triton kernels.

    report = patch(unet, group_norm=True, attention=True, int8=False)

- group_norm: every GroupNorm becomes ``rtcore::group_norm``; where a SiLU follows it (ResNet blocks,
  conv_norm_out) the SiLU is fused into the same kernel and the separate activation becomes Identity.
- attention: Q, K and V (or K and V for cross-attention) are concatenated into ONE Linear (``to_qkv`` /
  ``to_kv``), whose packed output goes straight into ``rtcore::qkv_attention`` / ``rtcore::kv_attention``.
- int8: the Linear layers (including the fused ``to_qkv``/``to_kv``) and 1×1 convolutions that the policy
  selects by size become ``rtcore::int8_linear`` with weights quantized once, per output channel.

The model is rewritten in place (parameters are shared, not copied) and a :class:`PatchReport` says what
changed. Patched models import ``rtcore.kernels`` and therefore need Triton.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import Attention

INT8_MIN_PARAMS = 320 * 320  # the smallest Linear of an SD 1.x UNet; the tiny test models pass 0


class GroupNormAct(nn.Module):
    """GroupNorm (+ SiLU) on the Triton kernel; shares the original weight and bias."""

    def __init__(self, norm: nn.GroupNorm, silu: bool):
        super().__init__()
        self.num_groups, self.eps, self.silu = norm.num_groups, norm.eps, silu
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x):
        return torch.ops.rtcore.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.silu, None)


def _concat_linear(*linears):
    """One Linear whose output is the given Linears' outputs side by side (one GEMM instead of several)."""
    has_bias = linears[0].bias is not None
    out = nn.Linear(linears[0].in_features, sum(lin.out_features for lin in linears), bias=has_bias,
                    device=linears[0].weight.device, dtype=linears[0].weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([lin.weight for lin in linears]))
        if has_bias:
            out.bias.copy_(torch.cat([lin.bias for lin in linears]))
    return out


class FusedAttention(nn.Module):
    """Attention with one QKV (self) or Q + KV (cross) GEMM feeding the Triton attention kernel."""

    def __init__(self, attn: Attention):
        super().__init__()
        self.heads, self.upcast, self.is_cross = attn.heads, attn.upcast, attn.is_cross
        self.scale = (attn.to_q.out_features // attn.heads) ** -0.5
        self.group_norm = attn.group_norm
        if self.is_cross:
            self.to_q = attn.to_q
            self.to_kv = _concat_linear(attn.to_k, attn.to_v)
        else:
            self.to_qkv = _concat_linear(attn.to_q, attn.to_k, attn.to_v)
        self.to_out = attn.to_out

    def _compute_dtype(self, t):
        return torch.float32 if self.upcast and t.dtype in (torch.float16, torch.bfloat16) else t.dtype

    def attend(self, x, context):
        if self.is_cross:
            q, kv = self.to_q(x), self.to_kv(context)
            dtype = self._compute_dtype(q)
            out = torch.ops.rtcore.kv_attention(q.to(dtype), kv.to(dtype), self.heads, self.scale)
        else:
            qkv = self.to_qkv(x)
            out = torch.ops.rtcore.qkv_attention(qkv.to(self._compute_dtype(qkv)), self.heads, self.scale)
        return self.to_out[0](out.to(x.dtype))

    def forward(self, x, context=None):
        if self.group_norm is None:
            return self.attend(x, context)
        b, c, h, w = x.shape
        tokens = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        return self.attend(tokens, None).transpose(1, 2).reshape(b, c, h, w) + x


class Int8Linear(nn.Module):
    """Linear with int8 weights (per output channel) and per-token dynamic int8 activations."""

    def __init__(self, weight, bias):
        super().__init__()
        from rtcore.kernels.quant import quantize_int8_ref

        codes, scales = quantize_int8_ref(weight.detach().reshape(weight.shape[0], -1))
        self.register_buffer("w_codes", codes)
        self.register_buffer("w_scales", scales)
        self.bias = bias
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]

    def _apply(self, fn, recurse=True):  # .half()/.to(dtype) would round the per-channel scales: keep them fp32
        super()._apply(fn, recurse)
        self.w_scales = self.w_scales.float()
        return self

    def forward(self, x):
        return torch.ops.rtcore.int8_linear(x, self.w_codes, self.w_scales, self.bias)


class Int8Conv1x1(Int8Linear):
    """A 1×1 convolution as an int8 Linear over channels: (B, C, H, W) → (B, N, H, W)."""

    def forward(self, x):
        b, c, h, w = x.shape
        y = super().forward(x.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _is_1x1_conv(m):
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
            and m.padding in ((0, 0), "valid"))


def int8_policy(model, min_params=INT8_MIN_PARAMS):
    """Names of the Linear and 1×1 Conv2d layers with at least ``min_params`` weights: what int8 will replace."""
    return [name for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) or _is_1x1_conv(m)) and m.weight.numel() >= min_params]


@dataclass
class PatchReport:
    group_norms: int = 0
    fused_silu: int = 0
    attentions: int = 0
    int8_layers: list = field(default_factory=list)


def _replace(model, predicate, build):
    """Replaces every child module for which predicate(child) holds with build(parent, name, child)."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if predicate(child)]
    for parent, name, child in targets:
        setattr(parent, name, build(parent, name, child))
    return len(targets)


def patch(model, group_norm=True, attention=True, int8=False, int8_min_params=INT8_MIN_PARAMS):
    """Rewrites a reference UNet or AutoencoderKL in place to use the Triton kernels; returns a PatchReport."""
    import rtcore.kernels  # noqa: F401  (registers the torch.ops.rtcore ops)

    report = PatchReport()
    if attention:
        report.attentions = _replace(model, lambda m: isinstance(m, Attention), lambda p, n, m: FusedAttention(m))
    if group_norm:
        # a GroupNorm followed by a SiLU: (norm attribute, activation attribute) pairs in the reference models
        pairs = (("norm1", "act1"), ("norm2", "act2"), ("conv_norm_out", "conv_act"))
        for parent in list(model.modules()):
            for norm_name, act_name in pairs:
                norm, act = getattr(parent, norm_name, None), getattr(parent, act_name, None)
                if isinstance(norm, nn.GroupNorm) and isinstance(act, nn.SiLU):
                    setattr(parent, norm_name, GroupNormAct(norm, silu=True))
                    setattr(parent, act_name, nn.Identity())
                    report.fused_silu += 1
        report.group_norms = report.fused_silu + _replace(
            model, lambda m: isinstance(m, nn.GroupNorm), lambda p, n, m: GroupNormAct(m, silu=False))
    if int8:
        chosen = set(int8_policy(model, int8_min_params))
        by_module = {id(m): name for name, m in model.named_modules() if name in chosen}

        def build(parent, name, m):
            report.int8_layers.append(by_module[id(m)])
            return (Int8Conv1x1 if _is_1x1_conv(m) else Int8Linear)(m.weight, m.bias)

        _replace(model, lambda m: id(m) in by_module, build)
    return report
