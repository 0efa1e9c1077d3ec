"""Kernel micro-benchmarks (``pytest bench/ --benchmark-only``): GPU only; the CPU interpreter proves correctness,
never speed."""

import pytest
import torch


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("kernel benchmarks need a CUDA device")
    return torch.device("cuda")
