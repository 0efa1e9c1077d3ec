"""int8 dynamic quantization: codes and scales equal the reference's exactly (on CPU and CUDA alike), dequantized
products loosely."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from rtcore.kernels.quant import int8_linear, int8_linear_ref, quantize_int8, quantize_int8_ref


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("m,k", [(1, 1), (5, 37), (33, 130)])
def test_quantize_int8_codes_exact(dtype, m, k):
    x = (torch.randn(m, k) * 4).to(dtype)
    codes, scales = quantize_int8(x)
    ref_codes, ref_scales = quantize_int8_ref(x)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert torch.equal(codes, ref_codes), f"{(codes != ref_codes).sum().item()} codes differ"
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)


@pytest.mark.interpreter
def test_reference_scales_are_rounded_once_on_every_device():
    """The reference must not depend on how a device divides: CUDA's multiply by a reciprocal (emulated here in
    float32, as torch's CUDA kernel computes it) is one ulp off in a few percent of rows; the reference is not."""
    x = torch.randn(2000, 64) * 4
    _, scales = quantize_int8_ref(x)
    absmax = x.abs().amax(dim=-1).cpu()
    for a, s in zip(absmax.tolist(), scales.cpu().numpy()):  # s is the float32 nearest to a/127, computed in ℚ
        error = abs(Fraction(float(s)) - Fraction(a) / 127)
        for neighbour in (np.nextafter(s, np.float32(0)), np.nextafter(s, np.float32(np.inf))):
            assert error <= abs(Fraction(float(neighbour)) - Fraction(a) / 127)
    exact = scales.cpu()
    reciprocal = absmax * torch.tensor(1.0 / 127.0, dtype=torch.float32, device="cpu")
    assert 0.01 < (reciprocal != exact).float().mean().item() < 0.2  # what the gpu tier saw: the check can fail


@pytest.mark.interpreter
def test_round_half_to_even_and_zero_rows():
    # scale = 127/127 = 1: the codes are the values rounded, ties to even
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.4999998, 0.49999997], [0.0] * 9])
    codes, scales = quantize_int8(x)
    assert codes[0].tolist() == [127, 0, 2, 2, 0, -2, -2, 3, 0]
    assert codes[1].tolist() == [0] * 9 and torch.isfinite(scales).all()


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("m,k,n", [(1, 16, 16), (37, 40, 24), (70, 130, 90)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear(dtype, atol, m, k, n, with_bias):
    x = torch.randn(2, m, k).to(dtype)  # leading dims are flattened into tokens
    w = torch.randn(n, k)
    w_codes, w_scales = quantize_int8_ref(w)
    bias = torch.randn(n).to(dtype) if with_bias else None
    out = int8_linear(x, w_codes, w_scales, bias)
    assert out.shape == (2, m, n) and out.dtype == dtype
    # exact integer sums: the kernel equals the dequantized reference up to the fp rounding of the epilogue
    torch.testing.assert_close(out, int8_linear_ref(x, w_codes, w_scales, bias), atol=atol, rtol=1e-3)
    full = x.float() @ w.t() + (bias.float() if with_bias else 0)
    rel = ((out.float() - full).norm() / full.norm()).item()
    print(f"relative error vs full precision: {rel:.3e}")
    assert rel <= 3e-2


@pytest.mark.interpreter
@pytest.mark.parametrize("call,match", [
    (lambda: quantize_int8(torch.randn(2, 3, 4)), "shape"),
    (lambda: quantize_int8(torch.randint(0, 3, (2, 3))), "dtype"),
    (lambda: int8_linear(torch.randn(2, 8), torch.zeros(4, 8), torch.ones(4)), "int8"),
    (lambda: int8_linear(torch.randn(2, 8), torch.zeros(4, 8, dtype=torch.int8), torch.ones(3)), "w_scales"),
])
def test_quant_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.interpreter
def test_custom_op_registration():
    w_codes, w_scales = quantize_int8_ref(torch.randn(16, 32))
    torch.library.opcheck(torch.ops.rtcore.int8_linear.default, (torch.randn(5, 32), w_codes, w_scales, None))


@pytest.mark.gpu
@pytest.mark.parametrize("kn", [320, 640, 1280])
def test_sd_shapes(kn):
    x = torch.randn(8192, kn, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(kn, kn, device="cuda")
    w_codes, w_scales = quantize_int8_ref(w)
    codes, scales = quantize_int8(x)
    ref_codes, ref_scales = quantize_int8_ref(x)  # rounded as the kernel rounds, whatever CUDA's division does
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)
    out = int8_linear(x, w_codes, w_scales)
    full = x.float() @ w.t()
    assert ((out.float() - full).norm() / full.norm()).item() <= 3e-2
