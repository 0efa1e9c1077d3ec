"""The tier selection of tests/conftest.py, decided here for a CUDA machine too (CUDA faked as present)."""

import os
import re
import subprocess
import sys
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



def test_a_cuda_machine_gives_every_kernel_test_cuda_tensors():
    """tests/kernels collected as a CUDA machine collects them (tests/fake_cuda.py: CUDA faked as present, meta
    tensors standing in for CUDA ones): every test reaches its kernel launch with the fixture's device, and none
    hard-codes "cpu" (39 GroupNorm tests once did, and would have failed on the first GPU)."""
    tests = Path(__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a CUDA machine compiles the kernels
    env["PYTHONPATH"] = str(tests)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "fake_cuda", str(KERNEL_TESTS), "-m", "not gpu",
                             "-q", "-rfE", "-p", "no:cacheprovider"], cwd=tests.parent, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    launched = int(re.search(r"(\d+) skipped", result.stdout)[1])
    assert launched >= 80, result.stdout[-2000:]  # the interpreter grid, each case stopped at its launch


def test_the_gpu_test_install_has_one_onnxruntime():
    """README's GPU install, pip install -e ".[test-gpu]": onnxruntime-gpu and not also the CPU onnxruntime, which
    provides the same module and, installed beside it, usually leaves no CUDA EP (the onnx GPU checks then skip)."""
    import importlib.metadata

    def extra(name):
        marker = re.compile(rf"""extra\s*==\s*["']{name}["']""")
        return {re.split(r"[\s\[;<>=!~]", r, maxsplit=1)[0] for r in importlib.metadata.requires("rtcore")
                if marker.search(r)}

    assert "onnxruntime-gpu" in extra("test-gpu") and "onnxruntime" not in extra("test-gpu")
    assert "onnxruntime" in extra("test") and "onnxruntime-gpu" not in extra("test")
    assert extra("test") - {"onnxruntime"} == extra("test-gpu") - {"onnxruntime-gpu"}
