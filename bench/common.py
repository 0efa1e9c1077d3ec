"""What every benchmark report carries: device, library versions, git revision; timing statistics; memory."""

import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from rtcore.manifest import version_of

# Two runs of one edit in half precision (another backend, kernel or fusion order, at fp16 or bf16) differ by
# rounding that grows over the steps. 3e-2 of the [0, 1] pixel range (8 levels of 255) in the worst pixel of an SD
# 1.5 edit of 40 steps is the most that still counts as the same image; a wrong edit differs by 0.3 and more. The
# benchmark judges backends by it, and the gpu test tier (tests/test_gpu.py) asserts it.
HALF_PRECISION_PIXEL_TOLERANCE = 3e-2


def git_revision():
    try:
        root = Path(__file__).resolve().parent.parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
        return rev.stdout.strip() + ("+dirty" if dirty.strip() else "") if rev.returncode == 0 else None
    except OSError:
        return None


def _cpu_name():
    """The CPU's model name (/proc/cpuinfo), or what platform knows (often only "x86_64")."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(device="cpu"):
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "device": str(device),
        "device_name": name,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": {d: version_of(d) for d in ("torch", "diffusers", "transformers", "triton", "onnxruntime",
                                                "openvino", "nncf", "rtcore")},
        "git_revision": git_revision(),
        "date": time.strftime("%Y-%m-%d"),
    }


def summarize(seconds):
    """median, p20, p80 (in ms) of a list of timings in seconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p20_ms": q[1], "p80_ms": q[7], "runs": len(ms)}


def peak_rss_mb():
    """This process's peak resident set in MiB (VmHWM: per address space, fresh at exec), or None off Linux.
    Not ru_maxrss: Linux carries that over from a forking parent, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def synchronized(fn, device):
    """fn wrapped so that a wall-clock timer sees the GPU work finish."""
    if torch.device(device).type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def memory_mb(device):
    """(device memory in use, host resident set) in MiB, now. Device memory is the driver's count (total − free,
    ``cudaMemGetInfo``): it sees ONNX Runtime's and TensorRT's allocations and the CUDA-graph pool, which torch's
    allocator statistics do not. None on a CPU device, and where the host figure cannot be read (not Linux)."""
    device = torch.device(device)
    used = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        used = (total - free) / 2**20
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        rss = None
    return used, rss
