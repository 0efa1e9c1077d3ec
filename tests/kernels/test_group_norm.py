"""GroupNorm(+SiLU, +residual) kernel against its torch reference: interpreter grid on CPU, SD shapes on GPU."""

import pytest
import torch

from rtcore.kernels.group_norm import SINGLE_PASS_MAX, group_norm, group_norm_ref

TOLERANCES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-3, 2e-3)]
# minimal, non-power-of-two, and one whose groups exceed SINGLE_PASS_MAX (the chunked two-kernel path)
SHAPES = [((1, 2, 1, 1), 1), ((2, 6, 5, 3), 3), ((1, 4, 48, 96), 2)]


def _inputs(shape, dtype, device, channels_last):
    x = (torch.randn(shape, device=device) * 3 + 2).to(dtype)  # an offset mean: catches E[x²]−E[x]² cancellation
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    c = shape[1]
    weight = torch.randn(c, device=device).to(dtype)
    bias = torch.randn(c, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype)
    return x, weight, bias, residual


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("silu,use_residual,affine", [(False, False, False), (True, False, True), (True, True, True)])
def test_group_norm_matches_reference(dtype, atol, rtol, shape, groups, channels_last, silu, use_residual, affine):
    x, weight, bias, residual = _inputs(shape, dtype, None, channels_last)  # None: the fixture's device
    kwargs = dict(weight=weight if affine else None, bias=bias if affine else None, eps=1e-5, silu=silu,
                  residual=residual if use_residual else None)
    out = group_norm(x, groups, **kwargs)
    expected = group_norm_ref(x, groups, **kwargs)
    assert out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,groups", [((2, 320, 3, 5), 32), ((1, 40, 30, 33), 4), ((1, 24, 7, 9), 3)])
def test_channels_last_tiles(shape, groups):
    """The channels_last kernels at SD's channels per group (10; padded to 16 lanes), a group count that is not a
    power of two, and many pixel chunks with a partial last one (990 pixels in chunks of 64)."""
    from rtcore.kernels.group_norm import channels_last_config

    x, weight, bias, residual = _inputs(shape, torch.float32, None, channels_last=True)
    residual = residual.to(memory_format=torch.channels_last)
    kwargs = dict(weight=weight, bias=bias, eps=1e-5, silu=True, residual=residual)
    out = group_norm(x, groups, **kwargs)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, group_norm_ref(x, groups, **kwargs), atol=1e-5, rtol=1e-5)
    if shape == (1, 40, 30, 33):
        assert channels_last_config(40, 4, 30 * 33)[1:] == (64, 16)


@pytest.mark.interpreter
def test_chunked_path_is_exercised():
    assert 2 * 48 * 96 > SINGLE_PASS_MAX  # SHAPES[-1] has groups of 9216 elements: three chunks


@pytest.mark.interpreter
@pytest.mark.parametrize("view", ["channel slice", "expanded batch", "transposed pixels"])
def test_strided_views(view):
    """Views whose strides a fresh output cannot share: the kernel must not write through the input's strides."""
    base = torch.randn(2, 16, 6, 5)
    x = {"channel slice": base[:, 4:12], "expanded batch": base[:1].expand(3, -1, -1, -1),
         "transposed pixels": base.transpose(2, 3)}[view]
    torch.testing.assert_close(group_norm(x, 4, silu=True), group_norm_ref(x, 4, silu=True), atol=1e-5, rtol=1e-5)
    # the fake (what torch.compile and export see) has the real output's strides
    torch.library.opcheck(torch.ops.rtcore.group_norm.default, (x, 4, None, None, 1e-5, True, None))


@pytest.mark.interpreter
def test_three_dimensional_input():
    x = torch.randn(2, 8, 33)
    torch.testing.assert_close(group_norm(x, 4, silu=True), group_norm_ref(x, 4, silu=True), atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("call,match", [
    (lambda: group_norm(torch.randn(2, 6, 4, 4), 4), "divisible"),
    (lambda: group_norm(torch.randn(2, 6), 3), "shape"),
    (lambda: group_norm(torch.randn(2, 6, 4, 4).double(), 3), "dtype"),
    (lambda: group_norm(torch.randn(2, 6, 4, 4), 3, weight=torch.ones(6)), "both"),
    (lambda: group_norm(torch.randn(2, 6, 4, 4), 3, residual=torch.randn(2, 6, 4, 5)), "residual"),
])
def test_group_norm_bad_inputs(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.interpreter
def test_custom_op_registration():
    x = torch.randn(2, 8, 4, 4)
    torch.library.opcheck(torch.ops.rtcore.group_norm.default, (x, 4, torch.randn(8), torch.randn(8), 1e-5, True,
                                                               None))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-4, 1e-4), (torch.float16, 4e-3, 4e-3),
                                             (torch.bfloat16, 3e-2, 3e-2)])
@pytest.mark.parametrize("shape", [(2, 320, 64, 64), (1, 128, 512, 512)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_sd_shapes(dtype, atol, rtol, shape, channels_last):
    x, weight, bias, _ = _inputs(shape, dtype, "cuda", channels_last)
    out = group_norm(x, 32, weight, bias, 1e-6, silu=True)
    torch.testing.assert_close(out, group_norm_ref(x, 32, weight, bias, 1e-6, silu=True), atol=atol, rtol=rtol)
