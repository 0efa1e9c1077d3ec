"""Fused-QKV attention in Triton: flash-style online softmax that reads Q, K and V straight from packed buffers.

Provenance: Triton tutorial 06-fused-attention (forward pass) and FlashAttention's online softmax, cut down to
what SD needs: no mask and no dropout, one softmax scale, fp32 accumulation.
Trade-off: the projections are ONE GEMM against the concatenated [W_q; W_k; W_v] (or [W_k; W_v] for
cross-attention), and the kernel reads heads out of that (B, S, 3·H·D) buffer through strides. So no transpose
to (B, H, S, D) and no contiguous copy happen between the GEMM and the attention.

Head dims are covered by one or two power-of-two column tiles, masked: 64 is one tile, 40 = 32 + 16 (of 48),
80 = 64 + 16 and 160 = 128 + 32 exactly (padding 160 to 256 wasted 37% of the work). Sequence lengths need not
be multiples of the blocks, and L = 77 text tokens is one masked block. The VAE's single 512-wide head would need
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
def _load_tile(ptr, base, rows, row_mask, stride, col, offs, D):
    """Rows × head columns col + offs (masked to the head's D columns and to the valid rows)."""
    return tl.load(ptr + base + rows[:, None].to(tl.int64) * stride + col + offs[None, :],
                   mask=row_mask[:, None] & (offs < D)[None, :], other=0.0)


@triton.jit
def _attention_kernel(
    q_ptr,  # (B, S, ·) queries; head h at columns [h·D, (h+1)·D), row stride stride_qs
    k_ptr,  # (B, L, ·) keys, same column layout
    v_ptr,  # (B, L, ·) values, same column layout
    o_ptr,  # (B, S, H·D) output
    stride_qb, stride_qs, stride_kb, stride_ks, stride_vb, stride_vs, stride_ob, stride_os,
    H, S, L, D, qk_scale,  # qk_scale = softmax scale · log2(e): the kernel works in base 2
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_E: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The head's D columns are one tile of BLOCK_D or, when BLOCK_E > 0, two: [0, BLOCK_D) and
    [BLOCK_D, BLOCK_D + BLOCK_E), each a power of two (160 = 128 + 32 instead of 256; 80 = 64 + 16 instead of 128).
    Q·Kᵀ sums the two tiles' products; P·V fills the two accumulators."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    col = (bh % H) * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < S
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_ptr, b * stride_qb, offs_m, m_mask, stride_qs, col, offs_d, D)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    if BLOCK_E > 0:
        offs_e = BLOCK_D + tl.arange(0, BLOCK_E)
        q_e = _load_tile(q_ptr, b * stride_qb, offs_m, m_mask, stride_qs, col, offs_e, D)
        acc_e = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, L, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < L
        k = _load_tile(k_ptr, b * stride_kb, offs_n, n_mask, stride_ks, col, offs_d, D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if BLOCK_E > 0:
            k_e = _load_tile(k_ptr, b * stride_kb, offs_n, n_mask, stride_ks, col, offs_e, D)
            qk += tl.dot(q_e, tl.trans(k_e), input_precision=PRECISION)
        qk = tl.where(n_mask[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, axis=1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = _load_tile(v_ptr, b * stride_vb, offs_n, n_mask, stride_vs, col, offs_d, D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        if BLOCK_E > 0:
            v_e = _load_tile(v_ptr, b * stride_vb, offs_n, n_mask, stride_vs, col, offs_e, D)
            acc_e = acc_e * alpha[:, None] + tl.dot(p.to(v_e.dtype), v_e, input_precision=PRECISION)
        m_i = m_new
    out = o_ptr + b * stride_ob + offs_m[:, None].to(tl.int64) * stride_os + col
    tl.store(out + offs_d[None, :], (acc / l_i[:, None]).to(o_ptr.dtype.element_ty),
             mask=m_mask[:, None] & (offs_d < D)[None, :])
    if BLOCK_E > 0:
        tl.store(out + offs_e[None, :], (acc_e / l_i[:, None]).to(o_ptr.dtype.element_ty),
                 mask=m_mask[:, None] & (offs_e < D)[None, :])


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
    cfg = launch_config(d, q.dtype)
    grid = (triton.cdiv(s, cfg["BLOCK_M"]), b * num_heads)
    _attention_kernel[grid](
        q, k, v, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), num_heads, s, k.shape[1], d, scale * 1.4426950408889634, **cfg)
    return out


def head_tiles(d):
    """(BLOCK_D, BLOCK_E): one power-of-two tile of the head's columns, or two when that pads less. tl.dot needs
    16 columns at least; two tiles are used only when they are narrower than one."""
    single = max(16, triton.next_power_of_2(d))
    first = max(16, single // 2 if single > d else single)
    second = max(16, triton.next_power_of_2(d - first)) if d > first else 0
    return (first, second) if second and first + second < single else (single, 0)


def launch_config(d, dtype):
    """The kernel's constants and launch options for head dim ``d`` (sm_90: bench/compile_sm90.py checks that
    these compile without register spills at SD's head dims)."""
    block_d, block_e = head_tiles(d)
    width = block_d + block_e
    if dtype == torch.float32:  # "ieee" products run on FMA units: small tiles, else the registers spill
        block_m, block_n, num_warps, num_stages = 32, 32 if width <= 64 else 16, 4 if width <= 32 else 8, 2
    else:  # wgmma tiles; 160 = 128 + 32 columns spill with any 128-row tile, and with 64 × 64
        block_m, block_n, num_warps, num_stages = (128, 64, 8, 3) if width <= 128 else (64, 32, 8, 3)
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_E=block_e,
                PRECISION="ieee" if dtype == torch.float32 else "tf32",  # fp32 inputs keep fp32 products
                num_warps=num_warps, num_stages=num_stages)


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
