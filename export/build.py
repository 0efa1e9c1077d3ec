"""Engine builders: a checkpoint → an engine directory (ONNX, OpenVINO, AOTInductor, TensorRT), and the content-keyed
cache.

    build("path/to/checkpoint", "engines/sd15-onnx", backend="onnx", dtype="fp32", height=512, width=512)
    build("path/to/checkpoint", "engines/sd15-ov-bf16", backend="openvino", dtype="bf16")  # OpenVINO IR, bf16
    engine_dir = cached_build("path/to/checkpoint", backend="onnx")   # ~/.cache/rtcore/… built once, then reused

Each model is exported from its declared contract (``contracts.py``) into its own subfolder, so that the external
data files of models over 2 GB cannot collide. The manifest is written last and the directory is renamed into
place, so a build that is interrupted leaves only a hidden ``.*.building-*`` folder and never a valid-looking
engine directory.
"""

import hashlib
import importlib.util
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from rtcore.cpp_request import DEFAULT_EDIT, table_json, table_text
from rtcore.engines import DTYPE_NAMES, resolve_device, resolve_dtype, resolve_int8
from rtcore.manifest import (
    BACKEND_DEPENDENCIES,
    DEVICE_BOUND,
    FORMAT_VERSION,
    EngineMismatch,
    cache_root,
    commit_directory,
    device_info,
    is_engine_directory,
    partial_directory,
    recorded_versions,
    remove_abandoned,
    sha256_file,
    validate,
    version_of,
    write_manifest,
)
from rtcore.schedule import DDIMConfig, step_table

from . import compile_flags
from .calibration import shallow_calibration_set, unet_calibration_set
from .checkpoint import load_checkpoint, resolve
from .contracts import contracts
from .progress import Stages

BACKENDS = ("onnx", "openvino", "compile", "tensorrt")
ONNX_OPSET = 18
# The CLIP text encoder of ONNX-based engines computes in fp32 and casts its output to the engine dtype. Traced in
# fp16, the TorchScript exporter builds SDPA's causal mask in fp32, type promotion makes the attention output and
# the LayerNormalization inputs fp32 while their scales stay fp16, and ONNX Runtime refuses the graph ("Type
# parameter (T) of Optype (LayerNormalization) bound to different types") on every execution provider. It runs once
# per edit (13 GFLOP per prompt at SD 1.5 size), so fp32 costs nothing that matters.
TEXT_ENCODER_DTYPE = {"onnx": torch.float32, "tensorrt": torch.float32}


def fingerprint(root) -> str:
    """sha256 over the checkpoint's weight and config files (names and contents)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _export_onnx(contract, folder, device, session=True):
    """``contract``'s model as ``folder/model.onnx``, checked before the build goes on: ``onnx.checker``'s full check
    (strict shape and type inference), and with ``session`` an ONNX Runtime session on ``device`` (CUDA EP where
    onnxruntime-gpu has it), which resolves every node's types and kernels the way loading the engine will."""
    import onnx

    path = folder / "model.onnx"
    # the TorchScript-based exporter: ~10× faster to export than the dynamo one here, and its graphs run as fast
    # in ONNX Runtime; models over 2 GB get their weights in external data files in the same folder
    with warnings.catch_warnings():
        # its chatter is not news: its own deprecation notice, and the tracer's notes on the models' shape checks
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")
        torch.onnx.export(contract.module, contract.sample, str(path), input_names=list(contract.inputs),
                          output_names=list(contract.outputs), dynamic_axes=contract.dynamic_axes,
                          opset_version=ONNX_OPSET, dynamo=False)
    onnx.checker.check_model(str(path), full_check=True)  # by path: works for models with external data
    if session:
        _open_session(path, device)
    return path


def _open_session(path, device):
    import onnxruntime as ort

    cuda = torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
    provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # resolution only: quick
    try:
        ort.InferenceSession(str(path), options, providers=[provider])
    except Exception as err:  # ORT raises its own exception types: one clear message naming the model
        raise RuntimeError(f"ONNX Runtime refuses the exported {path.parent.name} model ({path}): {err}") from None


