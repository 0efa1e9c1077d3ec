"""Half-precision ONNX engines are valid by construction: every model of an fp16 engine passes onnx.checker's full
check and opens in an ONNX Runtime session (as on a GPU, where the CUDA EP resolves the graph the same way), and
an fp16 edit runs end to end on the CPU EP. bf16, which ONNX convolutions cannot hold, is refused before any work."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtcore import CycleDiffusion, load
from rtcore.demo import sample_image
from rtcore.export.build import build
from rtcore.manifest import MODELS

ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=10, strength=0.8, output_type="np")


@pytest.mark.parametrize("kind", ["tiny_sd1", "tiny_sd2"])
def test_fp16_onnx_engines_are_valid_and_edit(kind, request, tmp_path):
    checkpoint = request.getfixturevalue(kind)
    engine = build(checkpoint, tmp_path / "fp16", backend="onnx", dtype="fp16", height=64, width=64, quiet=True)
    for name in MODELS:
        path = engine / name / "model.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert all(o.type == "tensor(float16)" for o in session.get_outputs()), name  # the engine's dtype out
    # the text encoder computes in fp32 (its fp16 trace is what ORT refused) and hands fp16 to the UNet
    text = onnx.load(str(engine / "text_encoder" / "model.onnx"))
    assert {i.data_type for i in text.graph.initializer} == {onnx.TensorProto.FLOAT}
    image = sample_image(64, 64)
    half = load(engine)
    half.set_progress_bar_config(disable=True)
    got = half(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    want = CycleDiffusion.from_pretrained(checkpoint)(image=image, generator=torch.Generator().manual_seed(0),
                                                      **ARGS).images
    psnr = 10 * np.log10(1 / np.mean((got.astype(np.float64) - want) ** 2))
    print(f"{kind} onnx fp16 vs eager fp32: PSNR {psnr:.1f} dB")
    assert psnr > 35  # fp16 rounding; a wrong graph is ~10 dB


@pytest.mark.parametrize("backend", ["onnx", "tensorrt"])
def test_bf16_onnx_and_tensorrt_are_refused_before_any_work(backend, tiny_sd1, tmp_path):
    with pytest.raises(ValueError, match=f"dtype bf16 cannot be built for the {backend} backend"):
        build(tiny_sd1, tmp_path / "bf16", backend=backend, dtype="bf16")
    assert list(tmp_path.iterdir()) == []


def test_a_graph_onnx_runtime_refuses_fails_the_build_naming_the_model(tiny_sd1, tmp_path, monkeypatch):
    """The check that caught the fp16 text encoder stays in the build: a model ORT cannot load stops it, and no
    engine directory appears."""
    from rtcore.export import build as build_module

    real = build_module._export_onnx

    def export_then_break(contract, folder, *args, **kwargs):
        path = real(contract, folder, *args, **{**kwargs, "session": False})
        if contract.name == "vae_decoder":
            model = onnx.load(str(path))
            model.graph.node[0].op_type = "NoSuchOp"  # what a broken exporter could write
            onnx.save(model, str(path))
        if kwargs.get("session", True):
            build_module._open_session(path, "cpu")
        return path

    monkeypatch.setattr(build_module, "_export_onnx", export_then_break)
    with pytest.raises(RuntimeError, match="ONNX Runtime refuses the exported vae_decoder model"):
        build(tiny_sd1, tmp_path / "engine", backend="onnx", quiet=True)
    assert list(tmp_path.iterdir()) == []
