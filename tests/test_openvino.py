"""The openvino backend: rtcore's own ONNX engines compiled by OpenVINO's CPU plugin, against eager."""

import json

import numpy as np
import pytest
import torch

from rtcore import load

ov = pytest.importorskip("openvino")

ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=20, strength=0.8, output_type="np")


@pytest.fixture(scope="module")
def openvino_dirs(tiny_sd1, tmp_path_factory):
    from rtcore.export.build import build

    root = tmp_path_factory.mktemp("engines")
    return {dtype: build(tiny_sd1, root / f"tiny-openvino-{dtype}", backend="openvino", dtype=dtype)
            for dtype in ("fp32", "bf16")}


def _edit(pipe, image):
    return pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images


def test_openvino_fp32_matches_eager(openvino_dirs, pipe, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RTCORE_CACHE", str(tmp_path))  # OpenVINO's compiled-model cache goes here
    engine = load(openvino_dirs["fp32"])
    assert engine.engines.backend == "openvino" and engine.engines.dtype == torch.float32
    unet = engine.engines.unet
    # the precision is set, never left to OpenVINO (which picks bf16 by itself on an avx512_bf16 CPU)
    assert unet.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(unet.compiled.get_property("INFERENCE_NUM_THREADS")) == torch.get_num_threads()
    err = np.abs(_edit(engine, image) - _edit(pipe, image)).max()
    print(f"openvino fp32 vs eager fp32: {err:.2e}")
    assert err <= 2e-3
    assert any((tmp_path / "openvino").iterdir()), "OpenVINO's model cache was not written"


def test_openvino_bf16_runs_in_bf16(openvino_dirs, pipe, image):
    """The manifest's dtype is the inference precision: bf16 output differs from fp32 by bf16 rounding, no more."""
    m = json.loads((openvino_dirs["bf16"] / "manifest.json").read_text())
    assert m["backend"] == "openvino" and m["dtype"] == "bf16" and not m["shapes"]["fixed_size"]
    # the same fp32 ONNX graph as the fp32 engine: precision is chosen at compile time, not baked into the file
    assert m["files"]["unet/model.onnx"] == json.loads((openvino_dirs["fp32"] / "manifest.json").read_text())[
        "files"]["unet/model.onnx"]
    engine = load(openvino_dirs["bf16"])
    assert engine.engines.dtype == torch.bfloat16
    assert engine.engines.unet.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    got, want = _edit(engine, image), _edit(pipe, image)
    err = np.abs(got - want).max()
    psnr = 10 * np.log10(1 / np.mean((got - want) ** 2))
    print(f"openvino bf16 vs eager fp32: max {err:.2e}, PSNR {psnr:.1f} dB")
    assert err > 1e-4 and psnr >= 30  # bf16 really ran, and stayed close


def test_openvino_engine_takes_other_sizes(openvino_dirs, pipe):
    from rtcore.demo import sample_image

    image = sample_image(64, 48)  # like ONNX Runtime, OpenVINO runs the ONNX graph at any multiple of 8
    err = np.abs(_edit(load(openvino_dirs["fp32"]), image) - _edit(pipe, image)).max()
    assert err <= 2e-3


def test_openvino_is_a_cpu_backend(tiny_sd1, tmp_path):
    from rtcore.backends import require_openvino

    with pytest.raises(ValueError, match="runs on the CPU"):
        require_openvino("cuda")
    with pytest.raises(ValueError, match="kernels/int8 are Triton ops"):
        from rtcore.export.build import build

        build(tiny_sd1, tmp_path / "x", backend="openvino", kernels=True)
