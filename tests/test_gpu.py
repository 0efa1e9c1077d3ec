"""GPU tier (skipped without CUDA): fp16 engines, CUDA graphs and kernels against eager fp16 on the tiny checkpoint."""

import importlib.util
import threading
import warnings

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion
from rtcore.bench.common import HALF_PRECISION_PIXEL_TOLERANCE
from rtcore.sampling import Rows, denoise
from rtcore.schedule import step_table

pytestmark = pytest.mark.gpu

ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=20, strength=0.8, output_type="np")


@pytest.fixture(scope="module")
def eager_fp16(tiny_sd1):
    return CycleDiffusion.from_pretrained(tiny_sd1, device="cuda", dtype="fp16")


def _edit(pipe, image, seed=0, **kwargs):
    return pipe(image=image, generator=torch.Generator().manual_seed(seed), **ARGS, **kwargs).images


def _close(a, b, tol=HALF_PRECISION_PIXEL_TOLERANCE):
    assert np.isfinite(a).all() and np.isfinite(b).all()
    err = np.abs(a - b).max()
    print(f"max abs pixel difference {err:.2e}")
    assert err <= tol


def test_cuda_graphs_equal_the_plain_loop(tiny_sd1, eager_fp16, image):
    plain = CycleDiffusion(eager_fp16.engines, cuda_graphs=False)
    assert eager_fp16._graphed is not None
    graphed = _edit(eager_fp16, image)
    _close(graphed, _edit(plain, image), tol=1e-3)
    _close(_edit(eager_fp16, image), graphed, tol=0)  # a replay gives the same pixels
    assert len(eager_fp16._graphed.graphs) == 1


def test_cuda_graphs_under_concurrent_callers(eager_fp16, image):
    serial = [_edit(eager_fp16, image, seed) for seed in range(4)]
    results = [None] * 8

    def work(k):
        results[k] = _edit(eager_fp16, image, k % 4)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, result in enumerate(results):
        np.testing.assert_array_equal(result, serial[k % 4])


def test_the_loop_never_synchronises_with_the_host(eager_fp16):
    eng = eager_fp16.engines
    table = step_table(eng.scheduler, 20, 0.8, 0.1)
    z = torch.randn(1, 4, 8, 8, device="cuda")
    context = torch.randn(3, 77, 32, device="cuda", dtype=torch.float16)
    step_noise = torch.randn(len(table), 1, 4, 8, 8, device="cuda")
    timesteps = torch.as_tensor(table.timesteps, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        denoise(eng.unet, table, Rows("cycle"), z, context, eng.dtype, x0=z, step_noise=step_noise, timesteps=timesteps)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graphs_capture_every_mode(tiny_sd1, image):
    """The full call, encode and edit each capture their own graph; a capture failure would only warn and fall
    back to the plain loop, so it is made an error here and the graphs are counted."""
    pipe = CycleDiffusion.from_pretrained(tiny_sd1, device="cuda", dtype="fp16")
    args = dict(source_prompt=ARGS["source_prompt"], num_inference_steps=20, strength=0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = _edit(pipe, image)
        source = pipe.encode(image=image, generator=torch.Generator().manual_seed(0), **args)
        edited = pipe.edit(source, prompt=ARGS["prompt"], output_type="np").images
    assert pipe._graphed is not None and len(pipe._graphed.graphs) == 3
    _close(edited, full)  # encode + edit is the full call (batches of other sizes: fp16 rounding differs)


def test_kernels_fp16(tiny_sd1, eager_fp16, image):
    kernels = CycleDiffusion.from_pretrained(tiny_sd1, device="cuda", dtype="fp16", kernels=True)
    _close(_edit(kernels, image), _edit(eager_fp16, image))
    assert kernels._graphed is not None and len(kernels._graphed.graphs) == 1  # captured: no silent fallback


def test_compile_backend_fp16(tiny_sd1, eager_fp16, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RTCORE_CACHE", str(tmp_path))
    compiled = CycleDiffusion.from_pretrained(tiny_sd1, backend="compile", device="cuda", dtype="fp16", height=64,
                                              width=64)
    _close(_edit(compiled, image), _edit(eager_fp16, image))
    assert compiled._graphed is not None and len(compiled._graphed.graphs) == 1  # captured, no fallback


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT not installed")
def test_tensorrt_backend_fp16(tiny_sd1, eager_fp16, image, tmp_path, monkeypatch):
    monkeypatch.setenv("RTCORE_CACHE", str(tmp_path))
    trt = CycleDiffusion.from_pretrained(tiny_sd1, backend="tensorrt", device="cuda", dtype="fp16", height=64,
                                         width=64)
    _close(_edit(trt, image), _edit(eager_fp16, image))


def test_onnx_cuda_provider_when_installed(tiny_sd1, eager_fp16, image, tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu not installed")
    monkeypatch.setenv("RTCORE_CACHE", str(tmp_path))
    pipe = CycleDiffusion.from_pretrained(tiny_sd1, backend="onnx", device="cuda", dtype="fp16")
    assert all(p[0] == "CUDAExecutionProvider" for p in pipe.engines.providers.values())
    _close(_edit(pipe, image), _edit(eager_fp16, image))
