"""GroupNorm+SiLU: the Triton kernel vs torch eager (F.group_norm + F.silu) at SD shapes; reports GB/s."""

import pytest
import torch
import torch.nn.functional as F

from rtcore.bench.common import kernel_benchmark, record_rate

SHAPES = [(2, 320, 64, 64), (1, 128, 512, 512)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", ["rtcore", "torch"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_silu(benchmark, cuda, shape, impl, channels_last):
    from rtcore.kernels.group_norm import group_norm

    x = torch.randn(shape, device=cuda, dtype=torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape[1], device=cuda, dtype=torch.float16)
    b = torch.randn_like(w)
    if impl == "rtcore":
        fn = lambda: group_norm(x, 32, w, b, 1e-6, silu=True)  # noqa: E731
    else:
        fn = lambda: F.silu(F.group_norm(x, 32, w, b, 1e-6))  # noqa: E731
    kernel_benchmark(benchmark, fn, cuda, op="group_norm_silu", impl=impl, shape=shape, channels_last=channels_last)
    record_rate(benchmark, bytes_moved=2 * x.numel() * x.element_size())  # one read, one write: the floor
