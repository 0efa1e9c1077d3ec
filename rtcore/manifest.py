"""Engine directories: ``manifest.json`` plus one artifact per model, tokenizer files and the scheduler config.

The manifest records what the artifacts depend on: format version, checkpoint fingerprint, backend, dtype, kernel
and quantization settings, shape profile, library versions, and the GPU. It records the sha256 of *every* other
file in the directory (artifacts, tokenizer, scheduler config, step table, safety checker), and a digest of its
own contents, so an edited, truncated or added file anywhere, or a damaged manifest, is caught at load. Loading
checks all of it. A mismatch is an :class:`EngineMismatch` (a ValueError) whose message gives the command that
rebuilds the directory, and the cache treats it as a miss. Directories are written under a temporary name and
renamed into place, so an interrupted build never leaves something that looks like a valid engine.
"""

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import socket
import uuid
from pathlib import Path

import torch

FORMAT_VERSION = 3  # 2: the manifest covers every file and carries its own digest; 3: unet_shallow, deep output
MANIFEST = "manifest.json"
MODELS = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "unet_shallow")


class EngineMismatch(ValueError):
    """An engine directory that cannot be used as it is: built for other versions, another GPU, or corrupted."""


def cache_root():
    """Where built engines (and OpenVINO's compiled blobs) are cached: $RTCORE_CACHE, else ~/.cache/rtcore."""
    return Path(os.environ.get("RTCORE_CACHE", Path.home() / ".cache" / "rtcore"))


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
    "openvino": (),  # OpenVINO IR is read by later OpenVINO versions, on any CPU, and compiled at load
    "compile": ("torch",),  # AOTInductor packages hold code generated for one torch version and device
    "tensorrt": ("tensorrt",),  # TensorRT plans are tied to the TensorRT version and the GPU model
}
DEVICE_BOUND = {"onnx": False, "openvino": False, "compile": True, "tensorrt": True}
RECORDED_VERSIONS = ("rtcore", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "triton", "tensorrt",
                     "transformers")


def recorded_versions():
    return {dist: version_of(dist) for dist in RECORDED_VERSIONS}


def rebuild_command(manifest):
    m = manifest
    shapes = m["shapes"] if isinstance(m.get("shapes"), dict) else {}  # a damaged manifest still gets a command
    checkpoint = m["checkpoint"] if isinstance(m.get("checkpoint"), dict) else {}
    int8 = m.get("int8")
    flags = (" --kernels" if m.get("kernels") else "") + (f" --int8 {int8}" if int8 in ("dynamic", "static") else
                                                           " --int8" if int8 else "")
    if isinstance(m.get("device"), dict) and m["device"].get("type") == "cuda":  # built on a GPU: rebuilt on one
        flags += " --device cuda"
    return (f"rtcore export {checkpoint.get('path', 'CHECKPOINT')} --backend {m.get('backend')} "
            f"--dtype {m.get('dtype')} --height {shapes.get('height')} --width {shapes.get('width')} "
            f"--batch {shapes.get('batch')}{flags} --out NEW_ENGINE_DIR")


