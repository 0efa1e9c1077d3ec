"""The openvino backend: OpenVINO IR converted from rtcore's own ONNX graphs, compiled by OpenVINO's CPU plugin,
against eager."""

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


def test_openvino_fp32_matches_eager(openvino_dirs, pipe, image):
    engine = load(openvino_dirs["fp32"])
    assert engine.engines.backend == "openvino" and engine.engines.dtype == torch.float32
    err = np.abs(_edit(engine, image) - _edit(pipe, image)).max()
    print(f"openvino fp32 vs eager fp32: {err:.2e}")
    assert err <= 2e-3
    compiled = engine.engines.unet_full.compiled_model()
    # the precision is set, never left to OpenVINO (which picks bf16 by itself on an avx512_bf16 CPU)
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == torch.get_num_threads()
    # compiled for the shapes it was called with: 3 UNet rows (source, unconditional and target text) of 8×8
    assert [tuple(p.get_shape()) for p in compiled.inputs] == [(3, 4, 8, 8), (1,), (3, 77, 32)]


def test_openvino_feature_caching_matches_eager(openvino_dirs, pipe, image):
    engine = load(openvino_dirs["fp32"])
    fast = dict(cache_interval=3, guidance_cutoff=0.6)
    got = engine(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **fast).images
    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **fast).images
    assert np.abs(got - want).max() <= 2e-3
    # the shallow graph compiled for the rows it ran with: 3 before the cutoff, 2 after
    assert sorted(s[0][0] for s in engine.engines.unet_shallow.compiled) == [2, 3]


def test_openvino_bf16_runs_in_bf16(openvino_dirs, pipe, image):
    """The manifest's dtype is the inference precision: bf16 output differs from fp32 by bf16 rounding, no more."""
    m = json.loads((openvino_dirs["bf16"] / "manifest.json").read_text())
    assert m["backend"] == "openvino" and m["dtype"] == "bf16" and not m["shapes"]["fixed_size"]
    # OpenVINO IR only (the ONNX graph was the conversion's input); a bf16 engine stores its weights as fp16, which
    # the CPU plugin turns into bf16 when it compiles: half the bytes to map
    for dtype, engine_dir in openvino_dirs.items():
        assert sorted(p.name for p in (engine_dir / "unet").iterdir()) == ["model.bin", "model.xml"], dtype
    sizes = {d: (e / "unet" / "model.bin").stat().st_size for d, e in openvino_dirs.items()}
    assert 0.45 < sizes["bf16"] / sizes["fp32"] < 0.55, sizes
    weights = [op for op in ov.Core().read_model(str(openvino_dirs["bf16"] / "unet" / "model.xml")).get_ordered_ops()
               if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16]
    assert len(weights) >= 10
    engine = load(openvino_dirs["bf16"])
    assert engine.engines.dtype == torch.bfloat16
    got, want = _edit(engine, image), _edit(pipe, image)
    assert engine.engines.unet_full.compiled_model().get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    err = np.abs(got - want).max()
    psnr = 10 * np.log10(1 / np.mean((got - want) ** 2))
    print(f"openvino bf16 vs eager fp32: max {err:.2e}, PSNR {psnr:.1f} dB")
    # bf16 really ran, and stayed close (random tiny weights amplify rounding: eager bf16 is at 37 dB here, and
    # OpenVINO, which also runs GroupNorm and softmax in bf16 when the shapes are static, at 30 dB)
    assert err > 1e-4 and psnr >= 25


def test_openvino_engine_takes_other_sizes(openvino_dirs, pipe):
    from rtcore.demo import sample_image

    _edit(load(openvino_dirs["bf16"]), sample_image(64, 64))  # a bf16 engine of the same checkpoint, run first
    engine = load(openvino_dirs["fp32"])
    for size in [(64, 48), (48, 64), (64, 64), (64, 48)]:  # any multiple of 8, as with ONNX Runtime
        image = sample_image(*size)
        assert np.abs(_edit(engine, image) - _edit(pipe, image)).max() <= 2e-3
    # one compiled model per input signature, the least recently used dropped past MAX_SHAPES
    assert len(engine.engines.unet_full.compiled) == 3 and len(engine.engines.vae_decode.compiled) == 3


@pytest.mark.slow  # NNCF
def test_openvino_int8_quantizes_the_unet_linear_layers(tiny_sd1, pipe, image, tmp_path):
    """--int8: the UNet's MatMul weights stored as int8 (OpenVINO IR), activations quantized at run time."""
    pytest.importorskip("nncf")
    from rtcore.backends import OPENVINO_INT8_GROUP
    from rtcore.export.build import build

    engine_dir = build(tiny_sd1, tmp_path / "int8", backend="openvino", dtype="bf16", int8=True)
    m = json.loads((engine_dir / "manifest.json").read_text())
    assert m["int8"] == "dynamic"
    assert m["models"]["unet"] == dict(m["models"]["unet"], file="unet/model.xml", int8="dynamic")
    assert not (engine_dir / "unet" / "model.onnx").exists() and not (engine_dir / ".unet-onnx").exists()
    model = ov.Core().read_model(str(engine_dir / "unet" / "model.xml"))
    int8_weights = [op for op in model.get_ordered_ops()
                    if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.u8, ov.Type.i8)]
    assert len(int8_weights) >= 10  # every attention projection and feed-forward layer
    engine = load(engine_dir)
    got, want = _edit(engine, image), _edit(pipe, image)
    unet = engine.engines.unet_full.compiled_model()
    assert unet.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == OPENVINO_INT8_GROUP
    psnr = 10 * np.log10(1 / np.mean((got - want) ** 2))
    print(f"openvino int8 vs eager fp32: PSNR {psnr:.1f} dB")
    assert psnr >= 25


