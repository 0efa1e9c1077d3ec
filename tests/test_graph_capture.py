"""What CUDA-graph capture needs from the denoising loop, checked without a GPU.

A captured loop must not read anything back from the device (``.item()``, ``bool(tensor)``: a host sync, which
capture refuses) and must not copy host tensors in (a pageable host→device copy is also refused, and even when it
is not, the value would be frozen into the graph). Running the loop on the ``meta`` device under a dispatch mode
that sees every aten call proves both: any op that touches a non-meta tensor or asks for a Python scalar is
recorded. The gpu tier repeats the check on CUDA with ``torch.cuda.set_sync_debug_mode("error")``.
"""

import copy
import dataclasses
import warnings

import numpy as np
import pytest
import torch
from stubs import StubCuda
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rtcore.sampling import MODES, Rows, denoise, noisy_steps
from rtcore.schedule import dpm_table, step_table

HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


class DeviceOnly(TorchDispatchMode):
    """Records each aten call that reads a scalar back or touches a tensor off the ``meta`` device."""

    def __init__(self):
        super().__init__()
        self.violations, self.calls, self.ops = [], 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls += 1
        self.ops.add(str(func))
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        if func in HOST_READS or devices - {"meta"}:
            self.violations.append(f"{func} on {sorted(devices)}")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def meta_unets(pipe):
    from rtcore.export.patch import patch

    plain = copy.deepcopy(pipe.engines.unet).to("meta")
    fused = copy.deepcopy(pipe.engines.unet)
    patch(fused, group_norm=True, attention=True, int8=True, int8_min_params=0)
    return {"eager": plain, "kernels+int8": fused.to("meta")}


def _run(unet, table, rows, **loop):
    meta = torch.device("meta")
    z = torch.empty(2, 4, 8, 8, device=meta)
    timesteps = torch.as_tensor(table.timesteps).to(meta)  # made outside the loop, as GraphedDenoiser does
    context = torch.empty(2 * rows.per_item, 77, 32, device=meta)
    if rows.mode == "target":
        kwargs = dict(residuals=[torch.empty(2, 4, 8, 8, device=meta) for _ in range(len(table))])
    elif rows.mode == "ddim":
        kwargs = dict(step_noise=torch.empty(len(table), 2, 4, 8, 8, device=meta))
    elif rows.mode == "dpm++":
        kwargs = {}
    else:
        kwargs = dict(x0=z, step_noise=torch.empty(len(noisy_steps(table)), 2, 4, 8, 8, device=meta))
    with DeviceOnly() as probe:
        x, recorded = denoise(unet, table, rows, z, context, torch.float32, timesteps=timesteps, **kwargs, **loop)
    return probe, x, recorded


