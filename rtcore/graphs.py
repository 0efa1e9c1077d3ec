"""CUDA graphs for the denoising loop: the whole loop for one (step table, guidance, shapes, dtype) is captured
once and then replayed. The per-step scalars of the table are baked into the captured kernels, so a replay
launches the whole edit with one call and reads nothing back from the device.

Static shapes only, as TensorRT's demo does: a new image size, batch or step table is a new capture, and the
last MAX_GRAPHS captures are kept. The warm-up runs on a side stream before capture (cuDNN autotuning and the
caching allocator must not run inside it).

Concurrency. All graphs of a device share one memory pool, and graphs that share a pool must never run at the
same time, so one lock per device covers every capture and every replay on it (a replay only enqueues work: the
lock is held for microseconds). PyTorch allows one capture underway per process, hence a process-wide capture
lock; captures use ``thread_local`` error mode so that other threads' eager work (text encoding, VAE) does not
invalidate them. Callers are expected to share torch's current stream, as the pipelines do.
"""

import threading
from collections import OrderedDict

import torch

from .cycle import denoise

MAX_GRAPHS = 8
_SHARED = {}  # device → (memory pool, lock)
_REGISTRY = threading.Lock()
_CAPTURE = threading.Lock()


def _shared(device):
    with _REGISTRY:
        if device not in _SHARED:
            _SHARED[device] = (torch.cuda.graph_pool_handle(), threading.RLock())
        return _SHARED[device]


class _Graph:
    def __init__(self, run, inputs, device):
        pool, self.lock = _shared(device)
        with self.lock, _CAPTURE, torch.cuda.device(device):
            self.inputs = {k: v.clone() if torch.is_tensor(v) else [t.clone() for t in v] for k, v in inputs.items()}
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run(**self.inputs)  # one whole loop: every kernel is loaded and tuned before capture
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, stream=torch.cuda.Stream(device),
                                  capture_error_mode="thread_local"):
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
        # every table scalar is baked into the captured kernels, so all of them are part of the key
        key = (tuple(getattr(table, f).tobytes() for f in ("timesteps", "a_t", "b_t", "a_prev", "sigma", "c",
                                                              "draws_noise")),
               table.prediction_type, table.clip_sample, guidance, str(dtype),
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