def _export_aoti(contract, folder, device):
    dims = {}
    dynamic = {}
    for name in contract.inputs:
        axes = contract.dynamic_axes.get(name, {})
        # only the batch/rows/prompts axis is dynamic: spatial sizes are fixed at build time (the shape profile)
        dynamic[name] = {0: dims.setdefault(axes[0], torch.export.Dim(axes[0], min=1, max=1024))} if 0 in axes \
            else None
    # torch.export specialises a size-1 dimension to the constant 1: trace dynamic axes at size 2 at least
    sample = tuple(t.expand(2, *t.shape[1:]).contiguous() if dynamic[n] and t.shape[0] == 1 else t
                   for n, t in zip(contract.inputs, contract.sample))
    with torch.no_grad():
        program = torch.export.export(contract.module, sample, dynamic_shapes=dynamic)
        path = folder / "model.pt2"
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs=compile_flags.inductor_flags(device))
    return path


def build_unet_package(checkpoint, folder, dtype, size, device="cpu"):
    """The UNet alone (its ``unet`` contract: outputs the model output and the deep features) as an AOTInductor
    package for images of ``size``², loaded: for row benchmarks (a whole ``compile`` engine directory also compiles
    the VAE, the text encoder and the shallow UNet)."""
    ckpt = load_checkpoint(resolve(checkpoint))
    ckpt.unet.to(device, dtype).eval()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    contract = contracts(ckpt, size, size, 1, device, dtype)["unet"]
    return torch._inductor.aoti_load_package(str(_export_aoti(contract, folder, device)))


def to_openvino_ir(onnx_path, folder, dtype, int8=None, calibration=None):
    """An exported fp32 ONNX model as OpenVINO IR (``model.xml`` + ``model.bin``) in ``folder``, its weights stored
    for the precision the engine runs in. fp32: as they are. bf16: as fp16, which OpenVINO's CPU plugin turns into
    bf16 when it compiles, so a process maps 2 bytes per weight instead of 4 (an SD 1.5 UNet: 3.6 GB resident
    against 5.7 GB from fp32 weights; its drift against fp32 went from 2.4% to 2.7% RMS, bf16 itself being the
    most of it).

    ``int8="dynamic"``: the linear layers (MatMul weights: attention projections, feed-forward, time embedding)
    become int8 with a per-channel scale and zero point (NNCF weight compression), and OpenVINO runs them as
    dynamically quantized int8 GEMMs (``rtcore.backends.OPENVINO_INT8_GROUP``). NNCF stores the convolutions'
    weights as int8 too, but they compute in bf16 (weight-only: OpenVINO expands them when it compiles).
    ``int8="static"``: that, and the convolutions (55% of an SD 1.5 UNet row's FLOPs) become int8 too, weights and
    activations, the activations' ranges fixed by NNCF's post-training quantization on ``calibration`` (input
    dicts, export.calibration). Every MatMul is left out of that second pass: the linear ones already have int8
    weights, and the attention ones (queries × keys, softmax probabilities × values) stay bf16. This is OpenVINO's
    "hybrid" recipe for diffusion UNets (optimum-intel), less the attention matmuls."""
    import openvino as ov

    if int8 == "static" and not calibration:
        raise ValueError("int8='static' needs calibration samples (export.calibration.unet_calibration_set)")
    model = ov.Core().read_model(str(onnx_path))
    if int8:
        try:
            import nncf
        except ImportError:
            raise ValueError("int8 openvino engines need NNCF: pip install 'rtcore[openvino]'") from None
        nncf.set_log_level(logging.WARNING)  # not a line per layer it leaves out
        convs = nncf.IgnoredScope(types=["Convolution"], validate=False)
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM,
                                      ignored_scope=convs if int8 == "static" else None)
        if int8 == "static":
            # every MatMul is left out: the linear ones already have int8 weights, the attention ones stay bf16
            model = nncf.quantize(
                model, nncf.Dataset(calibration), subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER,
                ignored_scope=nncf.IgnoredScope(types=["MatMul"], validate=False),
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(convolution=-1, matmul=-1)))
    path = Path(folder) / "model.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=dtype != torch.float32)
    return path


