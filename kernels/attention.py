"""Fused-QKV attention in Triton: flash-style online softmax that reads Q, K and V straight from packed buffers.

Provenance: Triton tutorial 06-fused-attention (forward pass) and FlashAttention's online softmax, cut down to
what SD needs: no mask and no dropout, one softmax scale, fp32 accumulation.
Trade-off: the projections are ONE GEMM against the concatenated [W_q; W_k; W_v] (or [W_k; W_v] for
cross-attention), and the kernel reads heads out of that (B, S, 3·H·D) buffer through strides. So no transpose
to (B, H, S, D) and no contiguous copy happen between the GEMM and the attention.

Head dims 40, 64, 80 and 160 are padded to the next power of two and masked. Sequence lengths need not be
multiples of the blocks, and L = 77 text tokens is one masked block. The VAE's single 512-wide head would need
512 fp32 accumulators per row in registers. Heads wider than MAX_HEAD_DIM (256) therefore take a documented
fallback: PyTorch SDPA on strided views of the same packed buffer (its memory-efficient kernel handles wide heads).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .runtime import check_device, on_device

MAX_HEAD_DIM = 256


@triton.jit
def _attention_kernel(
    q_ptr,  # (B, S, ·) queries; head h at columns [h·D, (h+1)·D), row stride stride_qs
    k_ptr,  # (B, L, ·) keys, same column layout
    v_ptr,  # (B, L, ·) values, same column layout
    o_ptr,  # (B, S, H·D) output
    stride_qb, stride_qs, stride_kb, stride_ks, stride_vb, stride_vs, stride_ob, stride_os,
    H, S, L, D, qk_scale,  # qk_scale = softmax scale · log2(e): the kernel works in base 2
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    col = (bh % H) * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    q = tl.load(q_ptr + b * stride_qb + offs_m[:, None].to(tl.int64) * stride_qs + col + offs_d[None, :],
                mask=(offs_m < S)[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < L
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + b * stride_kb + offs_n[:, None].to(tl.int64) * stride_ks + col + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        qk = tl.where(n_mask[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * stride_vb + offs_n[:, None].to(tl.int64) * stride_vs + col + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o_ptr + b * stride_ob + offs_m[:, None].to(tl.int64) * stride_os + col + offs_d[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=(offs_m < S)[:, None] & d_mask[None, :])


def _heads(t, num_heads):
    """(B, S, H·D) strided view → (B, H, S, D) view, no copy."""
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def attention_ref(q, k, v, num_heads, scale=None):
    """Pure-torch reference: q (B, S, H·D), k/v (B, L, H·D) → (B, S, H·D); fp32 math, cast back."""
    out = F.scaled_dot_product_attention(_heads(q.float(), num_heads), _heads(k.float(), num_heads),
                                         _heads(v.float(), num_heads), scale=scale)
    return out.transpose(1, 2).flatten(2).to(q.dtype)


def _check(name, t, rank=3):
    if t.ndim != rank:
        raise ValueError(f"{name}: expected a (B, S, features) tensor, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: dtype must be float32, float16 or bfloat16, got {t.dtype}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: the feature dimension must be contiguous (stride 1)")


def _attention(q, k, v, num_heads, scale):
    """q (B, S, H·D), k/v (B, L, H·D) strided views with unit feature stride → (B, S, H·D)."""
    check_device(q, "attention")
    b, s, hd = q.shape
    if hd % num_heads:
        raise ValueError(f"attention: features ({hd}) must be divisible by num_heads ({num_heads})")
    d = hd // num_heads
    scale = d ** -0.5 if scale is None else scale
    if d > MAX_HEAD_DIM:  # wide single-head VAE attention: SDPA over strided views of the packed buffer
        out = F.scaled_dot_product_attention(_heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads),
                                             scale=scale)
        return out.transpose(1, 2).reshape(b, s, hd)
    out = torch.empty((b, s, hd), device=q.device, dtype=q.dtype)
    block_d = max(16, triton.next_power_of_2(d))
    if q.dtype == torch.float32:  # "ieee" products run on FMA units: small tiles, else the registers spill
        block_m, block_n, num_warps, num_stages = 32, 32 if block_d <= 128 else 16, 4 if block_d <= 32 else 8, 2
    else:  # wgmma tiles: no register spills up to D = 128 on sm_90 (D = 256 spills a little whatever the tile)
        block_m, block_n, num_warps, num_stages = (128, 64, 8, 3) if block_d <= 128 else (64, 32, 8, 3)
    grid = (triton.cdiv(s, block_m), b * num_heads)
    _attention_kernel[grid](
        q, k, v, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), num_heads, s, k.shape[1], d, scale * 1.4426950408889634,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 inputs keep fp32 products
        num_warps=num_warps, num_stages=num_stages)
    return out


def qkv_attention(qkv, num_heads, scale=None):
    """Self-attention from the packed output of one GEMM: qkv (B, S, 3·H·D) → (B, S, H·D)."""
    _check("qkv", qkv)
    if qkv.shape[-1] % 3:
        raise ValueError(f"qkv: last dimension ({qkv.shape[-1]}) must be 3·H·D")
    hd = qkv.shape[-1] // 3
    return _attention(qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:], num_heads, scale)


def kv_attention(q, kv, num_heads, scale=None):
    """Cross-attention: q (B, S, H·D) and the packed output of one GEMM kv (B, L, 2·H·D) → (B, S, H·D)."""
    _check("q", q)
    _check("kv", kv)
    hd = q.shape[-1]
    if kv.shape[-1] != 2 * hd or kv.shape[0] != q.shape[0]:
        raise ValueError(f"kv: expected shape (B={q.shape[0]}, L, {2 * hd}), got {tuple(kv.shape)}")
    if kv.dtype != q.dtype:
        raise TypeError(f"kv dtype {kv.dtype} must equal q dtype {q.dtype}")
    return _attention(q, kv[..., :hd], kv[..., hd:], num_heads, scale)


@torch.library.custom_op("rtcore::qkv_attention", mutates_args=())
def qkv_attention_op(qkv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    with on_device(qkv):
        return qkv_attention(qkv, num_heads, scale)


@qkv_attention_op.register_fake
def _(qkv, num_heads, scale):
    return qkv.new_empty((*qkv.shape[:-1], qkv.shape[-1] // 3))


@torch.library.custom_op("rtcore::kv_attention", mutates_args=())
def kv_attention_op(q: torch.Tensor, kv: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    with on_device(q):
        return kv_attention(q, kv, num_heads, scale)


@kv_attention_op.register_fake
def _(q, kv, num_heads, scale):
    return q.new_empty(q.shape)  # the kernel's output is contiguous whatever q's strides
