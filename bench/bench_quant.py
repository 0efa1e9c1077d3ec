"""int8_linear (dynamic per-token int8 × per-channel int8 weights, fused dequant) vs bf16 matmul and
torch._int_mm on pre-quantized inputs; reports TFLOP/s (2·M·N·K per call)."""

import pytest
import torch

from rtcore.bench.common import kernel_benchmark, record_rate


@pytest.mark.parametrize("kn", [320, 640, 1280])
@pytest.mark.parametrize("impl", ["rtcore_int8", "torch_bf16", "torch_int_mm"])
def test_int8_linear(benchmark, cuda, kn, impl):
    from rtcore.kernels.quant import int8_linear, quantize_int8_ref

    m = 8192
    x = torch.randn(m, kn, device=cuda, dtype=torch.bfloat16)
    w = torch.randn(kn, kn, device=cuda, dtype=torch.bfloat16)
    w_codes, w_scales = quantize_int8_ref(w)
    if impl == "rtcore_int8":
        fn = lambda: int8_linear(x, w_codes, w_scales)  # noqa: E731
    elif impl == "torch_bf16":
        fn = lambda: x @ w.t()  # noqa: E731
    else:  # the GEMM alone, activations already quantized: a lower bound for any int8 path built on torch
        x_codes, _ = quantize_int8_ref(x)
        w_t = w_codes.t().contiguous()
        fn = lambda: torch._int_mm(x_codes, w_t)  # noqa: E731
    kernel_benchmark(benchmark, fn, cuda, op="int8_linear", impl=impl, m=m, k=kn, n=kn)
    record_rate(benchmark, flops=2 * m * kn * kn)