def read_manifest(engine_dir):
    """The parsed manifest, a dict (its contents are checked by :func:`validate`)."""
    path = Path(engine_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{engine_dir} is not an engine directory: no {MANIFEST}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EngineMismatch(f"corrupt {path}: {err}; rebuild the engine directory") from None
    if not isinstance(manifest, dict):
        raise EngineMismatch(f"corrupt {path}: not a JSON object; rebuild the engine directory")
    return manifest


def _digest(manifest):
    """sha256 of the manifest's contents, its own digest left out (canonical JSON, so key order does not matter)."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _listed_files(engine_dir):
    """Every file of an engine directory but the manifest: relative POSIX path → Path, in sorted order."""
    root = Path(engine_dir)
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    files.pop(MANIFEST, None)
    return files


def directory_files(engine_dir):
    """Every file of an engine directory but the manifest, as relative POSIX paths → sha256."""
    return {rel: sha256_file(path) for rel, path in _listed_files(engine_dir).items()}


def write_manifest(engine_dir, manifest):
    """Writes ``manifest.json`` last: the sha256 of every file already in the directory, then its own digest."""
    manifest = dict(manifest, files=directory_files(engine_dir))
    manifest["digest"] = _digest(manifest)
    (Path(engine_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def validate(engine_dir, device, check_hashes=True):
    """Returns the manifest of a usable engine directory for ``device``, or raises EngineMismatch."""
    engine_dir = Path(engine_dir)
    m = read_manifest(engine_dir)
    how = f"rebuild it with: {rebuild_command(m)}"
    if m.get("format_version") != FORMAT_VERSION:
        raise EngineMismatch(f"{engine_dir}: engine format {m.get('format_version')} but this rtcore reads "
                             f"{FORMAT_VERSION}; {how}")
    if m.get("digest") != _digest(m):
        raise EngineMismatch(f"{engine_dir}: {MANIFEST} is damaged or was edited (its digest does not match its "
                             f"contents); {how}")
    _check_structure(engine_dir, m, how)
    backend = m.get("backend")
    if backend not in BACKEND_DEPENDENCIES:
        raise EngineMismatch(f"{engine_dir}: unknown backend {backend!r}; {how}")
    triton = backend == "compile" and (m.get("kernels") or m.get("int8"))  # Triton ops inside the compiled graphs
    dependencies = BACKEND_DEPENDENCIES[backend] + (("triton",) if triton else ())
    for dist in dependencies:
        built, now = m["versions"].get(dist), version_of(dist)
        if built != now:
            raise EngineMismatch(f"{engine_dir}: built with {dist} {built}, but {dist} {now} is installed; {how}")
    if DEVICE_BOUND[backend] and m.get("device") != device_info(device):
        raise EngineMismatch(f"{engine_dir}: built for {m.get('device')}, not {device_info(device)}; {how}")
    present = _listed_files(engine_dir)
    added = sorted(set(present) - set(m["files"]))  # an added tokenizer file, say, would change the output
    if added:
        raise EngineMismatch(f"{engine_dir}: {added[0]} is not part of this engine (the manifest does not list it); "
                             f"remove it or {how}")
    for rel, digest in m["files"].items():
        if rel not in present:
            raise EngineMismatch(f"{engine_dir}: {rel} is missing; {how}")
        if check_hashes and sha256_file(present[rel]) != digest:
            raise EngineMismatch(f"{engine_dir}: {rel} is corrupted or truncated (sha256 mismatch); {how}")
    return m


def _check_structure(engine_dir, m, how):
    """The fields the loader reads, present and of the right kind (a manifest from a buggy or foreign writer)."""
    models, files = m.get("models"), m.get("files")
    ok = (isinstance(models, dict) and set(models) == set(MODELS) and isinstance(files, dict)
          and all(isinstance(e, dict) and e.get("file") in files and isinstance(e.get("inputs"), list)
                  and isinstance(e.get("outputs"), list) for e in models.values())
          and all(isinstance(m.get(k), dict) for k in ("config", "shapes", "versions")))
    if not ok:
        raise EngineMismatch(f"{engine_dir}: {MANIFEST} lacks fields this rtcore needs (models {sorted(MODELS)}, "
                             f"files, config, shapes, versions); {how}")


# What every engine directory rtcore has written holds besides its manifest (export.build)
ENGINE_LAYOUT = ("scheduler/scheduler_config.json", "tokenizer", "step_table.txt")


def is_engine_directory(path):
    """Whether ``path`` is a directory rtcore built: rtcore's layout (ENGINE_LAYOUT) and a ``manifest.json`` of
    rtcore's. A manifest that no longer validates (stale, edited, truncated) still counts, so that --overwrite and the
    cache can replace it; a user's folder does not, even one with a manifest.json that names a format_version of its
    own (web apps' and game packs' do)."""
    root = Path(path)
    manifest = root / MANIFEST
    if root.is_symlink() or not root.is_dir() or not manifest.is_file():
        return False
    if not all((root / part).exists() for part in ENGINE_LAYOUT):
        return False
    with open(manifest, "rb") as f:
        head = f.read(64)
    if head.startswith(b'{\n  "format_version": '):  # how rtcore writes it: this survives a truncated manifest
        return True
    try:
        parsed = json.loads(manifest.read_text())  # one rewritten with another key order
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(parsed, dict) and "format_version" in parsed and parsed.get("backend") in BACKEND_DEPENDENCIES
            and isinstance(parsed.get("models"), dict))


# Partial folders beside an engine directory: .NAME.building-HOST-PID-ID while a build writes it, and
# .NAME.stale-HOST-PID-ID for the directory it replaces, in the instant between the two renames of a commit.
_PARTIAL = re.compile(r"^\..+\.(building|stale)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def partial_directory(final_dir, kind="building"):
    """A new hidden name beside ``final_dir`` for a directory being written (kind "building") or replaced
    ("stale"): it names this host and process, so that a later build can tell when its writer is gone."""
    final_dir = Path(final_dir)
    return final_dir.with_name(f".{final_dir.name}.{kind}-{socket.gethostname()}-{os.getpid()}-"
                               f"{uuid.uuid4().hex[:8]}")


def _process_is_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_abandoned(parent):
    """Removes the partial folders in ``parent`` left by builds on this host whose process is gone (killed,
    out of memory, a closed laptop); returns their paths. Folders of live processes, and of other hosts on a
    shared disk, are left alone."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    host = socket.gethostname()
    for path in parent.iterdir():
        match = _PARTIAL.match(path.name)
        if match and path.is_dir() and match["host"] == host and _process_is_gone(int(match["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def commit_directory(tmp_dir, final_dir):
    """Puts a fully written directory in place by renames on the same filesystem. An existing ``final_dir`` is
    replaced only if it is an engine directory: anything else is the user's and raises FileExistsError."""
    final_dir = Path(final_dir)
    if final_dir.exists() or final_dir.is_symlink():
        if not is_engine_directory(final_dir):
            raise FileExistsError(f"{final_dir} exists and is not an rtcore engine directory: not replaced")
        stale = partial_directory(final_dir, "stale")
        final_dir.rename(stale)
        Path(tmp_dir).rename(final_dir)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        Path(tmp_dir).rename(final_dir)
    return final_dir
