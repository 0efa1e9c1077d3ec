"""The tier selection of tests/conftest.py, decided here for a CUDA machine too (CUDA faked as present)."""

from pathlib import Path

from tiers import KERNEL_TESTS, interpret_by_default, kernel_test_device, skip_reason

KERNEL_TEST = KERNEL_TESTS / "test_quant.py"
PIPELINE_TEST = Path(__file__).parent / "test_patch.py"


def test_cpu_machine_interprets_the_kernels_and_skips_the_gpu_tier():
    assert interpret_by_default(cuda=False)
    assert kernel_test_device(interpreting=True) == "cpu"
    assert skip_reason({"interpreter"}, KERNEL_TEST, cuda=False, interpreting=True) is None
    assert skip_reason({"interpreter"}, PIPELINE_TEST, cuda=False, interpreting=True) is None
    assert skip_reason({"gpu"}, KERNEL_TEST, cuda=False, interpreting=True) == "no CUDA device"
    assert skip_reason(set(), PIPELINE_TEST, cuda=False, interpreting=True) is None


def test_cuda_machine_runs_the_kernel_tests_on_cuda_tensors():
    """With CUDA the kernels compile, and compiled kernels refuse CPU tensors (the ~90 failures of issue 15): the
    kernel tests move to CUDA tensors, and the interpreter tests that run CPU models are skipped with a reason."""
    assert not interpret_by_default(cuda=True)
    assert kernel_test_device(interpreting=False) == "cuda"
    assert skip_reason({"interpreter"}, KERNEL_TEST, cuda=True, interpreting=False) is None
    assert "CPU models" in skip_reason({"interpreter"}, PIPELINE_TEST, cuda=True, interpreting=False)
    assert skip_reason({"gpu"}, KERNEL_TEST, cuda=True, interpreting=False) is None
    assert skip_reason({"gpu"}, PIPELINE_TEST, cuda=True, interpreting=False) is None


def test_interpreter_forced_on_a_cuda_machine():
    assert skip_reason({"interpreter"}, PIPELINE_TEST, cuda=True, interpreting=True) is None
    assert "compiled kernels" in skip_reason({"gpu"}, KERNEL_TEST, cuda=True, interpreting=True)
    assert "cannot run" in skip_reason({"interpreter"}, KERNEL_TEST, cuda=False, interpreting=False)

