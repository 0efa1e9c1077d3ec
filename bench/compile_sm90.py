"""Compiles every Triton kernel ahead of time for sm_90 (H100/H200) with the launch constants the wrappers use at
SD shapes, and reports registers and spills per kernel from triton's own ptxas. No GPU needed.

    python -m rtcore.bench.compile_sm90        # exit status 1 if any kernel spills

Triton compiles for ``GPUTarget("cuda", 90, 32)`` (sm_90a). Register counts and spills come from ``ptxas -v`` run on
the PTX with the flags triton passes. Pointer arguments are declared 16-byte aligned, as torch's allocations are;
integer arguments are not specialised (a real launch may specialise them further, never to more registers).
"""

import argparse
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = get_ptxas(TARGET.arch).path  # the ptxas triton itself runs for this target (it ships more than one)
FLOATS = {"eps", "qk_scale", "scale_floor"}
TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _signature(kernel, pointers, constants):
    """Triton's signature for ``kernel``: ``pointers`` maps pointer argument names to element types ("*" for the
    rest), plain arguments are i32 or fp32, constexprs take their values from ``constants``."""
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constants:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + pointers.get(name, pointers["*"])
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "fp32" if name in FLOATS else "i32"
    return sig, attrs


def cases():
    """(label, kernel, pointer types, constexprs, options) at the configurations the wrappers launch at SD shapes."""
    # by module: rtcore.kernels.group_norm the attribute is the function of that name, not the module
    attention, group_norm, quant = (importlib.import_module(f"rtcore.kernels.{m}")
                                    for m in ("attention", "group_norm", "quant"))

    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for d in (40, 64, 80, 160):
            cfg = attention.launch_config(d, dtype)
            options = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
            yield f"attention {TYPES[dtype]} D={d}", attention._attention_kernel, {"*": TYPES[dtype]}, cfg, options
    stats_ptrs = {"*": "fp16", "mean_ptr": "fp32", "m2_ptr": "fp32"}
    flags = dict(HAS_AFFINE=True, APPLY_SILU=True, HAS_RESIDUAL=True)  # the heaviest epilogue
    yield ("group_norm stats fp16 NCHW", group_norm._group_norm_stats_kernel, stats_ptrs,
           dict(BLOCK=group_norm.BLOCK), {"num_warps": 4})
    yield ("group_norm apply fp16 NCHW", group_norm._group_norm_apply_kernel, stats_ptrs,
           dict(**flags, BLOCK=group_norm.BLOCK, BLOCK_CHUNKS=group_norm.MAX_CHUNKS), {"num_warps": 4})
    cfg = group_norm.single_pass_config(group_norm.SINGLE_PASS_MAX)  # e.g. 40 channels × 8×8 at 1280 channels
    yield ("group_norm single pass fp16 NCHW", group_norm._group_norm_single_pass_kernel, {"*": "fp16"},
           dict(**flags, BLOCK=cfg["BLOCK"]), {"num_warps": cfg["num_warps"]})
    # channels_last tiles at 4 (VAE), 10 (UNet 320) and 40 (UNet 1280) channels per group, 32 groups
    for c, hw in ((128, 512 * 512), (320, 64 * 64), (1280, 8 * 8)):
        tiles, _, num_chunks = group_norm.channels_last_config(c, 32, hw)
        options = {"num_warps": tiles.pop("num_warps")}
        yield (f"group_norm stats fp16 channels_last C={c}", group_norm._group_norm_stats_cl_kernel, stats_ptrs,
               tiles, options)
        yield (f"group_norm apply fp16 channels_last C={c}", group_norm._group_norm_apply_cl_kernel, stats_ptrs,
               dict(**flags, **tiles, BLOCK_CHUNKS=triton.next_power_of_2(num_chunks)), options)
    for k in (320, 1280):
        yield (f"quantize_int8 bf16 K={k}", quant._quantize_int8_kernel,
               {"*": "bf16", "codes_ptr": "i8", "scales_ptr": "fp32"}, dict(BLOCK_K=quant.quantize_block(k)),
               {"num_warps": 4})
    cfg = dict(quant.GEMM_CONFIG)
    options = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    yield ("int8_matmul bf16", quant._int8_matmul_kernel,
           {"*": "fp32", "a_ptr": "i8", "b_ptr": "i8", "bias_ptr": "bf16", "out_ptr": "bf16"},
           dict(HAS_BIAS=True, **cfg), options)


def ptxas_report(ptx):
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` on sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        log = subprocess.run([str(PTXAS), "-v", "-lineinfo", "--regAllocOptLevel=2", "--gpu-name=sm_90a", str(src),
                              "-o", str(Path(tmp) / "kernel.cubin")], capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    stores, loads = (int(x) for x in re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return regs, stores, loads


def check(selected=None):
    rows = []
    for label, kernel, pointers, constants, options in cases():
        if selected and selected not in label:
            continue
        sig, attrs = _signature(kernel, pointers, constants)
        compiled = triton.compile(ASTSource(kernel, sig, constants, attrs), target=TARGET, options=options)
        rows.append((label, *ptxas_report(compiled.asm["ptx"]), options.get("num_warps")))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rtcore.bench.compile_sm90", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="kernels whose label contains this")
    args = parser.parse_args(argv)
    rows = check(args.only)
    print(f"triton {triton.__version__}, sm_90a, {PTXAS}")
    print("| kernel | registers | spill stores B | spill loads B | warps |\n|---|---|---|---|---|")
    for label, regs, stores, loads, warps in rows:
        print(f"| {label} | {regs} | {stores} | {loads} | {warps} |")
    return 1 if any(stores or loads for _, _, stores, loads, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
