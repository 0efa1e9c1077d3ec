"""CUDA graphs for the denoising loop: the whole loop for one (step table, guidance, shapes, dtype) is captured
once and then replayed. The per-step scalars of the table are baked into the captured kernels, so a replay
launches the whole edit with one call and reads nothing back from the device.

Static shapes only, as TensorRT's demo does: a new image size, batch or step table is a new capture, and the
last MAX_GRAPHS captures are kept. The warm-up runs on a side stream before capture (cuDNN autotuning and the
caching allocator must not run inside it). All graphs of a device share one memory pool. Each graph has a
lock, so concurrent callers cannot interleave copies into its static inputs with a replay.
"""

import threading
from collections import OrderedDict

import torch

from .cycle import denoise

MAX_GRAPHS = 8
_POOLS = {}


def _pool(device):
    if device not in _POOLS:
        _POOLS[device] = torch.cuda.graph_pool_handle()
    return _POOLS[device]


class _Graph:
    def __init__(self, run, inputs, device):
        self.lock = threading.Lock()
        self.inputs = {k: v.clone() if torch.is_tensor(v) else [t.clone() for t in v] for k, v in inputs.items()}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                run(**self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=_pool(device)):
            self.outputs = run(**self.inputs)

    def __call__(self, inputs):
        with self.lock:
            for k, v in inputs.items():
                if torch.is_tensor(v):
                    self.inputs[k].copy_(v)
                else:
                    for dst, src in zip(self.inputs[k], v):
                        dst.copy_(src)
            self.graph.replay()
            x, recorded = self.outputs
            return (x.clone() if x is not None else None,
                    [r.clone() for r in recorded] if recorded is not None else None)


class GraphedDenoiser:
    """``denoise`` with the same arguments, replayed from a CUDA graph captured per static key."""

    def __init__(self, unet, device):
        self.unet, self.device = unet, device
        self.graphs = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, table, guidance, z, context, dtype, *, x0=None, step_noise=None, residuals=None):
        # a static input like the others: the graph must own the memory its kernels read
        inputs = {"z": z, "context": context, "timesteps": torch.as_tensor(table.timesteps, device=self.device)}
        if x0 is not None:
            inputs.update(x0=x0, step_noise=step_noise)
        if residuals is not None:
            inputs["residuals"] = list(residuals)
        key = (table.timesteps.tobytes(), table.sigma.tobytes(), table.prediction_type, guidance, str(dtype),
               tuple((k, tuple(v.shape) if torch.is_tensor(v) else (len(v), tuple(v[0].shape)))
                     for k, v in sorted(inputs.items())))

        def run(**static):
            return denoise(self.unet, table, guidance, static["z"], static["context"], dtype, x0=static.get("x0"),
                           step_noise=static.get("step_noise"), residuals=static.get("residuals"),
                           timesteps=static["timesteps"])

        with self.lock:
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = _Graph(run, inputs, self.device)
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
        return graph(inputs)
