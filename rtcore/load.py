"""Loading an engine directory into :class:`~rtcore.engines.Engines`, without the export stack.

ONNX models run in ONNX Runtime sessions: the CPU EP, or the CUDA EP with I/O binding (device tensors in and
out, no host copies) where onnxruntime-gpu is installed. ``Engines.providers`` reports the providers that each
session really runs (``session.get_providers()``), not the ones that are merely available. AOTInductor packages
(``compile``) load with ``torch._inductor.aoti_load_package``, and TensorRT plans with the TensorRT runtime.
"""

import json
from pathlib import Path

import numpy as np
import torch

from .engines import Engines, resolve_device, resolve_dtype
from .manifest import validate
from .schedule import DDIMConfig

_ORT_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


class OrtModel:
    """One ONNX Runtime session behind the engine call signature (torch tensors in, torch tensors out)."""

    def __init__(self, path, inputs, outputs, device, providers=None, threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # the runtime's CPU thread budget is torch's: a service that pins torch to N threads pins ORT too
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        if providers is None:
            providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("device='cuda' with the onnx backend needs onnxruntime-gpu (not onnxruntime); "
                             f"available providers: {ort.get_available_providers()}")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.inputs, self.outputs, self.device = inputs, outputs, device
        self.input_types = {i.name: i.type for i in self.session.get_inputs()}

    def _numpy(self, name, tensor):
        want = np.float16 if self.input_types[name] == "tensor(float16)" else \
            np.int64 if self.input_types[name] == "tensor(int64)" else np.float32
        return tensor.detach().cpu().numpy().astype(want, copy=False)

    def __call__(self, *args):
        if self.device.type == "cuda":
            return self._run_bound(args)
        results = self.session.run(list(self.outputs), {n: self._numpy(n, t) for n, t in zip(self.inputs, args)})
        out = tuple(torch.from_numpy(r) for r in results)
        return out[0] if len(out) == 1 else out

    def _run_bound(self, args):
        binding = self.session.io_binding()
        keep = []
        for name, tensor in zip(self.inputs, args):
            tensor = tensor.contiguous()
            keep.append(tensor)
            binding.bind_input(name, "cuda", self.device.index or 0, _ORT_TYPES[tensor.dtype], tuple(tensor.shape),
                               tensor.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device.index or 0)
        torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
        self.session.run_with_iobinding(binding)
        out = tuple(torch.from_dlpack(v.to_dlpack()) for v in binding.get_outputs())
        return out[0] if len(out) == 1 else out


def _load_model(backend, engine_dir, entry, device, providers):
    path = engine_dir / entry["file"]
    inputs, outputs = tuple(entry["inputs"]), tuple(entry["outputs"])
    if backend == "onnx":
        return OrtModel(path, inputs, outputs, device, providers)
    if backend == "compile":
        package = torch._inductor.aoti_load_package(str(path))
        return lambda *args: package(*args)
    from .tensorrt_engine import TensorRTModel, require_tensorrt

    require_tensorrt()
    return TensorRTModel(path, inputs, outputs, device)


def load_engines(engine_dir, device="cpu", providers=None, check_hashes=True) -> Engines:
    """Validates ``engine_dir`` for ``device`` (versions, GPU, artifact hashes) and loads its four engines."""
    from transformers import CLIPTokenizer  # the tokenizer only: no modelling code

    engine_dir, device = Path(engine_dir), resolve_device(device)
    manifest = validate(engine_dir, device, check_hashes=check_hashes)
    backend = manifest["backend"]
    models = {name: _load_model(backend, engine_dir, entry, device, providers)
              for name, entry in manifest["models"].items()}
    dtype = resolve_dtype(manifest["dtype"])
    cfg = manifest["config"]
    shapes = manifest["shapes"]
    scheduler = json.loads((engine_dir / "scheduler" / "scheduler_config.json").read_text())
    return Engines(
        text_encode=models["text_encoder"],
        vae_encode=models["vae_encoder"],
        vae_decode=models["vae_decoder"],
        unet=models["unet"],
        tokenizer=CLIPTokenizer.from_pretrained(str(engine_dir / "tokenizer")),
        scheduler=DDIMConfig.from_dict(scheduler),
        scaling_factor=cfg["scaling_factor"],
        vae_scale_factor=cfg["vae_scale_factor"],
        latent_channels=cfg["latent_channels"],
        device=device,
        dtype=dtype,
        backend=backend,
        fixed_size=(shapes["height"], shapes["width"]) if shapes.get("fixed_size") else None,
        providers={n: m.providers for n, m in models.items() if isinstance(m, OrtModel)},
    )
