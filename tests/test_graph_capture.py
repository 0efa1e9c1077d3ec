"""What CUDA-graph capture needs from the denoising loop, checked without a GPU.

A captured loop must not read anything back from the device (``.item()``, ``bool(tensor)``: a host sync, which
capture refuses) and must not copy host tensors in (a pageable host→device copy is also refused, and even when it
is not, the value would be frozen into the graph). Running the loop on the ``meta`` device under a dispatch mode
that sees every aten call proves both: any op that touches a non-meta tensor or asks for a Python scalar is
recorded. The gpu tier repeats the check on CUDA with ``torch.cuda.set_sync_debug_mode("error")``.
"""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from rtcore.cycle import Guidance, denoise, noisy_steps
from rtcore.schedule import step_table

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


def _run(unet, table, guidance, mode):
    meta = torch.device("meta")
    z = torch.empty(2, 4, 8, 8, device=meta)
    steps = torch.empty(len(noisy_steps(table)), 2, 4, 8, 8, device=meta)
    timesteps = torch.as_tensor(table.timesteps).to(meta)  # made outside the loop, as GraphedDenoiser does
    source, target = 1 + guidance.source_cfg, 1 + guidance.target_cfg
    rows = {"edit": source + target, "encode": source, "residuals": target}
    context = torch.empty(2 * rows[mode], 77, 32, device=meta)
    if mode == "residuals":
        kwargs = dict(residuals=[torch.empty(2, 4, 8, 8, device=meta) for _ in range(len(table))])
    else:
        kwargs = dict(x0=z, step_noise=steps)
    with DeviceOnly() as probe:
        x, recorded = denoise(unet, table, guidance, z, context, torch.float32, timesteps=timesteps, **kwargs)
    return probe, x, recorded


@pytest.mark.parametrize("unet_kind", ["eager", "kernels+int8"])
@pytest.mark.parametrize("mode", ["edit", "encode", "residuals"])
@pytest.mark.parametrize("guidance", [Guidance(), Guidance(7.5, 2.0), Guidance(1.0, 1.0)], ids=str)
def test_the_loop_stays_on_the_device(pipe, meta_unets, unet_kind, mode, guidance):
    table = step_table(pipe.engines.scheduler, 6, 0.8, 0.1)
    probe, x, recorded = _run(meta_unets[unet_kind], table, guidance, mode)
    assert probe.calls > 100  # the probe saw the UNet run
    kernel_ops = {"rtcore.group_norm.default", "rtcore.qkv_attention.default", "rtcore.int8_linear.default"}
    assert kernel_ops <= probe.ops if unet_kind != "eager" else not kernel_ops & probe.ops
    assert probe.violations == []
    assert x.device.type == "meta"
    assert (recorded is not None) == (mode == "encode")


def test_the_probe_catches_host_traffic(pipe, meta_unets):
    """The check can fail: without device timesteps the loop builds them from the CPU table inside it."""
    table = step_table(pipe.engines.scheduler, 6, 0.8, 0.1)
    meta = torch.device("meta")
    z = torch.empty(1, 4, 8, 8, device=meta)
    with DeviceOnly() as probe:
        denoise(meta_unets["eager"], table, Guidance(), z, torch.empty(3, 77, 32, device=meta), torch.float32,
                x0=z, step_noise=torch.empty(len(noisy_steps(table)), 1, 4, 8, 8, device=meta))
    assert any("cpu" in v for v in probe.violations)
    with DeviceOnly() as probe:
        bool(torch.ones(1))
    assert any("is_nonzero" in v or "_local_scalar_dense" in v for v in probe.violations)
