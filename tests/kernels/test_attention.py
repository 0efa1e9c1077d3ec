"""Fused-QKV attention kernels against SDPA: the kernel's error must stay within 2× torch's own error at the same
precision (both measured against an fp64 reference), plus a small atol."""

import pytest
import torch
import torch.nn.functional as F

from rtcore.kernels.attention import MAX_HEAD_DIM, attention_ref, head_tiles, kv_attention, qkv_attention

ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _heads(t, h):
    return t.unflatten(-1, (h, -1)).transpose(1, 2)


def _errors(out, q, k, v, heads):
    """(kernel error, torch error): max abs deviation from fp64 attention of the same inputs."""
    exact = attention_ref(q.double(), k.double(), v.double(), heads)
    torch_out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    torch_out = torch_out.transpose(1, 2).flatten(2)
    return (out.double() - exact).abs().max().item(), (torch_out.double() - exact).abs().max().item()


def _check(out, q, k, v, heads):
    kernel_err, torch_err = _errors(out, q, k, v, heads)
    print(f"kernel err {kernel_err:.2e}, torch err {torch_err:.2e}")
    assert out.shape == q.shape and out.dtype == q.dtype
    assert kernel_err <= 2 * torch_err + ATOL[q.dtype]


# (batch, seq, heads, head_dim): minimal, non-power-of-two seq and head dims, and SD's head dims
SELF_CASES = [(1, 1, 1, 16), (2, 37, 2, 40), (1, 70, 1, 80), (1, 19, 2, 64), (1, 9, 1, 160)]


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,s,h,d", SELF_CASES)
def test_qkv_attention(dtype, b, s, h, d):
    qkv = torch.randn(b, s, 3 * h * d).to(dtype)
    out = qkv_attention(qkv, h)
    q, k, v = qkv.split(h * d, dim=-1)
    _check(out, q, k, v, h)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,s,h,d", [(1, 1, 1, 16), (2, 33, 2, 40), (1, 16, 1, 80)])
def test_kv_attention_with_77_text_tokens(dtype, b, s, h, d):
    q = torch.randn(b, s, h * d).to(dtype)
    kv = torch.randn(b, 77, 2 * h * d).to(dtype)
    out = kv_attention(q, kv, h)
    k, v = kv.split(h * d, dim=-1)
    _check(out, q, k, v, h)


@pytest.mark.interpreter
def test_head_tiles_pad_sd_head_dims_less():
    """SD's head dims in one or two power-of-two tiles: 80 and 160 exactly (one tile would pad them to 128 and
    256), 40 to 48 (not 64), 64 as one tile; the two-tile path is what the cases above with d = 40/80/160 run."""
    assert {d: head_tiles(d) for d in (40, 64, 80, 160)} == {40: (32, 16), 64: (64, 0), 80: (64, 16),
                                                              160: (128, 32)}
    for d in range(1, MAX_HEAD_DIM + 1):
        first, second = head_tiles(d)
        assert first + second >= d and first >= 16 and second in (0,) + tuple(2 ** i for i in range(4, 9))
        assert first + second <= max(16, 2 ** (d - 1).bit_length())  # never more work than one padded tile


@pytest.mark.interpreter
def test_packed_buffer_is_read_in_place():
    """A qkv slice of a larger buffer (row stride ≠ 3·H·D) works: the kernel reads through strides, no copy."""
    big = torch.randn(2, 10, 3 * 32 + 8)
    qkv = big[..., : 3 * 32]
    out = qkv_attention(qkv, 2)
    q, k, v = qkv.split(32, dim=-1)
    torch.testing.assert_close(out, attention_ref(q, k, v, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
def test_wide_single_head_falls_back_to_sdpa():
    d = MAX_HEAD_DIM * 2  # the VAE's 512-wide head
    qkv = torch.randn(1, 12, 3 * d)
    q, k, v = qkv.split(d, dim=-1)
    torch.testing.assert_close(qkv_attention(qkv, 1), attention_ref(q, k, v, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("call,match", [
    (lambda: qkv_attention(torch.randn(1, 4, 10), 1), "3·H·D"),
    (lambda: qkv_attention(torch.randn(4, 12), 1), "shape"),
    (lambda: qkv_attention(torch.randn(1, 4, 12).double(), 1), "dtype"),
    (lambda: qkv_attention(torch.randn(1, 4, 48), 5), "divisible"),
    (lambda: kv_attention(torch.randn(1, 4, 16), torch.randn(1, 7, 16), 1), "kv"),
])
def test_attention_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.interpreter
def test_custom_ops_registration():
    torch.library.opcheck(torch.ops.rtcore.qkv_attention.default, (torch.randn(1, 16, 96), 2, 0.25))
    torch.library.opcheck(torch.ops.rtcore.kv_attention.default, (torch.randn(1, 16, 32), torch.randn(1, 77, 64),
                                                                  2, 0.25))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [40, 80, 160, 64])
def test_sd_shapes(dtype, d):
    heads = 16  # B·H = 16 at S = 4096
    qkv = torch.randn(1, 4096, 3 * heads * d, device="cuda", dtype=dtype)
    q, k, v = qkv.split(heads * d, dim=-1)
    _check(qkv_attention(qkv, heads), q, k, v, heads)
    kv = torch.randn(1, 77, 2 * heads * d, device="cuda", dtype=dtype)
    k, v = kv.split(heads * d, dim=-1)
    _check(kv_attention(q, kv, heads), q, k, v, heads)
