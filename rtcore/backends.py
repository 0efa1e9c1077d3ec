"""Engine backends: loading an engine directory into :class:`~rtcore.engines.Engines`, without the export stack.

(Named ``backends`` and not ``load``: a submodule ``rtcore.load`` would replace the function ``rtcore.load`` on the
package the first time it is imported.)

ONNX models run in ONNX Runtime sessions (``onnx``): the CPU EP, or the CUDA EP with I/O binding (device tensors in
and out, no host copies) where onnxruntime-gpu is installed. ``Engines.providers`` reports the providers that each
session really runs (``session.get_providers()``), not the ones that are merely available. An ``openvino`` engine
directory holds OpenVINO IR converted from rtcore's ONNX graphs, compiled by OpenVINO's CPU plugin per input shape;
its manifest's dtype is OpenVINO's inference precision (``bf16`` runs convolutions, GEMMs and attention in bf16 on
CPUs with avx512_bf16 or AMX). AOTInductor packages
(``compile``) load with ``torch._inductor.aoti_load_package``, and TensorRT plans with the TensorRT runtime
(``tensorrt``, optional).
"""

import json
import threading
from pathlib import Path

import torch
from torch import cuda  # TensorRTModel's CUDA surface; tests without a GPU put a stub of it in its place

from .engines import Engines, resolve_device, resolve_dtype
from .manifest import validate
from .schedule import DDIMConfig

# ONNX element types for IOBinding; numpy has no bfloat16, so every type is given as its TensorProto number
_ONNX_TYPES = {torch.float32: 1, torch.int64: 7, torch.float16: 10, torch.bfloat16: 16}
_TORCH_TYPES = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64, "tensor(float16)": torch.float16,
                "tensor(bfloat16)": torch.bfloat16}


def _to_torch(value):
    """An output OrtValue → a torch tensor on the same device, without a copy. The public OrtValue speaks DLPack
    from onnxruntime 1.26 on; older wrappers only through the C value they hold."""
    return torch.from_dlpack(value if hasattr(value, "__dlpack__") else value._get_c_value())


def _on_stream(providers, stream):
    """``providers`` with the CUDA EP told to run on ``stream`` (``user_compute_stream``, as ORT's own torch
    helpers do); a provider given by name alone becomes a (name, options) pair, which ORT accepts for any."""
    result = []
    for provider in providers:
        name, options = (provider, {}) if isinstance(provider, str) else provider
        if name == "CUDAExecutionProvider":
            options = {**options, "user_compute_stream": str(stream.cuda_stream)}
        result.append((name, options))
    return result


class OrtModel:
    """One ONNX Runtime session behind the engine call signature (torch tensors in, torch tensors out).

    Inputs and outputs go through I/O binding on either device: ORT reads the torch tensors where they are and
    its outputs come back as torch tensors through DLPack, with no numpy round trip and, on CUDA, no host copy.

    On CUDA the session runs on a torch stream of its own (``user_compute_stream``), ordered after torch's current
    stream and before what follows on it by stream waits, and ORT does not synchronise at the end of a run
    (``disable_synchronize_execution_providers``): a UNet call costs no host synchronisation at all, where
    synchronising torch's stream before the run and ORT's after it cost two.
    """

    def __init__(self, path, inputs, outputs, device, providers=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # the runtime's CPU thread budget is torch's: a service that pins torch to N threads pins ORT too
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.device_id, self.stream, self.run_options = 0, None, None
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("device='cuda' with the onnx backend needs onnxruntime-gpu (not onnxruntime); "
                                 f"available providers: {ort.get_available_providers()}")
            self.device_id = device.index if device.index is not None else torch.cuda.current_device()
            self.stream = torch.cuda.Stream(device)
            self.run_options = ort.RunOptions()
            self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        if providers is None:
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id})] if device.type == "cuda" \
                else ["CPUExecutionProvider"]
        if self.stream is not None:
            providers = _on_stream(providers, self.stream)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.providers:
            # ORT falls back to the CPU with only a log line when the CUDA EP cannot load (e.g. a wheel built for
            # another CUDA major version): refuse instead of binding device memory to a CPU session
            raise ValueError(f"{path}: onnxruntime could not start CUDAExecutionProvider (the session runs "
                             f"{self.providers}); install an onnxruntime-gpu built for this CUDA version")
        self.inputs, self.outputs, self.device = inputs, outputs, device
        self.input_dtypes = {i.name: _TORCH_TYPES[i.type] for i in self.session.get_inputs()}

    def __call__(self, *args):
        binding = self.session.io_binding()
        keep = []  # the bound tensors must outlive the run
        for name, tensor in zip(self.inputs, args):
            tensor = tensor.to(self.device, self.input_dtypes[name]).contiguous()
            keep.append(tensor)
            binding.bind_input(name, self.device.type, self.device_id, _ONNX_TYPES[tensor.dtype],
                               tuple(tensor.shape), tensor.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, self.device.type, self.device_id)
        if self.stream is None:
            self.session.run_with_iobinding(binding)
        else:
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)  # the inputs were written on torch's stream
            self.session.run_with_iobinding(binding, self.run_options)
            current.wait_stream(self.stream)  # what follows on torch's stream sees the outputs; memory freed after
            # this call is reused only by work ordered after the run (torch's allocator is per stream)
        out = tuple(_to_torch(v) for v in binding.get_outputs())
        return out[0] if len(out) == 1 else out