@pytest.mark.parametrize("unet_kind", ["eager", "kernels+int8"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scales", [(7.5, 1.0), (7.5, 2.0), (1.0, 1.0)], ids=str)
def test_the_loop_stays_on_the_device(pipe, meta_unets, unet_kind, mode, scales):
    if mode == "dpm++":
        table = dpm_table(pipe.engines.scheduler, 6)
    else:
        table = step_table(pipe.engines.scheduler, 6, 0.8, 0.1)
    probe, x, recorded = _run(meta_unets[unet_kind], table, Rows(mode, *scales))
    assert probe.calls > 100  # the probe saw the UNet run
    kernel_ops = {"rtcore.group_norm.default", "rtcore.qkv_attention.default", "rtcore.int8_linear.default"}
    assert kernel_ops <= probe.ops if unet_kind != "eager" else not kernel_ops & probe.ops
    assert probe.violations == []
    assert x.device.type == "meta"
    assert (recorded is not None) == (mode == "source")


@pytest.mark.parametrize("mode", ["cycle", "source", "ddim", "dpm++"])
def test_the_loop_with_caching_and_cutoff_stays_on_the_device(pipe, meta_unets, mode):
    """Feature caching and the guidance cutoff capture too: the cut of the context and of the kept features to the
    conditional rows are device views and one cat, never an index tensor copied in from the host."""
    from rtcore.approximations import Approximations

    table = dpm_table(pipe.engines.scheduler, 6) if mode == "dpm++" else step_table(pipe.engines.scheduler, 6, 1.0,
                                                                                     0.1)
    unet = meta_unets["kernels+int8"]
    probe, x, _ = _run(unet, table, Rows(mode, 7.5, 2.0), approximations=Approximations(2, 0.5),
                       unet_parts=(unet.forward_full, unet.forward_shallow))
    assert probe.calls > 100 and probe.violations == [] and x.device.type == "meta"


def test_the_probe_catches_host_traffic(pipe, meta_unets):
    """The check can fail: without device timesteps the loop builds them from the CPU table inside it."""
    table = step_table(pipe.engines.scheduler, 6, 0.8, 0.1)
    meta = torch.device("meta")
    z = torch.empty(1, 4, 8, 8, device=meta)
    with DeviceOnly() as probe:
        denoise(meta_unets["eager"], table, Rows("cycle"), z, torch.empty(3, 77, 32, device=meta), torch.float32,
                x0=z, step_noise=torch.empty(len(noisy_steps(table)), 1, 4, 8, 8, device=meta))
    assert any("cpu" in v for v in probe.violations)
    with DeviceOnly() as probe:
        bool(torch.ones(1))
    assert any("is_nonzero" in v or "_local_scalar_dense" in v for v in probe.violations)


# -- capture failures, with a stub of the CUDA surface that rtcore.graphs uses (no GPU on CI) -------------------


@pytest.fixture
def stub_cuda(monkeypatch):
    from rtcore import graphs

    stub = StubCuda()
    monkeypatch.setattr(graphs, "cuda", stub)
    monkeypatch.setattr(graphs, "_SHARED", {})
    return stub


def test_a_failed_capture_restores_the_stream_and_names_the_cause(stub_cuda):
    from rtcore.graphs import CaptureError, capture

    def run(x):
        stub_cuda.sync()
        return x

    with pytest.raises(CaptureError, match="not permitted when stream is capturing") as info:
        capture(run, {"x": torch.ones(1)}, torch.device("cuda", 0))
    assert "previous error" not in str(info.value) and "not permitted" in str(info.value.__cause__)
    assert stub_cuda.current == stub_cuda.default  # the caller is back on its own stream
    assert stub_cuda.capturing is None  # and the capture is over
    assert stub_cuda.routed_pools == []  # and the allocator no longer routes (nor defers frees) for it
    assert set(stub_cuda.pool_references.values()) == {0}  # nor does the failed graph keep the pool alive


def test_out_of_memory_in_a_capture_is_not_a_capture_failure(stub_cuda):
    from rtcore.graphs import CaptureError, capture

    def run(x):
        if stub_cuda.capturing is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x

    with pytest.raises(torch.OutOfMemoryError) as info:
        capture(run, {"x": torch.ones(1)}, torch.device("cuda", 0))
    assert not isinstance(info.value, CaptureError)
    assert stub_cuda.current == stub_cuda.default and stub_cuda.capturing is None
    assert stub_cuda.routed_pools == []


def test_one_capture_stream_per_device(stub_cuda):
    from rtcore.graphs import capture

    graphs = [capture(lambda x: x, {"x": torch.ones(1)}, torch.device("cuda", k % 2))[0] for k in range(4)]
    assert {d.index: len(s) for d, s in stub_cuda.streams.items()} == {0: 1, 1: 1}
    assert graphs[0].stream is graphs[2].stream and graphs[1].stream is graphs[3].stream
    assert graphs[0].stream is not graphs[1].stream


EDIT = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=4, strength=0.5, output_type="np")


def test_the_pipeline_falls_back_when_capture_fails_or_runs_out_of_memory(pipe, image, stub_cuda):
    """A capture failure, or a capture that runs out of memory, turns graphs off for good with one warning that
    gives the cause, and the call returns the plain loop's result (an OOM used to re-run warm-up and capture on
    every later call)."""
    from rtcore import CycleDiffusion
    from rtcore.graphs import GraphedDenoiser

    def syncing_unet(*args):  # a UNet that reads a value back from the device, as an uncapturable engine would
        stub_cuda.sync()
        return pipe.engines.unet(*args)

    def oom_unet(*args):
        if stub_cuda.capturing is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return pipe.engines.unet(*args)

    want = pipe(image=image, generator=torch.Generator().manual_seed(0), **EDIT).images
    for unet, message in ((syncing_unet, "capture failed .*not permitted when stream is capturing"),
                          (oom_unet, "ran out of memory .*Tried to allocate")):
        graphed = CycleDiffusion(pipe.engines, cuda_graphs=False)
        graphed._graphed = GraphedDenoiser(dataclasses.replace(pipe.engines, unet=unet))
        with pytest.warns(UserWarning, match=message):
            got = graphed(image=image, generator=torch.Generator().manual_seed(0), **EDIT).images
        assert graphed._graphed is None and stub_cuda.current == stub_cuda.default and not stub_cuda.routed_pools
        np.testing.assert_array_equal(got, want)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # said once: the next call runs the plain loop without a word
            np.testing.assert_array_equal(
                graphed(image=image, generator=torch.Generator().manual_seed(0), **EDIT).images, want)


def test_every_sampler_replays_graphs_unless_a_callback_is_given(pipe, image, stub_cuda):
    """Which calls replay CUDA graphs (README, DESIGN §4): every pipeline call without a callback, in every mode;
    a call with one (the service's cancellation check, a user's) runs the plain loop. The stub's replay is a
    no-op, so each graphed call here is a first capture, whose outputs the loop computes for real."""
    from rtcore import CycleDiffusion, StableDiffusion
    from rtcore.graphs import GraphedDenoiser

    cycle, sd = CycleDiffusion(pipe.engines, cuda_graphs=False), StableDiffusion(pipe.engines, cuda_graphs=False)
    plain_cycle, plain_sd = CycleDiffusion(pipe.engines, cuda_graphs=False), StableDiffusion(pipe.engines)
    for p in (cycle, sd, plain_cycle, plain_sd):
        p.set_progress_bar_config(disable=True)
    graphed = cycle._graphed = sd._graphed = GraphedDenoiser(pipe.engines)
    seed = dict(generator=torch.Generator().manual_seed(0))
    calls = {
        "edit": lambda p: p(image=image, **EDIT, **seed).images,
        "encode + edit": lambda p: p.edit(p.encode(image=image, source_prompt="a horse", num_inference_steps=6,
                                                   **seed), prompt="a zebra", output_type="np").images,
        "text_to_image ddim": lambda p: p.text_to_image("a", height=32, width=32, num_inference_steps=3, eta=0.5,
                                                        output_type="np", **seed).images,
        "text_to_image dpm++": lambda p: p.text_to_image("a", height=32, width=32, num_inference_steps=3,
                                                         scheduler="dpm++2m", output_type="np", **seed).images,
        "img2img": lambda p: p.img2img("a", image=image, num_inference_steps=5, output_type="np", **seed).images,
    }
    for name, call in calls.items():
        captured = len(graphed.graphs)
        pipes = (cycle, plain_cycle) if "edit" in name else (sd, plain_sd)
        seed["generator"].manual_seed(0)
        got = call(pipes[0])
        seed["generator"].manual_seed(0)
        np.testing.assert_array_equal(got, call(pipes[1]), err_msg=name)
        assert len(graphed.graphs) == captured + (2 if name == "encode + edit" else 1), name
    captured = len(graphed.graphs)
    cycle(image=image, **dict(EDIT, num_inference_steps=7), callback=lambda *_: None, **seed)
    sd.text_to_image("a", height=32, width=32, num_inference_steps=3, output_type="np", callback=lambda *_: None)
    assert len(graphed.graphs) == captured  # a callback runs Python per step: the plain loop
