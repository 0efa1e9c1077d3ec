"""TensorRT engines, an optional backend: ONNX → plan with an optimisation profile and a timing cache.

TensorRT is imported only here and only when it is asked for. The project installs and its tests pass without
it. Asking for it where it is missing gives one clear message.

Precision: networks are strongly typed. The ONNX is exported in the engine's dtype, so its types are the ones
wanted; TensorRT 11 removed the weak-typing flags (``BuilderFlag.FP16``/``BF16``), and TensorRT 10 (from 9.1)
builds the same strongly typed network when asked with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.

The engine runs on torch CUDA tensors: the input and output addresses are bound before each
``execute_async_v3``, on a stream of the engine's own that is ordered after torch's current stream and before
what follows on it (TensorRT warns against the default stream). A plan is deserialised and run with its device
current: TensorRT uses the thread's current device, not the tensors'. One execution context serves all threads,
so a lock keeps one caller's shapes and addresses from another's.
"""

import threading

import torch
from torch import cuda  # the only CUDA surface used here; tests without a GPU put a stub of it in its place

ALIGNMENT = 256  # bytes: TensorRT's required alignment of tensor addresses


def require_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise ValueError("backend 'tensorrt' needs NVIDIA TensorRT (pip install tensorrt, on a machine with a CUDA "
                         "GPU); use backend='onnx' or 'compile' otherwise") from None


def build_plan(onnx_path, plan_path, profile, dtype=torch.float16, timing_cache=None, workspace_gb=8):
    """Parses an ONNX file exported in ``dtype`` and serialises a strongly typed TensorRT plan for the given
    (min, opt, max) profile: every tensor keeps the ONNX's type (``dtype`` only names the build in errors)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gb << 30)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build a {dtype} engine for {onnx_path} (its log above says why)")
    plan_path.write_bytes(bytes(plan))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan_path


class TensorRTModel:
    """One deserialised plan behind the engine call signature: torch CUDA tensors in, torch tensors out."""

    def __init__(self, plan_path, inputs, outputs, device):
        import tensorrt as trt

        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with cuda.device(device):  # the engine and its context live on the device current when they are made
            self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
            if self.engine is None:  # TensorRT logs why (another TensorRT version or GPU) and returns None
                raise RuntimeError(f"TensorRT could not deserialise {plan_path}; rebuild the engine directory with "
                                   "this TensorRT on this GPU")
            self.context = self.engine.create_execution_context()
        self.inputs, self.outputs, self.device = inputs, outputs, device
        self.dtypes = {name: _torch_dtype(self.engine.get_tensor_dtype(name)) for name in inputs + outputs}
        self.stream = cuda.Stream(device)
        self.lock = threading.Lock()

    def _bind_input(self, name, tensor):
        tensor = tensor.to(self.dtypes[name]).contiguous()
        if tensor.data_ptr() % ALIGNMENT:  # e.g. a one-element slice of the timestep table
            tensor = tensor.clone()
        if not self.context.set_input_shape(name, tuple(tensor.shape)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            raise ValueError(f"TensorRT engine input {name!r}: shape {tuple(tensor.shape)} is outside the built "
                             f"profile ({tuple(lo)} to {tuple(hi)}); rebuild the engine with a larger --batch")
        self.context.set_tensor_address(name, tensor.data_ptr())
        return tensor

    def __call__(self, *args):
        current = cuda.current_stream(self.device)
        with self.lock, cuda.device(self.device):
            keep = [self._bind_input(name, tensor) for name, tensor in zip(self.inputs, args)]  # outlive the launch
            results = []
            for name in self.outputs:
                out = torch.empty(tuple(self.context.get_tensor_shape(name)), device=self.device,
                                  dtype=self.dtypes[name])
                self.context.set_tensor_address(name, out.data_ptr())
                results.append(out)
            self.stream.wait_stream(current)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            current.wait_stream(self.stream)  # what follows on torch's stream sees the outputs
            del keep  # freed memory is reused only by work ordered after the launch
        return results[0] if len(results) == 1 else tuple(results)


def _torch_dtype(trt_dtype):
    import tensorrt as trt

    return {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64, trt.int32: torch.int32}[trt_dtype]
