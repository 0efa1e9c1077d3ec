"""GroupNorm (+ SiLU, + residual add) in Triton.

Provenance: the two-kernel structure of Triton's layer-norm tutorial (statistics, then apply), adapted to groups.
Trade-off: SD's groups range from 10 K elements (UNet, 64² latents) to ~1 M (VAE decoder at 512²: 128 channels
/ 32 groups × 262 144 pixels). One program per group would leave most of an H100 idle and accumulate a
million terms serially, so each group is split into chunks: every chunk computes its mean and M2 tile by tile,
merged with Chan's parallel formula (no E[x²] − E[x]² cancellation), and the apply kernel merges the chunk
partials again before normalising. Statistics are fp32 whatever the input dtype.

NCHW groups of at most SINGLE_PASS_MAX elements skip all of that: one program per group loads the group into
registers, normalises it and stores it (one launch instead of two).

Layouts: NCHW-contiguous and channels_last, read in place through strides (H and W must merge into one
pixel axis, which holds for both). The apply kernels optionally fuse SiLU and a residual add.

channels_last has kernels of its own. There a group's channels are contiguous only within one pixel (SD's 10–40
channels per group: 20–80-byte runs, 8 bytes in the VAE's 4-channel groups), so walking one group at a time reads
short runs strided by the pixel pitch. The channels_last kernels instead tile (pixels × groups × channels of a
group): each pixel's whole channel row, every group at once, is one contiguous read, and statistics are kept per
group as vectors. The channels-of-a-group axis is padded to a power of two and masked (10 → 16 lanes).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .runtime import check_device, on_device

MAX_CHUNKS = 64  # partial statistics per group; a power of two (the apply kernel loads them as one block)
SINGLE_PASS_MAX = 4096  # groups up to this many elements: one program loads, normalises and stores the group
BLOCK = 1024  # elements per tile of the chunked kernels
CL_TILE = 4096  # elements per tile of the channels_last kernels (padded lanes included)
CL_WARPS = 8  # 16 tile elements per thread: with 4 warps the apply kernel needed 240-254 registers on sm_90


def single_pass_config(group_elems):
    """Launch constants of the single-pass kernel: the whole group in one power-of-two block."""
    return dict(BLOCK=triton.next_power_of_2(group_elems), num_warps=8 if group_elems > 2048 else 4)


@triton.jit
def _chan_merge(count, mean, m2, n_b, mean_b, m2_b):
    total = count + n_b
    delta = mean_b - mean
    ratio = tl.where(total > 0, n_b / tl.maximum(total, 1.0), 0.0)
    return total, mean + delta * ratio, m2 + m2_b + delta * delta * count * ratio


@triton.jit
def _load_tile(x_ptr, idx, mask, n, g, C_PER_G, HW, stride_n, stride_c, stride_p):
    """Elements idx of group g of sample n (channel outer, pixel inner), in fp32, with what the epilogue needs to
    store them back."""
    ch, p = g * C_PER_G + idx // HW, idx % HW
    offs = n.to(tl.int64) * stride_n + ch.to(tl.int64) * stride_c + p.to(tl.int64) * stride_p
    return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32), offs, ch, p


@triton.jit
def _affine_act_store(y, y_ptr, offs, res_ptr, w_ptr, b_ptr, n, ch, p, mask, rstride_n, rstride_c, rstride_p,
                      HAS_AFFINE: tl.constexpr, APPLY_SILU: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The epilogue shared by every apply path: scale/shift, SiLU, residual add, store in the output dtype."""
    if HAS_AFFINE:
        y = y * tl.load(w_ptr + ch, mask=mask, other=1.0).to(tl.float32)
        y = y + tl.load(b_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    if APPLY_SILU:
        y = y * tl.sigmoid(y)
    if HAS_RESIDUAL:
        roffs = n.to(tl.int64) * rstride_n + ch.to(tl.int64) * rstride_c + p.to(tl.int64) * rstride_p
        y = y + tl.load(res_ptr + roffs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _merge_chunks(mean_ptr, m2_ptr, offs, mask, n_k, group_elems, eps):
    """Mean and 1/std of a group from its chunk partials (count n_k, mean, M2), the chunks along axis 0 of
    ``offs``: one group (chunks,) or every group at once (chunks, groups)."""
    mean_k = tl.load(mean_ptr + offs, mask=mask, other=0.0)
    m2_k = tl.load(m2_ptr + offs, mask=mask, other=0.0)
    mean = tl.sum(n_k * mean_k, axis=0) / group_elems
    dev = tl.where(mask, mean_k - mean, 0.0)
    var = (tl.sum(m2_k, axis=0) + tl.sum(n_k * dev * dev, axis=0)) / group_elems
    return mean, tl.rsqrt(var + eps)


@triton.jit
def _group_norm_stats_kernel(
    x_ptr,  # (N, C, H, W) input, any strides where H, W merge into one pixel axis
    mean_ptr,  # (N·G, CHUNKS) fp32 out: mean of each chunk
    m2_ptr,  # (N·G, CHUNKS) fp32 out: sum of squared deviations of each chunk
    G, C_PER_G, HW, stride_n, stride_c, stride_p, chunk_size, num_chunks,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # n·G + g
    chunk = tl.program_id(1)
    n = row // G
    g = row % G
    base = x_ptr + n.to(tl.int64) * stride_n + (g * C_PER_G).to(tl.int64) * stride_c
    group_elems = C_PER_G * HW
    start = chunk * chunk_size
    end = tl.minimum(start + chunk_size, group_elems)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for off in range(start, end, BLOCK):
        idx = off + tl.arange(0, BLOCK)
        mask = idx < end
        c, p = idx // HW, idx % HW
        x = tl.load(base + c.to(tl.int64) * stride_c + p.to(tl.int64) * stride_p, mask=mask, other=0.0)
        x = x.to(tl.float32)
        n_b = tl.sum(mask.to(tl.float32), axis=0)
        mean_b = tl.sum(x, axis=0) / n_b
        d = tl.where(mask, x - mean_b, 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, n_b, mean_b, tl.sum(d * d, axis=0))
    tl.store(mean_ptr + row * num_chunks + chunk, mean)
    tl.store(m2_ptr + row * num_chunks + chunk, m2)


@triton.jit
def _group_norm_apply_kernel(
    x_ptr,  # (N, C, H, W) input, strides as in the stats kernel
    y_ptr,  # (N, C, H, W) output, same strides as x
    res_ptr,  # (N, C, H, W) residual added after the activation (unused unless HAS_RESIDUAL)
    w_ptr,  # (C,) scale (unused unless HAS_AFFINE)
    b_ptr,  # (C,) shift (unused unless HAS_AFFINE)
    mean_ptr,  # (N·G, CHUNKS) fp32 chunk means
    m2_ptr,  # (N·G, CHUNKS) fp32 chunk M2
    G, C_PER_G, HW, stride_n, stride_c, stride_p, rstride_n, rstride_c, rstride_p,
    chunk_size, num_chunks, eps,
    HAS_AFFINE: tl.constexpr, APPLY_SILU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    row = tl.program_id(0)
    n = row // G
    g = row % G
    group_elems = C_PER_G * HW

    # merge the chunk partials (cheap: at most MAX_CHUNKS values, re-done by each program of the group)
    k = tl.arange(0, BLOCK_CHUNKS)
    k_mask = k < num_chunks
    n_k = tl.where(k_mask, tl.minimum(chunk_size, group_elems - k * chunk_size), 0).to(tl.float32)
    mean, rstd = _merge_chunks(mean_ptr, m2_ptr, row * num_chunks + k, k_mask, n_k, group_elems, eps)

    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < group_elems
    x, offs, ch, p = _load_tile(x_ptr, idx, mask, n, g, C_PER_G, HW, stride_n, stride_c, stride_p)
    _affine_act_store((x - mean) * rstd, y_ptr, offs, res_ptr, w_ptr, b_ptr, n, ch, p, mask,
                      rstride_n, rstride_c, rstride_p, HAS_AFFINE, APPLY_SILU, HAS_RESIDUAL)


@triton.jit
def _group_norm_single_pass_kernel(
    x_ptr,  # (N, C, H, W) input, strides as in the stats kernel
    y_ptr,  # (N, C, H, W) output, same strides as x
    res_ptr,  # (N, C, H, W) residual (unused unless HAS_RESIDUAL)
    w_ptr,  # (C,) scale (unused unless HAS_AFFINE)
    b_ptr,  # (C,) shift (unused unless HAS_AFFINE)
    G, C_PER_G, HW, stride_n, stride_c, stride_p, rstride_n, rstride_c, rstride_p, eps,
    HAS_AFFINE: tl.constexpr, APPLY_SILU: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """Small groups (≤ SINGLE_PASS_MAX elements) in one launch: the whole group sits in registers."""
    row = tl.program_id(0)
    n = row // G
    g = row % G
    group_elems = C_PER_G * HW
    idx = tl.arange(0, BLOCK)
    mask = idx < group_elems
    x, offs, ch, p = _load_tile(x_ptr, idx, mask, n, g, C_PER_G, HW, stride_n, stride_c, stride_p)
    mean = tl.sum(x, axis=0) / group_elems
    d = tl.where(mask, x - mean, 0.0)
    _affine_act_store(d * tl.rsqrt(tl.sum(d * d, axis=0) / group_elems + eps), y_ptr, offs, res_ptr, w_ptr, b_ptr,
                      n, ch, p, mask, rstride_n, rstride_c, rstride_p, HAS_AFFINE, APPLY_SILU, HAS_RESIDUAL)


@triton.jit
def _cl_tile(p0, end, G, C_PER_G, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """A (pixels, groups, channels of a group) tile from pixel p0: its pixel and channel indices and mask."""
    p = p0 + tl.arange(0, BLOCK_P)[:, None, None]
    g = tl.arange(0, BLOCK_G)[None, :, None]
    j = tl.arange(0, BLOCK_CG)[None, None, :]
    return p, g * C_PER_G + j, (p < end) & (g < G) & (j < C_PER_G)


@triton.jit
def _group_sum(t):
    """(pixels, groups, channels) → (groups,)"""
    return tl.sum(tl.sum(t, axis=2), axis=0)


@triton.jit
def _group_norm_stats_cl_kernel(
    x_ptr,  # (N, C, H, W) channels_last input
    mean_ptr,  # (N·G, CHUNKS) fp32 out: mean of each group over a chunk of pixels
    m2_ptr,  # (N·G, CHUNKS) fp32 out: sum of squared deviations, likewise
    G, C_PER_G, HW, stride_n, stride_c, stride_p, chunk_pixels, num_chunks,
    BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    n = tl.program_id(0)
    chunk = tl.program_id(1)
    base = x_ptr + n.to(tl.int64) * stride_n
    start = chunk * chunk_pixels
    end = tl.minimum(start + chunk_pixels, HW)
    count = tl.zeros([BLOCK_G], tl.float32)
    mean = tl.zeros([BLOCK_G], tl.float32)
    m2 = tl.zeros([BLOCK_G], tl.float32)
    for p0 in range(start, end, BLOCK_P):
        p, ch, mask = _cl_tile(p0, end, G, C_PER_G, BLOCK_P, BLOCK_G, BLOCK_CG)
        x = tl.load(base + ch.to(tl.int64) * stride_c + p.to(tl.int64) * stride_p, mask=mask, other=0.0)
        x = x.to(tl.float32)
        n_b = _group_sum(mask.to(tl.float32))
        mean_b = _group_sum(x) / tl.maximum(n_b, 1.0)
        d = tl.where(mask, x - mean_b[None, :, None], 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, n_b, mean_b, _group_sum(d * d))
    g = tl.arange(0, BLOCK_G)
    out = (n * G + g) * num_chunks + chunk
    tl.store(mean_ptr + out, mean, mask=g < G)
    tl.store(m2_ptr + out, m2, mask=g < G)


@triton.jit
def _group_norm_apply_cl_kernel(
    x_ptr,  # (N, C, H, W) channels_last input
    y_ptr,  # (N, C, H, W) output, same strides as x
    res_ptr,  # (N, C, H, W) residual, any pixel strides (unused unless HAS_RESIDUAL)
    w_ptr,  # (C,) scale (unused unless HAS_AFFINE)
    b_ptr,  # (C,) shift (unused unless HAS_AFFINE)
    mean_ptr,  # (N·G, CHUNKS) fp32 chunk means
    m2_ptr,  # (N·G, CHUNKS) fp32 chunk M2
    G, C_PER_G, HW, stride_n, stride_c, stride_p, rstride_n, rstride_c, rstride_p,
    chunk_pixels, num_chunks, eps,
    HAS_AFFINE: tl.constexpr, APPLY_SILU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, BLOCK_CHUNKS: tl.constexpr,
):
    n = tl.program_id(0)
    group_elems = C_PER_G * HW

    # merge every group's chunk partials at once: a (chunks, groups) tile
    k = tl.arange(0, BLOCK_CHUNKS)[:, None]
    g = tl.arange(0, BLOCK_G)[None, :]
    km = (k < num_chunks) & (g < G)
    n_k = tl.where(km, tl.minimum(chunk_pixels, HW - k * chunk_pixels) * C_PER_G, 0).to(tl.float32)
    mean, rstd = _merge_chunks(mean_ptr, m2_ptr, (n * G + g) * num_chunks + k, km, n_k, group_elems, eps)

    p, ch, mask = _cl_tile(tl.program_id(1) * BLOCK_P, HW, G, C_PER_G, BLOCK_P, BLOCK_G, BLOCK_CG)
    offs = n.to(tl.int64) * stride_n + ch.to(tl.int64) * stride_c + p.to(tl.int64) * stride_p
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean[None, :, None]) * rstd[None, :, None]
    _affine_act_store(y, y_ptr, offs, res_ptr, w_ptr, b_ptr, n, ch, p, mask, rstride_n, rstride_c, rstride_p,
                      HAS_AFFINE, APPLY_SILU, HAS_RESIDUAL)


def group_norm_ref(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False, residual=None):
    """The pure-torch path the kernel replaces, in fp32, cast back to x's dtype."""
    y = F.group_norm(x.float(), num_groups, None if weight is None else weight.float(),
                     None if bias is None else bias.float(), eps)
    if silu:
        y = F.silu(y)
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def _pixel_strides(t):
    """(stride_n, stride_c, stride_p, channels_last) if H and W merge into one axis, else None."""
    n_, c_, h_, w_ = t.stride()
    if t.shape[2] > 1 and h_ != t.shape[3] * w_:
        return None
    return n_, c_, w_, c_ == 1 and t.shape[1] > 1


def _kernel_layout(x):
    """(input, output) as the kernels use them: the kernels write the output through the input's strides, so
    both must share them. empty_like keeps x's strides only when x is dense (no channel slice, no expanded
    batch), and H and W must merge into one pixel axis; anything else is read from a contiguous copy."""
    y = torch.empty_like(x)
    if _pixel_strides(x) is None or y.stride() != x.stride():
        x = x.contiguous()
        y = torch.empty_like(x)
    return x, y


def channels_last_config(channels, groups, hw):
    """Launch constants of the channels_last kernels: tiles of ~CL_TILE elements, whole pixels each; each sample's
    pixels split into up to MAX_CHUNKS chunks for the statistics."""
    block_g, block_cg = triton.next_power_of_2(groups), triton.next_power_of_2(channels // groups)
    block_p = max(1, CL_TILE // (block_g * block_cg))
    chunk_pixels = triton.cdiv(max(block_p, triton.cdiv(hw, MAX_CHUNKS)), block_p) * block_p
    tiles = dict(BLOCK_P=block_p, BLOCK_G=block_g, BLOCK_CG=block_cg, num_warps=CL_WARPS)
    return tiles, chunk_pixels, triton.cdiv(hw, chunk_pixels)


def _chunking(group_elems):
    """Chunk size so that a big group is spread over up to MAX_CHUNKS programs of ≥ 4096 elements."""
    chunk = max(4096, triton.cdiv(group_elems, MAX_CHUNKS))
    return chunk, triton.cdiv(group_elems, chunk)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, silu=False, residual=None):
    """GroupNorm over (N, C, H, W) (3-D (N, C, L) also accepted), optionally followed by SiLU and + residual."""
    if x.ndim not in (3, 4):
        raise ValueError(f"group_norm: x must be (N, C, H, W) or (N, C, L), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"group_norm: x dtype must be float32, float16 or bfloat16, got {x.dtype}")
    check_device(x, "group_norm")
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(-1)
        residual = None if residual is None else residual.unsqueeze(-1)
    n, c, h, w = x.shape
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"group_norm: channels ({c}) must be divisible by num_groups ({num_groups})")
    if (weight is None) != (bias is None):
        raise ValueError("group_norm: pass both weight and bias, or neither")
    if weight is not None and (weight.shape != (c,) or bias.shape != (c,)):
        raise ValueError(f"group_norm: weight and bias must have shape ({c},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"group_norm: residual shape {tuple(residual.shape)} must equal x's {tuple(x.shape)}")
    x, y = _kernel_layout(x)
    stride_n, stride_c, stride_p, channels_last = _pixel_strides(x)
    if residual is not None and _pixel_strides(residual) is None:
        residual = residual.contiguous()
    rstrides = _pixel_strides(residual)[:3] if residual is not None else (0, 0, 0)

    c_per_g, hw = c // num_groups, h * w
    rows = n * num_groups
    has_affine = weight is not None
    flags = dict(HAS_AFFINE=has_affine, APPLY_SILU=silu, HAS_RESIDUAL=residual is not None)
    pointers = (x, y, residual if residual is not None else x, weight if has_affine else x,
                bias if has_affine else x)
    if channels_last:
        tiles, chunk_pixels, num_chunks = channels_last_config(c, num_groups, hw)
        means = torch.empty((rows, num_chunks), device=x.device, dtype=torch.float32)
        m2s = torch.empty_like(means)
        _group_norm_stats_cl_kernel[(n, num_chunks)](
            x, means, m2s, num_groups, c_per_g, hw, stride_n, stride_c, stride_p, chunk_pixels, num_chunks, **tiles)
        _group_norm_apply_cl_kernel[(n, triton.cdiv(hw, tiles["BLOCK_P"]))](
            *pointers, means, m2s, num_groups, c_per_g, hw, stride_n, stride_c, stride_p, *rstrides, chunk_pixels,
            num_chunks, eps, **flags, **tiles, BLOCK_CHUNKS=triton.next_power_of_2(num_chunks))
        return y.squeeze(-1) if squeeze else y
    if c_per_g * hw <= SINGLE_PASS_MAX:
        _group_norm_single_pass_kernel[(rows,)](
            *pointers, num_groups, c_per_g, hw, stride_n, stride_c, stride_p, *rstrides, eps, **flags,
            **single_pass_config(c_per_g * hw))
        return y.squeeze(-1) if squeeze else y

    chunk, num_chunks = _chunking(c_per_g * hw)
    means = torch.empty((rows, num_chunks), device=x.device, dtype=torch.float32)
    m2s = torch.empty_like(means)
    _group_norm_stats_kernel[(rows, num_chunks)](
        x, means, m2s, num_groups, c_per_g, hw, stride_n, stride_c, stride_p, chunk, num_chunks, BLOCK=BLOCK)
    _group_norm_apply_kernel[(rows, triton.cdiv(c_per_g * hw, BLOCK))](
        *pointers, means, m2s, num_groups, c_per_g, hw, stride_n, stride_c, stride_p, *rstrides, chunk, num_chunks,
        eps, **flags, BLOCK=BLOCK, BLOCK_CHUNKS=triton.next_power_of_2(num_chunks))
    return y.squeeze(-1) if squeeze else y


@torch.library.custom_op("rtcore::group_norm", mutates_args=())
def group_norm_op(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  eps: float, silu: bool, residual: torch.Tensor | None) -> torch.Tensor:
    with on_device(x):
        return group_norm(x, num_groups, weight, bias, eps, silu, residual)


@group_norm_op.register_fake
def _(x, num_groups, weight, bias, eps, silu, residual):  # the real op's output strides, for compile and export
    return _kernel_layout(x.unsqueeze(-1))[1].squeeze(-1) if x.ndim == 3 else _kernel_layout(x)[1]
