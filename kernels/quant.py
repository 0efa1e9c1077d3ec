"""int8 dynamic quantization in Triton: per-token activation absmax → int8, int8×int8→int32 GEMM, with the
dequantization (per-token × per-output-channel scales) and the bias fused into the GEMM's epilogue.

Provenance: the W8A8 dynamic scheme of SmoothQuant / torchao's ``int8_dynamic_activation_int8_weight`` that the
diffusers guide applies to SD UNets ("Accelerate inference of text-to-image diffusion models"), written as two
kernels. Weights are quantized once at load, per output channel, with the same rounding as the activations.
Rounding is round-half-to-even, done by hand (floor plus an exact fraction test) because libdevice's ``rint``
does not run under the Triton interpreter. So the kernel's int8 codes equal ``torch.round``'s bit for bit.
"""

import torch
import triton
import triton.language as tl

from .runtime import check_device, on_device

SCALE_FLOOR = 1e-8  # absmax floor: an all-zero row gets codes 0, not NaN
GEMM_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3)  # 4 warps spill on sm_90


def quantize_block(k):
    """Columns per tile of the quantize kernel: the whole row up to 1024."""
    return min(1024, triton.next_power_of_2(k))


@triton.jit
def _round_half_even(v):
    f = tl.floor(v)
    frac = v - f  # exact for |v| < 2**23
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), f + 1.0, f)


@triton.jit
def _quantize_int8_kernel(
    x_ptr,  # (M, K) activations, row stride stride_xm, unit column stride
    codes_ptr,  # (M, K) int8 out, contiguous
    scales_ptr,  # (M,) fp32 out: absmax / 127
    K, stride_xm, scale_floor,
    BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.abs(x))
    scale = tl.math.div_rn(tl.maximum(tl.max(absmax, axis=0), scale_floor), 127.0)
    for start in range(0, K, BLOCK_K):
        offs = start + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
        q = _round_half_even(tl.math.div_rn(x, scale))  # IEEE division, as torch does it
        q = tl.minimum(tl.maximum(q, -127.0), 127.0)
        tl.store(codes_ptr + row * K + offs, q.to(tl.int8), mask=offs < K)
    tl.store(scales_ptr + row, scale)


@triton.jit
def _int8_matmul_kernel(
    a_ptr,  # (M, K) int8 activation codes, contiguous
    b_ptr,  # (N, K) int8 weight codes, contiguous (nn.Linear layout)
    a_scale_ptr,  # (M,) fp32 per-token scales
    b_scale_ptr,  # (N,) fp32 per-output-channel scales
    bias_ptr,  # (N,) bias (unused unless HAS_BIAS)
    out_ptr,  # (M, N) output in the activation dtype, contiguous
    M, N, K,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for start in range(0, K, BLOCK_K):
        offs_k = start + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        a = tl.load(a_ptr + offs_m[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0)
        b = tl.load(b_ptr + offs_n[:, None].to(tl.int64) * K + offs_k[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0)
        acc += tl.dot(a, tl.trans(b), out_dtype=tl.int32)
    a_scale = tl.load(a_scale_ptr + offs_m, mask=m_mask, other=0.0)
    b_scale = tl.load(b_scale_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def quantize_int8_ref(x):
    """(M, K) → int8 codes (M, K), fp32 scales (M,): absmax/127 per row, round half to even, clamp ±127."""
    x = x.float()
    absmax = x.abs().amax(dim=-1).clamp(min=SCALE_FLOOR)
    # absmax/127 rounded once, as the kernel's IEEE division does, on every device: torch on CUDA divides by a Python
    # scalar as a multiply by its reciprocal (one ulp off in ~5% of rows, and then codes off by one). The float64
    # quotient rounded to float32 is the correctly rounded one (53 ≥ 2·24 + 2 bits), however float64 divides.
    scales = (absmax.double() / 127.0).float()
    return torch.round(x / scales[:, None]).clamp(-127, 127).to(torch.int8), scales  # tensor ÷ tensor: IEEE


def int8_linear_ref(x, w_codes, w_scales, bias=None):
    """Dequantized reference of int8_linear: the same quantization, the product in fp32 (exact int sums)."""
    x2 = x.reshape(-1, x.shape[-1])
    codes, scales = quantize_int8_ref(x2)
    out = (codes.float() @ w_codes.float().t()) * scales[:, None] * w_scales[None, :].float()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], -1)


def quantize_int8(x):
    """Per-row dynamic quantization of a 2-D tensor (K contiguous): → (int8 codes (M, K), fp32 scales (M,))."""
    if x.ndim != 2:
        raise ValueError(f"quantize_int8: x must be (M, K), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"quantize_int8: dtype must be float32, float16 or bfloat16, got {x.dtype}")
    check_device(x, "quantize_int8")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    codes = torch.empty((m, k), device=x.device, dtype=torch.int8)
    scales = torch.empty((m,), device=x.device, dtype=torch.float32)
    if m:
        _quantize_int8_kernel[(m,)](x, codes, scales, k, x.stride(0), SCALE_FLOOR,
                                    BLOCK_K=quantize_block(k))
    return codes, scales


def int8_linear(x, w_codes, w_scales, bias=None):
    """y = x·Wᵀ + b with x quantized per token on the fly and W given as int8 codes (N, K) + fp32 scales (N,)."""
    k = x.shape[-1]
    if w_codes.dtype != torch.int8 or w_codes.ndim != 2 or w_codes.shape[1] != k:
        raise ValueError(f"int8_linear: w_codes must be int8 (N, {k}), got {w_codes.dtype} {tuple(w_codes.shape)}")
    n = w_codes.shape[0]
    if w_scales.shape != (n,):
        raise ValueError(f"int8_linear: w_scales must have shape ({n},), got {tuple(w_scales.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"int8_linear: bias must have shape ({n},), got {tuple(bias.shape)}")
    codes, scales = quantize_int8(x.reshape(-1, k))
    m = codes.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m:
        _int8_matmul_kernel[(triton.cdiv(m, GEMM_CONFIG["BLOCK_M"]), triton.cdiv(n, GEMM_CONFIG["BLOCK_N"]))](
            codes, w_codes.contiguous(), scales, w_scales.float().contiguous(), bias if bias is not None else scales,
            out, m, n, k, HAS_BIAS=bias is not None, **GEMM_CONFIG)
    return out.reshape(*x.shape[:-1], n)


@torch.library.custom_op("rtcore::int8_linear", mutates_args=())
def int8_linear_op(x: torch.Tensor, w_codes: torch.Tensor, w_scales: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    with on_device(x):
        return int8_linear(x, w_codes, w_scales, bias)


@int8_linear_op.register_fake
def _(x, w_codes, w_scales, bias):
    return x.new_empty((*x.shape[:-1], w_codes.shape[0]))
