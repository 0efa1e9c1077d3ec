"""What every benchmark report carries: device, library versions, git revision; and timing statistics."""

import importlib.metadata
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision():
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        return rev.stdout.strip() + ("+dirty" if dirty.strip() else "") if rev.returncode == 0 else None
    except OSError:
        return None


def header(device="cpu"):
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "diffusers", "transformers", "triton", "onnxruntime", "rtcore")},
        "git_revision": git_revision(),
        "date": time.strftime("%Y-%m-%d"),
    }


def summarize(seconds):
    """median, p20, p80 (in ms) of a list of timings in seconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7], "runs": len(ms)}
