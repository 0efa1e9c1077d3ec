"""Engine directories: the ONNX Runtime backend against eager, manifests, atomic builds, the cache, the CLI."""

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion, EngineMismatch, load
from rtcore.manifest import validate, write_manifest

ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=20, strength=0.8, output_type="np")


@pytest.fixture
def onnx_copy(onnx_dir, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(onnx_dir, path)
    return path


@pytest.mark.parametrize("size", [(64, 64), (64, 48)])
def test_onnx_edit_matches_eager(onnx_dir, pipe, size):
    from rtcore.demo import sample_image

    engine = load(onnx_dir)
    assert engine.engines.backend == "onnx"
    assert engine.engines.default_size == (64, 64)  # text-to-image's size when not told: the one it was built for
    assert all(p == ["CPUExecutionProvider"] for p in engine.engines.providers.values())
    image = sample_image(*size)  # ONNX engines take any multiple of 8, not only the profile's size
    got = engine(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    err = np.abs(got - want).max()
    print(f"onnx vs eager: {err:.2e}")
    assert err <= 2e-3


@pytest.mark.parametrize("settings", [dict(cache_interval=3), dict(cache_interval=2, guidance_cutoff=0.5)])
def test_onnx_feature_caching_matches_eager(onnx_pipe, pipe, image, settings):
    """The two UNet graphs (whole, with its deep features; shallow, from them) as eager's two paths."""
    got = onnx_pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **settings).images
    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **settings).images
    exact = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    assert np.abs(got - want).max() <= 2e-3 < np.abs(want - exact).max()


def test_manifest_contents(onnx_dir):
    m = json.loads((onnx_dir / "manifest.json").read_text())
    assert m["backend"] == "onnx" and m["dtype"] == "fp32" and m["format_version"] == 3
    assert set(m["models"]) == {"text_encoder", "vae_encoder", "vae_decoder", "unet", "unet_shallow"}
    assert len(m["checkpoint"]["fingerprint"]) == 64 and m["versions"]["torch"] == torch.__version__
    assert m["models"]["unet"]["inputs"] == ["sample", "timestep", "encoder_hidden_states"]
    assert m["models"]["unet"]["outputs"] == ["out", "deep"]  # the deep features feature caching keeps
    assert m["models"]["unet_shallow"]["inputs"] == ["sample", "timestep", "encoder_hidden_states", "deep"]
    assert m["models"]["unet"]["profile"]["sample"][2][0] == 4  # max rows = 4 × batch
    assert m["models"]["unet_shallow"]["profile"]["deep"][2][0] == 4


def _edit_manifest(path, **changes):
    """A manifest as another build would have written it: changed, then sealed again (files and digest)."""
    write_manifest(path, dict(json.loads((path / "manifest.json").read_text()), **changes))


def test_format_version_mismatch_says_how_to_rebuild(onnx_copy):
    _edit_manifest(onnx_copy, format_version=99)
    with pytest.raises(EngineMismatch, match="rtcore export .* --backend onnx"):
        load(onnx_copy)


def test_dependency_version_mismatch(onnx_copy):
    m = json.loads((onnx_copy / "manifest.json").read_text())
    _edit_manifest(onnx_copy, backend="compile", versions=dict(m["versions"], torch="0.0.1"), device={"type": "cpu"})
    with pytest.raises(EngineMismatch, match="torch 0.0.1"):
        validate(onnx_copy, "cpu")


def test_engine_for_another_gpu_is_refused(onnx_copy):
    m = json.loads((onnx_copy / "manifest.json").read_text())
    _edit_manifest(onnx_copy, backend="compile", versions=dict(m["versions"], torch=torch.__version__),
                   device={"type": "cuda", "name": "NVIDIA H100", "capability": "9.0"})
    with pytest.raises(EngineMismatch, match="built for"):
        validate(onnx_copy, "cpu")


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_artifact_is_refused(onnx_copy, damage):
    artifact = onnx_copy / "unet" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    elif damage == "truncate":
        artifact.write_bytes(bytes(data[: len(data) // 3]))
    else:
        artifact.unlink()
    with pytest.raises(EngineMismatch, match="unet"):
        load(onnx_copy)


def _rewrite(path, edit):
    path.write_bytes(edit(path.read_bytes()))


@pytest.mark.parametrize("rel,edit", [
    ("scheduler/scheduler_config.json", lambda b: b.replace(b'"scaled_linear"', b'"linear"')),
    ("tokenizer/vocab.json", lambda b: b.replace(b'"horse', b'"horsf', 1)),
    ("step_table.txt", lambda b: b.replace(b"1", b"2", 1)),
    ("text_encoder/model.onnx", lambda b: b[:-1] + bytes([b[-1] ^ 1])),
], ids=["scheduler", "vocab", "step-table", "text-encoder"])
def test_any_altered_file_is_refused(onnx_copy, rel, edit):
    before = (onnx_copy / rel).read_bytes()
    _rewrite(onnx_copy / rel, edit)
    assert (onnx_copy / rel).read_bytes() != before
    with pytest.raises(EngineMismatch, match=rel.replace(".", r"\.")):
        load(onnx_copy)


def test_an_added_file_is_refused(onnx_copy):
    (onnx_copy / "tokenizer" / "added_tokens.json").write_text('{"elephant": 7}')  # would change tokenization
    with pytest.raises(EngineMismatch, match="added_tokens.json is not part of this engine"):
        load(onnx_copy)


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],  # truncated JSON
    lambda b: b.replace(b'"scaling_factor": 0.', b'"scaling_factor": 1.'),  # valid JSON, wrong number
    lambda b: b"[1, 2, 3]",  # not an object
    lambda b: b"\xff\xfe not text",
], ids=["truncated", "edited-value", "not-an-object", "binary"])
def test_a_damaged_manifest_is_refused(onnx_copy, damage):
    manifest = onnx_copy / "manifest.json"
    before = manifest.read_bytes()
    _rewrite(manifest, damage)
    assert manifest.read_bytes() != before
    with pytest.raises(EngineMismatch, match="manifest.json"):
        load(onnx_copy)
    with pytest.raises(EngineMismatch):  # the checkpoint-or-engine entry point says the same
        CycleDiffusion.from_pretrained(onnx_copy)