def build_plan(onnx_path, plan_path, profile, dtype=torch.float16, timing_cache=None, workspace_gb=8):
    """Parses an ONNX file exported in ``dtype`` and serialises a strongly typed TensorRT plan for the given
    (min, opt, max) profile: every tensor keeps the ONNX's type (``dtype`` only names the build in errors).

    Strongly typed because the ONNX is exported in the engine's dtype, so its types are the ones wanted: TensorRT 11
    removed the weak-typing flags (``BuilderFlag.FP16``/``BF16``), and TensorRT 10 (from 9.1) builds the same
    strongly typed network when asked with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``."""
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


def _export_tensorrt(contract, folder, dtype, device):
    # ONNX Runtime checks the graph too where it is installed; TensorRT's parser is the real judge below
    onnx_path = _export_onnx(contract, folder, device, session=importlib.util.find_spec("onnxruntime") is not None)
    return build_plan(onnx_path, folder / "model.plan", contract.profile, dtype=dtype,
                      timing_cache=folder.parent / "timing.cache")


def _check_options(backend, dtype, kernels, int8, device):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if kernels and backend != "compile":
        raise ValueError(f"kernels are Triton ops for the 'compile' (and eager) backends; the {backend} backend "
                         "uses its own fused kernels: drop --kernels or use --backend compile")
    if int8 and backend not in ("compile", "openvino"):
        raise ValueError(f"int8 is Triton dynamic quantization on the 'compile' backend or NNCF int8 linear layers on "
                         f"the 'openvino' backend; the {backend} backend has none: drop --int8")
    if int8 == "static" and backend != "openvino":
        raise ValueError(f"int8='static' (calibrated int8 convolutions) is an openvino engine; the {backend} backend's "
                         "int8 is dynamic: pass int8=True (--int8)")
    if dtype == torch.bfloat16 and backend in ("onnx", "tensorrt"):
        # the exported graph would be invalid: opset 18's Conv has no bfloat16 (nor do ONNX Runtime's kernels), and
        # the text encoder's export fails outright ("ScalarType ComplexDouble is an unexpected tensor scalar type")
        raise ValueError(f"dtype bf16 cannot be built for the {backend} backend (ONNX opset {ONNX_OPSET} convolutions "
                         "have no bfloat16): use dtype fp16 or fp32 with it, or bf16 with the openvino, compile or "
                         "eager backends")
    if int8 and backend == "openvino" and dtype != torch.bfloat16:
        raise ValueError("int8 openvino engines run the rest of the UNet in bf16: pass dtype='bf16' (--dtype bf16)")
    if backend == "tensorrt":
        from rtcore.backends import require_tensorrt

        require_tensorrt()
        if device.type != "cuda":
            raise ValueError("backend 'tensorrt' builds for a GPU: pass device='cuda'")
    if backend == "openvino":
        from rtcore.backends import require_openvino

        require_openvino(device)
    if backend in ("onnx", "openvino"):
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise ValueError(f"backend {backend!r} needs the onnx package to export: pip install 'rtcore[onnx]'") \
                from None
    if dtype == torch.float16 and device.type == "cpu" and backend == "compile":
        raise ValueError("fp16 compile builds need device='cuda'; on the CPU use dtype bf16 (avx512_bf16/AMX) or fp32")


def check_out(root, out, overwrite):
    """Refuses, before any work, an ``out`` that would put what the user gave at risk: the checkpoint itself, a
    folder inside it or around it, or an existing path that is not an engine directory. ``overwrite`` replaces only
    an engine directory (one with rtcore's manifest.json)."""
    out = Path(out)
    root_at, out_at = Path(root).resolve(), out.resolve()
    never = "an export never writes over what it reads: choose a new folder"
    if out_at == root_at:
        raise ValueError(f"out (--out) {out} is the checkpoint itself; {never}")
    if root_at in out_at.parents:
        raise ValueError(f"out (--out) {out} lies inside the checkpoint {root}; {never}")
    if out_at in root_at.parents:
        raise ValueError(f"out (--out) {out} contains the checkpoint {root}; {never}")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{out} exists; choose a new folder or pass overwrite=True (--overwrite)")
        if not is_engine_directory(out):
            raise FileExistsError(f"out (--out) {out} exists and is not an rtcore engine directory (no rtcore "
                                  "manifest.json): overwrite=True (--overwrite) replaces only an engine directory, "
                                  "never other files; choose a new folder")


