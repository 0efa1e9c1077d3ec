"""Fused-QKV attention: the Triton kernel on the packed QKV buffer vs torch SDPA (its best backend) on the same
packed buffer; reports TFLOP/s."""

import pytest
import torch
import torch.nn.functional as F

from rtcore.bench.common import kernel_benchmark, record_rate


@pytest.mark.parametrize("d", [40, 80, 160, 64])
@pytest.mark.parametrize("impl", ["rtcore", "sdpa"])
def test_self_attention(benchmark, cuda, d, impl):
    from rtcore.kernels.attention import qkv_attention

    heads, seq = 16, 4096  # B·H = 16, SD 1.x at 512²
    qkv = torch.randn(1, seq, 3 * heads * d, device=cuda, dtype=torch.float16)
    if impl == "rtcore":
        fn = lambda: qkv_attention(qkv, heads)  # noqa: E731
    else:
        q, k, v = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in qkv.split(heads * d, dim=-1))
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    kernel_benchmark(benchmark, fn, cuda, op="qkv_attention", impl=impl, head_dim=d, seq=seq)
    record_rate(benchmark, flops=4 * heads * seq * seq * d)


@pytest.mark.parametrize("d", [40, 80, 160])
@pytest.mark.parametrize("impl", ["rtcore", "sdpa"])
def test_cross_attention(benchmark, cuda, d, impl):
    from rtcore.kernels.attention import kv_attention

    heads, seq, text = 16, 4096, 77
    q = torch.randn(1, seq, heads * d, device=cuda, dtype=torch.float16)
    kv = torch.randn(1, text, 2 * heads * d, device=cuda, dtype=torch.float16)
    if impl == "rtcore":
        fn = lambda: kv_attention(q, kv, heads)  # noqa: E731
    else:
        qh = q.unflatten(-1, (heads, d)).transpose(1, 2)
        k, v = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in kv.split(heads * d, dim=-1))
        fn = lambda: F.scaled_dot_product_attention(qh, k, v)  # noqa: E731
    kernel_benchmark(benchmark, fn, cuda, op="kv_attention", impl=impl, head_dim=d, seq=seq)
    record_rate(benchmark, flops=4 * heads * seq * text * d)