def test_a_manifest_missing_fields_is_refused(onnx_copy):
    m = json.loads((onnx_copy / "manifest.json").read_text())
    del m["models"]["unet"]["file"]
    write_manifest(onnx_copy, m)  # sealed, yet unusable: a writer with a bug
    with pytest.raises(EngineMismatch, match="lacks fields"):
        load(onnx_copy)


def test_interrupted_build_leaves_nothing_that_looks_valid(tiny_sd1, tmp_path, monkeypatch):
    from rtcore.export import build as build_module

    real = build_module._export_onnx

    def fail_on_unet(contract, folder, *args, **kwargs):
        if contract.name == "unet":
            raise KeyboardInterrupt  # the user pressed Ctrl-C halfway
        return real(contract, folder, *args, **kwargs)

    monkeypatch.setattr(build_module, "_export_onnx", fail_on_unet)
    out = tmp_path / "engine"
    with pytest.raises(KeyboardInterrupt):
        build_module.build(tiny_sd1, out, backend="onnx")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_build_refuses_to_overwrite(onnx_dir, tiny_sd1):
    from rtcore.export.build import build

    with pytest.raises(FileExistsError, match="overwrite"):
        build(tiny_sd1, onnx_dir, backend="onnx")


def test_from_pretrained_builds_into_the_cache_once(tiny_sd1, tmp_path, monkeypatch):
    monkeypatch.setenv("RTCORE_CACHE", str(tmp_path / "cache"))
    first = CycleDiffusion.from_pretrained(tiny_sd1, backend="onnx")
    (entry,) = list((tmp_path / "cache").iterdir())
    stamp = (entry / "manifest.json").stat().st_mtime_ns
    second = CycleDiffusion.from_pretrained(tiny_sd1, backend="onnx")
    assert (entry / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert first.engines.backend == second.engines.backend == "onnx"
    # a corrupted cache entry is a miss: rebuilt, not run
    (entry / "unet" / "model.onnx").write_bytes(b"garbage")
    third = CycleDiffusion.from_pretrained(tiny_sd1, backend="onnx")
    assert third.engines.backend == "onnx" and validate(entry, "cpu")


def test_engine_directory_runs_without_the_export_stack(onnx_dir, tmp_path):
    code = f"""
import sys, torch, numpy as np, rtcore
pipe = rtcore.load({str(onnx_dir)!r})
image = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
out = pipe(prompt="a", source_prompt="b", image=image, num_inference_steps=4, output_type="np",
           generator=torch.Generator().manual_seed(0))
loaded = [m for m in ("rtcore.export", "rtcore.bench", "diffusers") if m in sys.modules]
print(out.images.shape, loaded)
sys.exit(1 if loaded else 0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_backend_and_dtype_must_match_the_engine_directory(onnx_dir):
    with pytest.raises(ValueError, match="backend"):
        CycleDiffusion.from_pretrained(onnx_dir, backend="compile")
    with pytest.raises(ValueError, match="dtype"):
        CycleDiffusion.from_pretrained(onnx_dir, dtype="fp16")


def test_tensorrt_without_tensorrt_is_a_clear_error(tiny_sd1, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")
    from rtcore.export.build import build

    with pytest.raises(ValueError, match="TensorRT"):
        build(tiny_sd1, tmp_path / "trt", backend="tensorrt")


def test_kernels_are_refused_for_onnx(tiny_sd1, tmp_path):
    from rtcore.export.build import build

    with pytest.raises(ValueError, match="kernels"):
        build(tiny_sd1, tmp_path / "x", backend="onnx", kernels=True)


@pytest.mark.slow  # two real exports and an edit, each a CLI subprocess
def test_cli_export_then_edit(tiny_sd1, tmp_path):
    from rtcore.demo import sample_image

    out = tmp_path / "engine"
    cmd = [sys.executable, "-m", "rtcore"]
    export = cmd + ["export", str(tiny_sd1), "--backend", "onnx", "--height", "64", "--width", "64", "--out", str(out)]
    result = subprocess.run(export + ["--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout == result.stderr == "", result.stderr
    result = subprocess.run(export + ["--overwrite"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # each stage as it starts and ends, with its time; none of the exporter's warnings
    assert re.search(r"unet: export to ONNX \(fp32\) \.\.\.\n(.*\n)*.*unet: export to ONNX \(fp32\): \d+\.\d s",
                     result.stderr), result.stderr
    assert "hashing the engine's files" in result.stderr and "Warning" not in result.stderr
    sample_image(64, 64).save(tmp_path / "in.png")
    result = subprocess.run(cmd + ["edit", "--model", str(out), "--image", str(tmp_path / "in.png"),
                                   "--source-prompt", "a horse", "--prompt", "an elephant", "--steps", "4",
                                   "--out", str(tmp_path / "out.png"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").is_file()


@pytest.mark.slow
def test_compile_backend_matches_eager(compile_dir, pipe):
    """AOTInductor packages, built once per session (the compile_dir fixture)."""
    from rtcore.demo import sample_image

    engine_dir = compile_dir
    assert sorted(p.name for p in engine_dir.glob("*/model.pt2")) == ["model.pt2"] * 5
    compiled = load(engine_dir)
    image = sample_image(64, 64)
    got = compiled(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS).images
    err = np.abs(got - want).max()
    print(f"compile vs eager: {err:.2e}")
    assert err <= 2e-3
    fast = dict(cache_interval=3, guidance_cutoff=0.6)  # the two UNet packages, whole and shallow
    got = compiled(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **fast).images
    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **ARGS, **fast).images
    assert np.abs(got - want).max() <= 2e-3
    with pytest.raises(ValueError, match="built for 64x64"):
        compiled(image=sample_image(64, 48), **ARGS)
    m = json.loads((engine_dir / "manifest.json").read_text())
    assert m["shapes"]["fixed_size"] and m["device"] == {"type": "cpu"}
    assert len(m["step_table"]["rows"]) == 40 and (engine_dir / "step_table.txt").is_file()


@pytest.mark.slow  # compile_dir builds AOTInductor packages
def test_loading_a_kernels_engine_registers_the_ops(compile_dir, tmp_path):
    """The AOTInductor graphs of a --kernels/--int8 engine call torch.ops.rtcore.*, which nothing else registers
    in a new process (a full --kernels engine fails there with "Could not find schema for rtcore::group_norm").
    Building one costs 1.5 min here, so a copy of the plain engine flagged as such checks what the loader does."""
    engine = tmp_path / "engine"
    shutil.copytree(compile_dir, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    write_manifest(engine, dict(manifest, kernels=True))
    script = ("import sys, torch\n"
              "from rtcore import load\n"
              "assert not hasattr(torch.ops.rtcore, 'group_norm')\n"
              "load(sys.argv[1])\n"
              "x = torch.randn(1, 4, 2, 2)\n"
              "print(float((torch.ops.rtcore.group_norm(x, 2, None, None, 1e-5, False, None)\n"
              "             - torch.nn.functional.group_norm(x, 2)).abs().max()))\n")
    result = subprocess.run([sys.executable, "-c", script, str(engine)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split()[-1]) < 1e-5


def test_rtcore_load_through_the_package_attribute_twice(onnx_dir):
    """``rtcore.load`` stays the function after a load: no submodule of that name rebinds it on the package."""
    code = f"""
import importlib, pkgutil, types, rtcore
first = rtcore.load({str(onnx_dir)!r})
second = rtcore.load({str(onnx_dir)!r})
for info in pkgutil.iter_modules(rtcore.__path__):  # every runtime submodule, imported
    if info.name not in ("__main__", "ray_serve", "serve"):
        importlib.import_module("rtcore." + info.name)
shadowed = [n for n in rtcore.__all__ if isinstance(getattr(rtcore, n), types.ModuleType)]
assert not shadowed, shadowed
print(type(first).__name__, type(second).__name__)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["CycleDiffusion", "CycleDiffusion"]


def test_every_exported_graph_declares_a_profile_for_each_input(tiny_sd1):
    """TensorRT builds each contract with the min/opt/max shapes of every input: the shallow UNet's deep features
    included (the CPU-visible part of a TensorRT engine with feature caching)."""
    from rtcore.export import load_checkpoint
    from rtcore.export.contracts import contracts

    ckpt = load_checkpoint(tiny_sd1)
    for name, contract in contracts(ckpt, 64, 48, 2).items():
        assert set(contract.profile) == set(contract.inputs), name
        for (lo, opt, hi), sample in zip((contract.profile[n] for n in contract.inputs), contract.sample):
            assert tuple(opt) == tuple(sample.shape) and lo[0] <= opt[0] <= hi[0], name
    shallow = contracts(ckpt, 64, 48, 2)["unet_shallow"]
    assert shallow.profile["deep"][2] == (8, ckpt.unet.deep_channels, 8, 6)  # 4 rows × batch 2, 64×48 / 8
