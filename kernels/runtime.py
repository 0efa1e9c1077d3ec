"""Where Triton kernels can run: CUDA tensors, or any tensor under the interpreter (TRITON_INTERPRET=1)."""

import os


def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(tensor, op):
    if not tensor.is_cuda and not interpreting():
        raise ValueError(f"{op}: Triton kernels need CUDA tensors (got {tensor.device}); to run them on the CPU "
                           "for testing, set TRITON_INTERPRET=1 before triton is imported")
