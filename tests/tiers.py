"""Which test tiers run on this machine: pure functions of (CUDA present, TRITON_INTERPRET), so that the choice made
on a CUDA machine can be tested on a CPU one (tests/test_tiers.py). conftest.py applies them.

- ``interpreter``: Triton kernels on tiny shapes. On a CPU machine they run interpreted on CPU tensors. On a CUDA
  machine the kernels compile (the interpreter is process-wide and read when a kernel is defined), so the tests
  under tests/kernels run on CUDA tensors instead; the other interpreter tests run whole CPU models and are skipped.
- ``gpu``: needs CUDA and compiled kernels.
"""

from pathlib import Path

KERNEL_TESTS = Path(__file__).parent / "kernels"


def interpret_by_default(cuda):
    """Whether the suite turns the Triton interpreter on (unless TRITON_INTERPRET is set already)."""
    return not cuda


def kernel_test_device(interpreting):
    """Where tests/kernels put their tensors: the interpreter takes CPU tensors, compiled kernels CUDA ones."""
    return "cpu" if interpreting else "cuda"


def skip_reason(markers, path, cuda, interpreting):
    """Why a test with these markers, in this file, cannot run here; None if it can."""
    if "gpu" in markers:
        if not cuda:
            return "no CUDA device"
        if interpreting:
            return "TRITON_INTERPRET=1: the gpu tier checks compiled kernels, not interpreted ones"
    if "interpreter" in markers and not interpreting:
        if not cuda:
            return "TRITON_INTERPRET is not 1 and there is no CUDA device: Triton kernels cannot run"
        if KERNEL_TESTS not in Path(path).parents:
            return ("Triton kernels compile for CUDA in this run, and this test runs CPU models through them; "
                    "tests/kernels run on CUDA tensors, and the gpu tier runs the pipeline with kernels")
    return None
