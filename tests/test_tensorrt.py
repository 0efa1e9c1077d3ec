"""The TensorRT backend (rtcore.backends.TensorRTModel, rtcore.export.build.build_plan) against stubs of TensorRT
10.x and 11.x (TensorRT cannot be installed without a GPU)."""

import sys

import pytest
import torch
from stubs import StubCuda, stub_tensorrt

PROFILE = {"sample": ((1, 4, 8, 8), (2, 4, 8, 8), (3, 4, 8, 8))}


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_build_plan_is_strongly_typed_on_tensorrt_10_and_11(major, dtype, monkeypatch, tmp_path):
    """TensorRT 11 has no BuilderFlag.FP16/BF16 (fp16/bf16 builds raised AttributeError); the ONNX is exported in
    the target dtype, so a strongly typed network builds the same engine on 10.x and 11.x."""
    trt = stub_tensorrt(major)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    from rtcore.export.build import build_plan

    cache = tmp_path / "timing.cache"
    plan = build_plan(tmp_path / "model.onnx", tmp_path / "model.plan", PROFILE, dtype=dtype, timing_cache=cache)
    assert plan.read_bytes() == b"plan" and cache.read_bytes() == b"+timings"
    (network, config), = trt.built
    assert network.strongly_typed and network.flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert config.profiles[0].shapes == PROFILE


def test_tensorrt_model_deserialises_and_runs_on_its_own_device(monkeypatch, tmp_path):
    """TensorRT binds an engine to the thread's current device: a cuda:1 engine must be made with cuda:1 current."""
    from rtcore import backends

    cuda = StubCuda()
    monkeypatch.setattr(backends, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", stub_tensorrt(11, current_device=cuda.current_device))
    (tmp_path / "model.plan").write_bytes(b"plan")
    model = backends.TensorRTModel(tmp_path / "model.plan", ("sample",), ("out",), torch.device("cuda", 1))
    assert model.engine.device == 1 and model.context.device == 1
    assert cuda.current_device() == 0  # the caller's device is current again
    assert model.dtypes == {"sample": torch.float16, "out": torch.float16}