def build(checkpoint, out, backend="onnx", dtype="fp32", height=None, width=None, batch=1, kernels=False,
          int8=False, device="cpu", overwrite=False, checkpoint_fingerprint=None, calibration=None, quiet=False):
    """Exports the four models of ``checkpoint`` into the engine directory ``out``; returns its path.
    ``int8``: False, True or "dynamic" (int8 linear layers), or "static" (openvino: int8 convolutions too,
    calibrated on ``calibration``, a list of (image, caption) pairs like the photos the engine will edit; default:
    shapes-world scenes, export.calibration). ``checkpoint_fingerprint``: when the caller has already hashed the
    checkpoint (the cache has). Each stage is printed on stderr as it starts and ends, unless ``quiet``."""
    dtype, device, int8 = resolve_dtype(dtype), resolve_device(device), resolve_int8(int8)
    _check_options(backend, dtype, kernels, int8, device)
    if calibration is not None and (int8 != "static" or not calibration
                                    or not all(isinstance(c, tuple) and len(c) == 2 for c in calibration)):
        raise ValueError("calibration: a non-empty list of (image, caption) pairs, for int8='static' engines only")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    out = Path(out)
    root = resolve(checkpoint)
    check_out(root, out, overwrite)
    stages = Stages(quiet)
    with stages(f"reading the checkpoint {root}"):
        ckpt = load_checkpoint(root)
    size = ckpt.unet.config.sample_size * ckpt.vae.config.scale_factor
    height, width = height or size, width or size
    if backend == "compile" and (kernels or int8):
        from .patch import patch

        for model in (ckpt.unet, ckpt.vae):
            patch(model, group_norm=kernels, attention=kernels, int8=int8)
    # an openvino engine is converted from the fp32 ONNX graph: its dtype is the precision OpenVINO compiles it for
    export_dtype = torch.float32 if backend == "openvino" else dtype
    for model in (ckpt.unet, ckpt.vae):
        model.to(device, export_dtype).eval()
    ckpt.text_encoder.to(device, TEXT_ENCODER_DTYPE.get(backend, export_dtype)).eval()
    if backend == "compile" and device.type == "cuda":
        ckpt.unet.to(memory_format=torch.channels_last)
        ckpt.vae.to(memory_format=torch.channels_last)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out.parent)  # what builds killed here earlier left behind (gigabytes at SD size)
    tmp = partial_directory(out)
    tmp.mkdir()
    try:
        models, unet_samples = {}, None
        for name, contract in contracts(ckpt, height, width, batch, device, export_dtype).items():
            folder = tmp / name
            folder.mkdir()
            # NNCF int8 layers, in both UNet graphs
            quantized = int8 if backend == "openvino" and name in ("unet", "unet_shallow") else None
            samples = None  # the calibration set of a static int8 UNet graph
            if backend == "openvino":
                if quantized == "static" and unet_samples is None:
                    images, prompts = zip(*calibration) if calibration else (None, None)
                    with stages("unet: calibration inputs"):
                        unet_samples = unet_calibration_set(ckpt, height, width, images=images, prompts=prompts)
                if quantized == "static":
                    samples = unet_samples if name == "unet" else shallow_calibration_set(ckpt, unet_samples)
                onnx_folder = tmp / f".{name}-onnx"  # the fp32 graph is only the input of the conversion
                onnx_folder.mkdir()
                with stages(f"{name}: export to ONNX (fp32)"):
                    onnx_path = _export_onnx(contract, onnx_folder, device, session=False)  # OpenVINO reads it
                how = {"static": ", int8 weights and calibrated int8 convolutions", "dynamic": ", int8 weights"}
                with stages(f"{name}: conversion to OpenVINO IR ({DTYPE_NAMES[dtype]}{how.get(quantized, '')})"):
                    artifact = to_openvino_ir(onnx_path, folder, dtype, quantized, samples)
                shutil.rmtree(onnx_folder)
            elif backend == "onnx":
                with stages(f"{name}: export to ONNX ({DTYPE_NAMES[dtype]})"):
                    artifact = _export_onnx(contract, folder, device)
            elif backend == "compile":
                with stages(f"{name}: AOTInductor compile ({DTYPE_NAMES[dtype]}, {device.type})"):
                    artifact = _export_aoti(contract, folder, device)
            else:
                with stages(f"{name}: ONNX export and TensorRT plan ({DTYPE_NAMES[dtype]})"):
                    artifact = _export_tensorrt(contract, folder, dtype, device)
            models[name] = {"file": artifact.relative_to(tmp).as_posix(),
                            "inputs": list(contract.inputs), "outputs": list(contract.outputs),
                            "profile": contract.profile, **({"int8": quantized} if quantized else {})}
            if samples:
                models[name]["calibration"] = {"samples": len(samples),
                                               "images": len(calibration) if calibration else "shapes-world scenes"}
        shutil.copytree(root / "tokenizer", tmp / "tokenizer")
        for optional in ("safety_checker", "feature_extractor"):  # used only when a pipeline asks for the checker
            if (root / optional).is_dir():
                shutil.copytree(root / optional, tmp / optional)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(ckpt.scheduler_config, indent=2))
        # the default edit's step table, for runners without the Python scheduler maths (cmake/rtcore-run)
        table = step_table(DDIMConfig.from_dict(ckpt.scheduler_config), **DEFAULT_EDIT)
        (tmp / "step_table.txt").write_text(table_text(table))
        if checkpoint_fingerprint is None:
            with stages("hashing the checkpoint"):
                checkpoint_fingerprint = fingerprint(root)
        manifest = {
            "format_version": FORMAT_VERSION,
            "backend": backend,
            "dtype": DTYPE_NAMES[dtype],
            "kernels": bool(kernels),
            "int8": int8 or False,
            "checkpoint": {"path": str(root), "fingerprint": checkpoint_fingerprint},
            "shapes": {"height": height, "width": width, "batch": batch,
                       # ONNX graphs take any size; the AOTInductor and TensorRT artifacts are built for one
                       "fixed_size": backend not in ("onnx", "openvino")},
            "config": {"scaling_factor": ckpt.vae.config.scaling_factor,
                       "vae_scale_factor": ckpt.vae.config.scale_factor,
                       "latent_channels": ckpt.vae.config.latent_channels},
            "versions": recorded_versions(),
            "device": device_info(device),
            "step_table": table_json(table, DEFAULT_EDIT),
            "models": models,
        }
        with stages("hashing the engine's files into its manifest"):
            write_manifest(tmp, manifest)  # last: it hashes every file written above
        return commit_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_key(checkpoint_fingerprint, backend, dtype, height, width, batch, kernels, int8, device):
    deps = {d: version_of(d) for d in BACKEND_DEPENDENCIES[backend]}
    key = dict(format=FORMAT_VERSION, fingerprint=checkpoint_fingerprint, backend=backend, dtype=str(dtype),
               height=height, width=width, batch=batch, kernels=kernels, int8=int8, deps=deps,
               device=device_info(device) if DEVICE_BOUND[backend] else None)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def cached_build(checkpoint, backend="onnx", dtype="fp32", height=None, width=None, batch=1, kernels=False,
                 int8=False, device="cpu"):
    """The engine directory for these settings from the cache, built once (a stale or corrupt entry is rebuilt)."""
    dtype, device, int8 = resolve_dtype(dtype), resolve_device(device), resolve_int8(int8)
    root = resolve(checkpoint)
    digest = fingerprint(root)  # hashed once here, reused by build: SD weights are several GB
    key = cache_key(digest, backend, dtype, height, width, batch, kernels, int8, device)
    path = cache_root() / f"{root.name}-{backend}-{key}"
    if path.exists():
        try:
            validate(path, device)
            return path
        except (EngineMismatch, FileNotFoundError):
            pass  # a miss: rebuilt below
    return build(root, path, backend, dtype, height, width, batch, kernels, int8, device, overwrite=True,
                 checkpoint_fingerprint=digest)
