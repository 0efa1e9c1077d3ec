"""Stubs of APIs that cannot exist on a machine without a GPU, for the tests that check rtcore's use of them: the
part of ``torch.cuda`` that rtcore.graphs and rtcore.backends (TensorRT) call, and the ``tensorrt`` module (10.x and
11.x surfaces). Each keeps the state and the failures of the real API that the tests are about, nothing more."""

import contextlib
import enum
import types

import torch


class StubCuda:
    """Stands in for the part of ``torch.cuda`` that :mod:`rtcore.graphs` calls, on a machine without a GPU.

    It keeps what the real runtime keeps: each thread's current stream (``stream()`` restores it on exit, as
    torch's StreamContext does), the capture state, and the pools the caching allocator routes a capture's
    allocations to. Its graphs behave as CUDA does: ``sync()`` (what ``.item()`` does) during a capture raises and
    invalidates the capture, ``capture_end()`` of an invalidated capture raises again, before it ends the
    allocator's routing (as torch's does), and ``capture_end()`` on another stream than ``capture_begin()``'s
    raises.
    """

    def __init__(self):
        self.default = self.current = _StubStream("default stream")
        self.capturing = None
        self.device_index = 0  # the thread's current device
        self.streams = {}  # device → streams made for it
        self.routed_pools = []  # the caching allocator's captures underway (beginAllocateToPool's list)
        self.pool_references = {}  # pool → references taken by capture_begin and not yet released
        self.memory = types.SimpleNamespace(_cuda_endAllocateToPool=self._end_allocate_to_pool,
                                            _cuda_releasePool=self._release_pool)

    def _end_allocate_to_pool(self, device, pool):
        if pool not in self.routed_pools:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")
        self.routed_pools.remove(pool)

    def _release_pool(self, device, pool):
        self.pool_references[pool] -= 1

    def graph_pool_handle(self):
        return object()

    def Stream(self, device):  # noqa: N802  (torch's name)
        stream = _StubStream(f"stream {len(self.streams.setdefault(device, []))} of {device}")
        self.streams[device].append(stream)
        return stream

    def current_stream(self, device=None):
        return self.current

    @contextlib.contextmanager
    def stream(self, stream):
        previous, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = previous

    @contextlib.contextmanager
    def device(self, device):
        previous, self.device_index = self.device_index, torch.device(device).index
        try:
            yield
        finally:
            self.device_index = previous

    def current_device(self):
        return self.device_index

    def synchronize(self, device=None):
        pass

    def CUDAGraph(self):  # noqa: N802
        return _StubGraph(self)

    def sync(self):
        if self.capturing is not None:
            self.capturing.invalidated = True
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


class _StubStream(str):
    def wait_stream(self, other):
        pass


class _StubGraph:
    def __init__(self, cuda):
        self.cuda, self.stream, self.invalidated = cuda, None, False

    def capture_begin(self, pool=None, capture_error_mode="global"):
        assert self.cuda.current != self.cuda.default, "CUDA graphs must be captured on a non-default stream"
        self.stream, self.cuda.capturing, self.pool = self.cuda.current, self, pool
        self.cuda.routed_pools.append(pool)
        self.cuda.pool_references[pool] = self.cuda.pool_references.get(pool, 0) + 1  # graph.reset releases it

    def capture_end(self):
        if self.cuda.current != self.stream:
            raise RuntimeError("Capture must end on the same stream it began on.")
        self.cuda.capturing = None
        if self.invalidated:  # cudaStreamEndCapture fails: torch throws before endAllocateToPool
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        self.cuda.routed_pools.remove(self.pool)

    def replay(self):
        pass


def stub_tensorrt(major, current_device=lambda: 0):
    """The ``tensorrt`` module's surface that rtcore uses, as TensorRT ``major`` (10 or 11) has it. TensorRT 11
    removed the weak-typing flags (``BuilderFlag.FP16``/``BF16``/``INT8``); TensorRT 10 has them but, like the
    real builder, refuses a strongly typed network with one set. ``current_device()`` is what engines record as
    the device they were deserialised on (TensorRT uses the thread's current CUDA device). Enum values are
    arbitrary: rtcore uses the names."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = f"{major}.1.0"
    trt.float32, trt.float16, trt.bfloat16, trt.int64, trt.int32 = "FLOAT", "HALF", "BF16", "INT64", "INT32"
    precision = {"FP16": 0, "INT8": 1, "BF16": 17} if major < 11 else {}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {**precision, "TF32": 6, "REFIT": 4})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.built = []  # (network, config) of each build

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity=None):
            pass

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.strongly_typed = major >= 11 or bool(flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+timings"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache = set(), [], None

        def set_memory_pool_limit(self, pool, size):
            self.workspace = size

        def set_flag(self, flag):
            self.flags.add(trt.BuilderFlag(flag))

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (lo, opt, hi)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.built.append((network, config))
            if network.strongly_typed and config.flags & {f for f in trt.BuilderFlag if f.name in precision}:
                return None  # TensorRT logs that precision flags are not allowed with strong typing
            return b"plan"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            return True

    class Engine:
        def __init__(self):
            self.device = current_device()

        def create_execution_context(self):
            return types.SimpleNamespace(device=current_device())

        def get_tensor_dtype(self, name):
            return trt.float16

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt
