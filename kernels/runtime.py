"""Where Triton kernels can run: CUDA tensors, or any tensor under the interpreter (TRITON_INTERPRET=1)."""

import contextlib
import os

import torch


def interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(tensor, op):
    if not tensor.is_cuda and not interpreting():
        raise ValueError(f"{op}: Triton kernels need CUDA tensors (got {tensor.device}); to run them on the CPU "
                           "for testing, set TRITON_INTERPRET=1 before triton is imported")


def on_device(tensor):
    """Triton launches on the *current* CUDA device, whatever device the tensors are on: make it theirs."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