@pytest.mark.slow  # NNCF calibration
def test_openvino_static_int8_also_quantizes_the_convolutions(tiny_sd1, pipe, image, tmp_path):
    """int8='static': the convolutions' weights and activations become int8 too, calibrated at export; the linear
    layers keep their int8 weights with run-time activations, and the attention matmuls stay bf16."""
    pytest.importorskip("nncf")
    from rtcore.export.build import build
    from rtcore.manifest import rebuild_command

    engine_dir = build(tiny_sd1, tmp_path / "int8s", backend="openvino", dtype="bf16", int8="static")
    m = json.loads((engine_dir / "manifest.json").read_text())
    assert m["int8"] == "static" and m["models"]["unet"]["int8"] == "static"
    assert m["models"]["unet"]["calibration"] == {"samples": 16, "images": "shapes-world scenes"}
    assert "--int8 static" in rebuild_command(m)
    model = ov.Core().read_model(str(engine_dir / "unet" / "model.xml"))

    def quantized(value):  # a calibrated quantizer feeds this input, maybe through layout-only ops
        node = value.get_node()
        while node.get_type_name() in ("Transpose", "Reshape"):
            node = node.input_value(0).get_node()
        return node.get_type_name() == "FakeQuantize"

    ops = model.get_ordered_ops()
    convs = [op for op in ops if op.get_type_name() == "Convolution"]
    matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
    assert len(convs) > 40 and all(quantized(c.input_value(0)) for c in convs)
    assert not any(quantized(v) for m in matmuls for v in m.input_values())
    engine = load(engine_dir)
    got, want = _edit(engine, image), _edit(pipe, image)
    psnr = 10 * np.log10(1 / np.mean((got - want) ** 2))
    print(f"openvino static int8 vs eager fp32: PSNR {psnr:.1f} dB")
    assert psnr >= 20


def test_calibration_set_is_what_an_edit_feeds_the_unet(tiny_sd1):
    """Three rows per sample (y_src, x∅, x_tgt: the two target rows equal) at the engine's latent size, timesteps
    spread over the schedule, contexts (source caption, "", target caption); user photos of another size are
    resized to the engine's."""
    from rtcore.demo import sample_image
    from rtcore.export import load_checkpoint
    from rtcore.export.calibration import unet_calibration_set

    ckpt = load_checkpoint(tiny_sd1)
    samples = unet_calibration_set(ckpt, 48, 64, samples=6, images=[sample_image(80, 40), sample_image(32, 32)],
                                   prompts=["a cat", "a dog"])
    assert len(samples) == 6
    for s in samples:
        assert s["sample"].shape == (3, 4, 6, 8) and s["encoder_hidden_states"].shape[0] == 3
        assert np.array_equal(s["sample"][1], s["sample"][2]) and not np.array_equal(s["sample"][0], s["sample"][1])
        assert np.array_equal(s["encoder_hidden_states"][1], samples[0]["encoder_hidden_states"][1])  # ""
    assert sorted(int(s["timestep"][0]) for s in samples) == [0, 200, 400, 599, 799, 999]
    with pytest.raises(ValueError, match="one caption per calibration image"):
        unet_calibration_set(ckpt, 48, 64, images=[sample_image(32, 32)], prompts=None)


def test_int8_modes_are_checked(tiny_sd1, tmp_path):
    from rtcore import CycleDiffusion
    from rtcore.export.build import build, to_openvino_ir

    with pytest.raises(ValueError, match="int8='static'.*openvino engine.*eager backend's int8 is dynamic"):
        CycleDiffusion.from_pretrained(tiny_sd1, int8="static")
    with pytest.raises(ValueError, match="int8 must be False, True, 'dynamic' or 'static'"):
        CycleDiffusion.from_pretrained(tiny_sd1, int8="int4")
    with pytest.raises(ValueError, match="int8='static' needs calibration samples"):
        to_openvino_ir(tmp_path / "model.onnx", tmp_path / "ir", torch.bfloat16, "static")

    with pytest.raises(ValueError, match="int8 must be False, True, 'dynamic' or 'static'"):
        build(tiny_sd1, tmp_path / "x", backend="openvino", dtype="bf16", int8="int4")
    with pytest.raises(ValueError, match="int8='static'.*openvino engine"):
        build(tiny_sd1, tmp_path / "x", backend="compile", dtype="fp32", int8="static")
    with pytest.raises(ValueError, match="calibration: a non-empty list of \\(image, caption\\) pairs"):
        build(tiny_sd1, tmp_path / "x", backend="openvino", dtype="bf16", int8=True, calibration=[("a", "b")])
    with pytest.raises(ValueError, match="calibration"):
        build(tiny_sd1, tmp_path / "x", backend="openvino", dtype="bf16", int8="static", calibration=["photo.png"])


def test_openvino_is_a_cpu_backend_with_its_own_options(tiny_sd1, tmp_path):
    from rtcore.backends import require_openvino
    from rtcore.export.build import build

    with pytest.raises(ValueError, match="runs on the CPU"):
        require_openvino("cuda")
    with pytest.raises(ValueError, match="kernels are Triton ops"):
        build(tiny_sd1, tmp_path / "x", backend="openvino", kernels=True)
    with pytest.raises(ValueError, match="dtype='bf16'"):
        build(tiny_sd1, tmp_path / "x", backend="openvino", int8=True)
    with pytest.raises(ValueError, match="drop --int8"):
        build(tiny_sd1, tmp_path / "x", backend="onnx", int8=True)
