"""A pytest plugin, ``-p fake_cuda``, that shows this suite's tests/kernels as a CUDA machine collects them, on a
machine without one: ``torch.cuda.is_available()`` answers True, so conftest.py leaves the Triton interpreter off,
and the meta device stands in for CUDA tensors (tests/tiers.kernel_test_device). Each kernel launch then checks the
device of what it was given and stops there, skipped, since the kernel itself needs a real GPU; a test that hard-codes
another device than the fixture's fails, naming it. Used by tests/test_tiers.py in a subprocess."""

import pytest
import torch

torch.cuda.is_available = lambda: True

import tiers  # noqa: E402  (after the fake: conftest.py reads it at import)

tiers.kernel_test_device = lambda interpreting: "meta"  # CUDA's stand-in


def check_device(tensor, op):
    if tensor.device.type != "meta":
        pytest.fail(f"{op} got a {tensor.device} tensor where a CUDA machine has CUDA ones: the test hard-codes its "
                    "device instead of using the fixture's", pytrace=False)
    pytest.skip("reached the kernel launch with a CUDA (meta) tensor; the kernel itself needs a GPU")


def pytest_configure(config):
    import importlib

    for name in ("attention", "group_norm", "quant"):  # the modules: the package's names are their functions
        importlib.import_module(f"rtcore.kernels.{name}").check_device = check_device


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    error = outcome.excinfo[1] if outcome.excinfo else None
    if isinstance(error, (NotImplementedError, RuntimeError)) and "meta" in str(error):
        # a host read-back of a meta tensor: the stand-in cannot hold values, which a real GPU run has
        outcome.force_exception(pytest.skip.Exception("reads a meta (CUDA) tensor back; needs a GPU"))