# OpenVINO's names for the manifest's dtypes. The hint is always set: left alone, OpenVINO picks bf16 by itself on a
# CPU with avx512_bf16, so an "fp32" engine would silently run in bf16.
OPENVINO_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
# OpenVINO's CPU plugin quantizes activations to int8 at run time, per group of this many channels, for layers whose
# weights are int8: u8×s8 GEMMs (VNNI) instead of bf16 ones. 32 measured fastest on an SD 1.5 UNet row (Zen 4).
OPENVINO_INT8_GROUP = 32


class OpenVinoModel:
    """One model of an ``openvino`` engine directory (OpenVINO IR), compiled by OpenVINO's CPU plugin, behind the
    engine call signature.

    The IR's weights are memory-mapped and already in the form the precision wants: fp32; fp16 for a bf16 engine
    (the CPU plugin turns them into bf16 when it compiles, so the process maps 2 bytes per weight, not 4); int8
    linear layers with ``--int8``. The graph has dynamic axes; the CPU plugin runs a graph reshaped to static shapes
    faster (an SD 1.5 UNet row in fp32: 4.0 s against 4.3 s on 2 Zen 4 cores), so each input signature gets its own
    compiled model, compiled from the IR on first use (about 4 s for an SD 1.5 UNet); the last ``MAX_SHAPES`` are
    kept. OpenVINO's model cache is not used: its blob holds the weights once more, so a cache hit reads them into
    memory on top of the mapped IR (an SD 1.5 UNet in bf16 peaked at 5.2 GB instead of 3.6 GB) to save 1–2 s.

    Threads: ``torch.get_num_threads()`` at load, one stream, latency mode, so that a process that pins torch to N
    threads gets N here too and OpenVINO's pool never competes with torch's. An infer request is not thread-safe:
    calls take turns (one UNet call already uses every thread).
    """

    MAX_SHAPES = 4

    def __init__(self, path, inputs, outputs, dtype, int8=False):
        import openvino as ov

        self.core, self.path = ov.Core(), str(path)
        self.config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION[dtype],
                       "INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1,
                       "PERFORMANCE_HINT": "LATENCY"}
        if int8:  # int8 weights (to_openvino_ir): activations quantized at run time, per group of channels
            self.config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = OPENVINO_INT8_GROUP
        self.inputs, self.outputs = inputs, outputs
        self.compiled = {}  # input shapes → (compiled model, its infer request), oldest first
        self.lock = threading.Lock()

    def _request(self, shapes):
        if shapes in self.compiled:
            self.compiled[shapes] = self.compiled.pop(shapes)  # now the most recently used
        else:
            model = self.core.read_model(self.path)  # IR weights are memory-mapped: re-reading is cheap
            model.reshape(dict(zip(self.inputs, (list(s) for s in shapes))))
            compiled = self.core.compile_model(model, "CPU", self.config)
            self.compiled[shapes] = compiled, compiled.create_infer_request()
            if len(self.compiled) > self.MAX_SHAPES:
                del self.compiled[next(iter(self.compiled))]
        return self.compiled[shapes][1]

    def __call__(self, *args):
        # numpy has no bfloat16: the graphs take fp32 (token ids stay int64) whatever the inference precision
        feed = {n: t.detach().to("cpu", torch.int64 if t.dtype == torch.int64 else torch.float32).contiguous().numpy()
                for n, t in zip(self.inputs, args)}
        with self.lock:
            request = self._request(tuple(a.shape for a in feed.values()))
            result = request.infer(feed, share_inputs=True)  # outputs are copied out of the request
            out = tuple(torch.from_numpy(result[i]) for i in range(len(self.outputs)))
        return out[0] if len(out) == 1 else out

    def compiled_model(self):
        """The most recently used compiled model (for its properties), or None before the first call."""
        return next(reversed(self.compiled.values()))[0] if self.compiled else None


