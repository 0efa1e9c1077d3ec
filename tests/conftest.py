"""Shared fixtures: the tiny checkpoints are built once per session; diffusers is the oracle."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from tiers import interpret_by_default, skip_reason  # noqa: E402

CUDA = torch.cuda.is_available()
if interpret_by_default(CUDA):
    # Triton kernels run on the CPU under the interpreter; the variable is read when a kernel is defined, so it must
    # be set before rtcore.kernels (or anything else that defines kernels) is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = skip_reason({m.name for m in item.iter_markers()}, item.path, CUDA, INTERPRETING)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    from rtcore.export import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1", kind="sd1")


@pytest.fixture(scope="session")
def tiny_sd2(tmp_path_factory):
    from rtcore.export import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd2", kind="sd2", seed=1)


@pytest.fixture(scope="session")
def pipe(tiny_sd1):
    from rtcore import CycleDiffusion

    return CycleDiffusion.from_pretrained(tiny_sd1)


@pytest.fixture(scope="session")
def diffusers_pipe(tiny_sd1):
    from diffusers import CycleDiffusionPipeline
    from diffusers.utils import logging

    logging.set_verbosity_error()
    oracle = CycleDiffusionPipeline.from_pretrained(tiny_sd1, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
    oracle.set_progress_bar_config(disable=True)
    return oracle


@pytest.fixture(scope="session")
def image():
    from rtcore.demo import sample_image

    return sample_image(64, 64)


@pytest.fixture(scope="session")
def compile_dir(tiny_sd1, tmp_path_factory):
    """A `compile` (AOTInductor) engine directory of the tiny checkpoint: about 1.5 min to build on 2 CPU cores,
    so it is built once and shared (inductor's on-disk cache makes reruns faster)."""
    from rtcore.export.build import build

    return build(tiny_sd1, tmp_path_factory.mktemp("engines") / "tiny-compile", backend="compile", height=64,
                 width=64)


@pytest.fixture(scope="session")
def onnx_dir(tiny_sd1, tmp_path_factory):
    """An ONNX engine directory of the tiny checkpoint, built once per session."""
    from rtcore.export.build import build

    return build(tiny_sd1, tmp_path_factory.mktemp("engines") / "tiny-onnx", backend="onnx", height=64, width=64)


@pytest.fixture(scope="session")
def onnx_pipe(onnx_dir):
    from rtcore import load

    return load(onnx_dir)
