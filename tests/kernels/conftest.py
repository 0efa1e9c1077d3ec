import os

import pytest
import torch
from tiers import kernel_test_device


@pytest.fixture(autouse=True)
def _kernel_device():
    """The tests make their tensors on the default device: the CPU under the interpreter, CUDA once the kernels
    compile (tests/tiers.py), so that on a CUDA machine the same tests check the compiled kernels."""
    with torch.device(kernel_test_device(os.environ.get("TRITON_INTERPRET", "0") == "1")):
        yield