def require_openvino(device):
    """The openvino backend's preconditions, as one clear error: the package, and a CPU device."""
    if torch.device(device).type != "cpu":
        raise ValueError("backend 'openvino' runs on the CPU (its CPU plugin): pass device='cpu', or use the onnx, "
                         "compile or tensorrt backend on a GPU")
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ValueError("backend 'openvino' needs OpenVINO: pip install 'rtcore[openvino]'") from None


def _load_aoti(path, device):
    """An AOTInductor package. On CUDA its default thread-safe runner records and queries a CUDA event per call,
    which a graph capture forbids, so it runs single-threaded, and a lock provides the thread safety instead."""
    if device.type != "cuda":
        package = torch._inductor.aoti_load_package(str(path))
        return lambda *args: package(*args)
    package = torch._inductor.aoti_load_package(str(path), run_single_threaded=True,
                                                device_index=device.index if device.index is not None else -1)
    lock = threading.Lock()

    def run(*args):
        with lock:
            return package(*args)

    return run


# -- TensorRT ---------------------------------------------------------------------------------------------------
# An optional backend: TensorRT is imported only when it is asked for (the project installs and its tests pass
# without it), and asking for it where it is missing gives one clear message. The engine runs on torch CUDA
# tensors: input and output addresses are bound before each ``execute_async_v3``, on a stream of the engine's own
# that is ordered after torch's current stream and before what follows on it (TensorRT warns against the default
# stream). A plan is deserialised and run with its device current: TensorRT uses the thread's current device, not
# the tensors'. One execution context serves all threads, so a lock keeps one caller's shapes and addresses from
# another's. Plans are built by rtcore.export.build.build_plan.

TENSORRT_ALIGNMENT = 256  # bytes: TensorRT's required alignment of tensor addresses


def require_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise ValueError("backend 'tensorrt' needs NVIDIA TensorRT (pip install tensorrt, on a machine with a CUDA "
                         "GPU); use backend='onnx' or 'compile' otherwise") from None


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
        if tensor.data_ptr() % TENSORRT_ALIGNMENT:  # e.g. a one-element slice of the timestep table
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


def _load_model(backend, engine_dir, entry, device, dtype, providers):
    path = engine_dir / entry["file"]
    inputs, outputs = tuple(entry["inputs"]), tuple(entry["outputs"])
    if backend == "onnx":
        return OrtModel(path, inputs, outputs, device, providers)
    if backend == "openvino":
        return OpenVinoModel(path, inputs, outputs, dtype, int8=bool(entry.get("int8")))
    if backend == "compile":
        return _load_aoti(path, device)
    require_tensorrt()
    return TensorRTModel(path, inputs, outputs, device)


def load_engines(engine_dir, device="cpu", providers=None, check_hashes=True) -> Engines:
    """Validates ``engine_dir`` for ``device`` (versions, GPU, artifact hashes) and loads its models (five graphs:
    the UNet is two)."""
    from transformers import CLIPTokenizer  # the tokenizer only: no modelling code

    engine_dir, device = Path(engine_dir), resolve_device(device)
    manifest = validate(engine_dir, device, check_hashes=check_hashes)
    backend = manifest["backend"]
    if backend == "compile" and (manifest.get("kernels") or manifest.get("int8")):
        import rtcore.kernels  # noqa: F401  registers torch.ops.rtcore.*, which the engines' graphs call
    if backend == "openvino":
        require_openvino(device)
    dtype = resolve_dtype(manifest["dtype"])
    models = {name: _load_model(backend, engine_dir, entry, device, dtype, providers)
              for name, entry in manifest["models"].items()}
    cfg = manifest["config"]
    shapes = manifest["shapes"]
    scheduler = json.loads((engine_dir / "scheduler" / "scheduler_config.json").read_text())
    return Engines(
        text_encode=models["text_encoder"],
        vae_encode=models["vae_encoder"],
        vae_decode=models["vae_decoder"],
        unet=lambda *args: models["unet"](*args)[0],  # the exact path: its deep features go unused
        unet_full=models["unet"],
        unet_shallow=models["unet_shallow"],
        tokenizer=CLIPTokenizer.from_pretrained(str(engine_dir / "tokenizer")),
        scheduler=DDIMConfig.from_dict(scheduler),
        scaling_factor=cfg["scaling_factor"],
        vae_scale_factor=cfg["vae_scale_factor"],
        latent_channels=cfg["latent_channels"],
        device=device,
        dtype=dtype,
        backend=backend,
        fixed_size=(shapes["height"], shapes["width"]) if shapes.get("fixed_size") else None,
        default_size=(shapes["height"], shapes["width"]),  # the build's size: the UNet's own unless told otherwise
        providers={n: m.providers for n, m in models.items() if isinstance(m, OrtModel)},
    )
