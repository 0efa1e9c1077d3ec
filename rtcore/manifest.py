"""Engine directories: ``manifest.json`` plus one artifact per model, tokenizer files and the scheduler config.

The manifest records what the artifacts depend on: format version, checkpoint fingerprint, backend, dtype, kernel
and quantization settings, shape profile, library versions, and the GPU. It also records each artifact's sha256.
Loading checks all of it. A mismatch is an :class:`EngineMismatch` (a ValueError) whose message gives the command
that rebuilds the directory, and the cache treats it as a miss. Directories are written under a temporary name
and renamed into place, so an interrupted build never leaves something that looks like a valid engine.
"""

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path

import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODELS = ("text_encoder", "vae_encoder", "vae_decoder", "unet")


class EngineMismatch(ValueError):
    """An engine directory that cannot be used as it is: built for other versions, another GPU, or corrupted."""


def sha256_file(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def version_of(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pass
    if dist == "tensorrt":  # the tensorrt-cu12/-cu13 wheels install the module without a "tensorrt" distribution
        try:
            import tensorrt
        except ImportError:
            return None
        return tensorrt.__version__
    return None


def device_info(device):
    device = torch.device(device)
    if device.type != "cuda":
        return {"type": device.type}
    major, minor = torch.cuda.get_device_capability(device)
    return {"type": "cuda", "name": torch.cuda.get_device_name(device), "capability": f"{major}.{minor}"}


# What each backend's artifacts are tied to: a change in any of these invalidates an engine directory.
BACKEND_DEPENDENCIES = {
    "onnx": (),  # ONNX files are portable across onnxruntime versions and devices
    "compile": ("torch",),  # AOTInductor packages hold code generated for one torch version and device
    "tensorrt": ("tensorrt",),  # TensorRT plans are tied to the TensorRT version and the GPU model
}
DEVICE_BOUND = {"onnx": False, "compile": True, "tensorrt": True}
RECORDED_VERSIONS = ("rtcore", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "triton", "tensorrt", "transformers")


def recorded_versions():
    return {dist: version_of(dist) for dist in RECORDED_VERSIONS}


def rebuild_command(manifest):
    m = manifest
    shapes = m.get("shapes", {})
    flags = (" --kernels" if m.get("kernels") else "") + (" --int8" if m.get("int8") else "")
    return (f"rtcore export {m.get('checkpoint', {}).get('path', 'CHECKPOINT')} --backend {m.get('backend')} "
            f"--dtype {m.get('dtype')} --height {shapes.get('height')} --width {shapes.get('width')} "
            f"--batch {shapes.get('batch')}{flags} --out NEW_ENGINE_DIR")


def read_manifest(engine_dir):
    path = Path(engine_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{engine_dir} is not an engine directory: no {MANIFEST}") from None
    except json.JSONDecodeError as err:
        raise EngineMismatch(f"corrupt {path}: {err}; rebuild the engine directory") from None


def validate(engine_dir, device, check_hashes=True):
    """Returns the manifest of a usable engine directory for ``device``, or raises EngineMismatch."""
    engine_dir = Path(engine_dir)
    m = read_manifest(engine_dir)
    how = f"rebuild it with: {rebuild_command(m)}"
    if m.get("format_version") != FORMAT_VERSION:
        raise EngineMismatch(f"{engine_dir}: engine format {m.get('format_version')} but this rtcore reads "
                             f"{FORMAT_VERSION}; {how}")
    backend = m.get("backend")
    if backend not in BACKEND_DEPENDENCIES:
        raise EngineMismatch(f"{engine_dir}: unknown backend {backend!r}; {how}")
    dependencies = BACKEND_DEPENDENCIES[backend] + (("triton",) if m.get("kernels") or m.get("int8") else ())
    for dist in dependencies:
        built, now = m.get("versions", {}).get(dist), version_of(dist)
        if built != now:
            raise EngineMismatch(f"{engine_dir}: built with {dist} {built}, but {dist} {now} is installed; {how}")
    if DEVICE_BOUND[backend] and m.get("device") != device_info(device):
        raise EngineMismatch(f"{engine_dir}: built for {m.get('device')}, not {device_info(device)}; {how}")
    if set(m.get("models", {})) != set(MODELS):
        raise EngineMismatch(f"{engine_dir}: the manifest lists models {sorted(m.get('models', {}))}, expected "
                             f"{sorted(MODELS)}; {how}")
    for name, entry in m["models"].items():
        for rel, digest in entry["files"].items():  # the artifact and its external data files
            artifact = engine_dir / rel
            if not artifact.is_file():
                raise EngineMismatch(f"{engine_dir}: {rel} ({name}) is missing; {how}")
            if check_hashes and sha256_file(artifact) != digest:
                raise EngineMismatch(f"{engine_dir}: {rel} ({name}) is corrupted or truncated (sha256 mismatch); "
                                     f"{how}")
    return m


def commit_directory(tmp_dir, final_dir):
    """Atomically puts a fully written directory in place (a rename on the same filesystem)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        stale = final_dir.with_name(f".{final_dir.name}.stale-{os.getpid()}")
        final_dir.rename(stale)
        Path(tmp_dir).rename(final_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        Path(tmp_dir).rename(final_dir)
    return final_dir
