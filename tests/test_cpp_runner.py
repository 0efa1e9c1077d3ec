"""C++ embedding: build cmake/ against the torch wheel's libtorch and compare rtcore-run with the Python runtime."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from rtcore import load
from rtcore.cpp_request import read_latents, table_text, write_request
from rtcore.demo import sample_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build the embedding")
    import torch.utils

    build = tmp_path_factory.mktemp("cmake-build")
    source = Path(__file__).resolve().parent.parent / "cmake"
    for cmd in (["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return build / "rtcore-run"


@pytest.mark.parametrize("steps,strength,eta", [(10, 0.8, 0.1), (6, 1.0, 0.0)])
def test_cpp_runner_equals_the_python_runtime(runner, compile_dir, tmp_path, steps, strength, eta):
    pipe = load(compile_dir)
    image = sample_image(64, 64)
    args = dict(num_inference_steps=steps, strength=strength, guidance_scale=7.5, eta=eta)
    request = write_request(pipe, tmp_path / "request", image, "a horse", "an elephant",
                            generator=torch.Generator().manual_seed(0), **args)
    out = tmp_path / "latents.f32"
    result = subprocess.run([str(runner), str(compile_dir), str(request), str(out)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    cpp = read_latents(out, (1, 4, 8, 8))
    py = pipe(prompt="an elephant", source_prompt="a horse", image=image, generator=torch.Generator().manual_seed(0),
              output_type="latent", **args).images
    err = (cpp - py).abs().max().item()
    print(f"rtcore-run vs Python: {err:.2e}")
    assert err <= 1e-4


def test_manifest_step_table_is_the_default_edit(compile_dir):
    from rtcore.schedule import DDIMConfig, step_table

    pipe = load(compile_dir)
    default = step_table(pipe.engines.scheduler, 50, 0.8, 0.1)
    assert (compile_dir / "step_table.txt").read_text() == table_text(default)
    assert isinstance(pipe.engines.scheduler, DDIMConfig)


def test_cpp_runner_reports_a_bad_request(runner, compile_dir, tmp_path):
    (tmp_path / "meta.txt").write_text("not a header\n")
    result = subprocess.run([str(runner), str(compile_dir), str(tmp_path), str(tmp_path / "o.f32")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "meta.txt" in result.stderr  # a message, not a crash


@pytest.mark.parametrize("flag,value", [('"kernels": ', "true"), ('"int8": ', "true"), ('"int8": ', '"dynamic"')])
def test_cpp_runner_refuses_engines_with_python_ops(runner, compile_dir, tmp_path, flag, value):
    """--kernels/--int8 engines call Triton ops that only Python registers: a clear refusal, not a failed call."""
    engine = tmp_path / "engine"
    shutil.copytree(compile_dir, engine)
    manifest = engine / "manifest.json"
    assert flag + "false" in manifest.read_text()
    manifest.write_text(manifest.read_text().replace(flag + "false", flag + value))
    result = subprocess.run([str(runner), str(engine), str(tmp_path), str(tmp_path / "o.f32")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "--kernels or --int8" in result.stderr


@pytest.mark.parametrize("change", [dict(clip_sample=True), dict(prediction_type="sample")])
def test_requests_the_cpp_runner_would_compute_wrongly_are_refused(pipe, tmp_path, change):
    import dataclasses

    from rtcore import CycleDiffusion

    engines = dataclasses.replace(pipe.engines, scheduler=dataclasses.replace(pipe.engines.scheduler, **change))
    with pytest.raises(ValueError, match="C\\+\\+ runner supports"):
        write_request(CycleDiffusion(engines), tmp_path / "request", sample_image(64, 64), "a", "b")
    assert not (tmp_path / "request").exists()


@pytest.mark.parametrize("fast", [dict(cache_interval=3), dict(guidance_cutoff=0.5)])
def test_fast_settings_are_refused_for_the_cpp_runner(pipe, tmp_path, fast):
    """The C++ loop is the exact one: a request with feature caching or a guidance cutoff would not be what the
    runner computes, so it is refused by name before anything is written."""
    with pytest.raises(ValueError, match="the C\\+\\+ runner runs the exact loop only"):
        write_request(pipe, tmp_path / "request", sample_image(64, 64), "a", "b", **fast)
    assert not (tmp_path / "request").exists()
