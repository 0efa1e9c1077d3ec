"""CUDA graphs for the denoising loop: the whole loop for one (step table, rows, shapes, dtype) is captured
once and then replayed. The per-step scalars of the table are baked into the captured kernels, so a replay
launches the whole edit with one call and reads nothing back from the device.

Static shapes only, as TensorRT's demo does: a new image size, batch or step table is a new capture, and the
last MAX_GRAPHS captures are kept. The warm-up runs on the capture stream before capture (cuDNN autotuning and
the caching allocator must not run inside it).

Concurrency and memory. All graphs of a device share one memory pool and one capture stream: torch shares a pool
well only between captures made on the same stream (``torch.cuda.graph``'s note on ``pool``). Graphs that share a
pool must never run at the same time, so one lock per device covers every capture and every replay on it (a
replay only enqueues work: the lock is held for microseconds). PyTorch allows one capture underway per process,
hence a process-wide capture lock; captures use ``thread_local`` error mode so that other threads' eager work (text
encoding, VAE) does not invalidate them. Callers are expected to share torch's current stream, as the pipelines do.

Failure. ``torch.cuda.graph`` cannot be used here: when the captured code raises, its ``__exit__`` calls
``capture_end()``, which raises again (the capture was invalidated) before the thread's stream is restored, so
everything after it in that thread would run on the capture stream, and the error shown would be
``capture_end``'s rather than the cause. :func:`capture` ends a failed capture, always restores the stream, and
raises :class:`CaptureError` from the cause. ``capture_end()`` also throws before it tells the caching allocator
that the capture is over (``endAllocateToPool``, aten/src/ATen/cuda/CUDAGraph.cpp), and while the allocator
believes a capture is underway it defers every free until none is: :func:`capture` ends that too. Running out of
memory is not a capture failure: it propagates as is, and the pipeline falls back to the plain loop
(``Pipeline._denoise``).
"""

import dataclasses
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch import cuda  # the only CUDA surface used here; tests without a GPU put a stub of it in its place

from .approximations import EXACT
from .sampling import denoise

MAX_GRAPHS = 8
_SHARED = {}  # device → (memory pool, lock, capture stream)
_REGISTRY = threading.Lock()
_CAPTURE = threading.Lock()


class CaptureError(RuntimeError):
    """The loop cannot be captured (an operation that capture forbids); ``__cause__`` is what the loop raised."""


def _shared(device):
    with _REGISTRY:
        if device not in _SHARED:
            _SHARED[device] = (cuda.graph_pool_handle(), threading.RLock(), cuda.Stream(device))
        return _SHARED[device]


def capture(run, inputs, device):
    """Warms ``run(**inputs)`` up, then captures it into a graph on the device's capture stream and pool.
    Returns (graph, outputs). A failed capture is ended, the caller's stream is current again, and CaptureError
    is raised from the cause (out of memory is raised as is: the loop may well run without the graph's pool)."""
    pool, lock, stream = _shared(device)
    with lock, _CAPTURE, cuda.device(device):
        caller = cuda.current_stream(device)
        stream.wait_stream(caller)  # the inputs were written on the caller's stream
        with cuda.stream(stream):  # restores the caller's stream on any exit, which torch.cuda.graph does not
            run(**inputs)  # one whole loop: every kernel is loaded and tuned before capture
            cuda.synchronize(device)  # and any error of the warm-up surfaces here, not as a capture failure
            graph = cuda.CUDAGraph()
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            try:
                outputs = run(**inputs)
            except BaseException as cause:
                _end_failed_capture(graph, pool, device)
                if isinstance(cause, torch.OutOfMemoryError) or not isinstance(cause, Exception):
                    raise
                raise CaptureError(f"{type(cause).__name__}: {cause}") from cause
            try:
                graph.capture_end()
            except RuntimeError as err:
                _end_allocation_to_pool(pool, device)
                raise CaptureError(f"{type(err).__name__}: {err}") from err
        caller.wait_stream(stream)
    return graph, outputs


def _end_failed_capture(graph, pool, device):
    try:
        graph.capture_end()  # ends the invalidated capture; its error only repeats that it failed
    except RuntimeError:
        _end_allocation_to_pool(pool, device)


def _end_allocation_to_pool(pool, device):
    """What ``capture_end()`` skips when it throws before the allocator hears of it: the end of routing the
    capture's allocations to ``pool``, and the release of the reference to the pool that ``capture_begin()`` took
    (a graph whose capture never ended does not release it when it is destroyed, so the pool could never be freed)."""
    index = device.index if device.index is not None else cuda.current_device()
    try:
        cuda.memory._cuda_endAllocateToPool(index, pool)
    except RuntimeError:  # "not currently recording to mempool_id": capture_end got that far after all
        return
    cuda.memory._cuda_releasePool(index, pool)


class _Graph:
    def __init__(self, run, inputs, device):
        self.lock = _shared(device)[1]
        # the graph owns the memory its kernels read: replays copy new values into these
        self.inputs = {k: v.clone() if torch.is_tensor(v) else [t.clone() for t in v] for k, v in inputs.items()}
        self.graph, self.outputs = capture(run, self.inputs, device)

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
    """``denoise`` with the same arguments, on ``engines``' UNet, replayed from a CUDA graph captured per static
    key."""

    def __init__(self, engines):
        self.engines, self.device = engines, engines.device
        self.graphs = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, table, rows, z, context, dtype, *, x0=None, step_noise=None, residuals=None,
                 approximations=EXACT):
        # a static input like the others: the graph must own the memory its kernels read
        inputs = {"z": z, "context": context, "timesteps": torch.as_tensor(table.timesteps, device=self.device)}
        for name, value in (("x0", x0), ("step_noise", step_noise)):
            if value is not None:
                inputs[name] = value
        if residuals is not None:
            inputs["residuals"] = list(residuals)
        # every scalar of the table (a StepTable or a DPMTable) is baked into the captured kernels: all are the key
        key = (type(table).__name__, tuple(v.tobytes() if isinstance(v, np.ndarray) else v
                                           for v in (getattr(table, f.name) for f in dataclasses.fields(table))),
               rows, approximations, str(dtype),
               tuple((k, tuple(v.shape) if torch.is_tensor(v) else (len(v), tuple(v[0].shape)))
                     for k, v in sorted(inputs.items())))
        eng = self.engines

        def run(**static):
            return denoise(eng.unet, table, rows, static["z"], static["context"], dtype, x0=static.get("x0"),
                           step_noise=static.get("step_noise"), residuals=static.get("residuals"),
                           timesteps=static["timesteps"], approximations=approximations,
                           unet_parts=(eng.unet_full, eng.unet_shallow))

        with self.lock:
            graph = self.graphs.get(key)
            if graph is None:
                graph = self.graphs[key] = _Graph(run, inputs, self.device)
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
            self.graphs.move_to_end(key)
        return graph(inputs)
