"""Kernel micro-benchmarks (GPU): each Triton kernel against the torch path it replaces, at SD shapes, fp16/bf16.

    python -m rtcore.bench.kernels [--out bench_out]

Timing is ``triton.testing.do_bench``: CUDA events around each call, with the L2 cache flushed before it, so
the figure is the kernel's device time. (A host synchronisation after every call inside a wall-clock timer, as
this used to do, measures Python, launch and synchronisation latency as much as the kernel.) Each case reports
the median and p20/p80 in ms, GB/s or TFLOP/s at the median, and the speed-up over the case's torch baseline.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

QUANTILES = (0.5, 0.2, 0.8)


def _heads(t, heads):
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


def group_norm_silu(device, shape, channels_last):
    from rtcore.kernels.group_norm import group_norm

    x = torch.randn(shape, device=device, dtype=torch.float16)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape[1], device=device, dtype=torch.float16)
    b = torch.randn_like(w)
    impls = {"rtcore": lambda: group_norm(x, 32, w, b, 1e-6, silu=True),
             "torch": lambda: F.silu(F.group_norm(x, 32, w, b, 1e-6))}
    return impls, "torch", {"bytes": 2 * x.numel() * x.element_size()}  # one read, one write: the floor


def self_attention(device, d, heads=16, seq=4096):  # B·H = 16 at S = 4096: SD 1.x at 512²
    from rtcore.kernels.attention import qkv_attention

    qkv = torch.randn(1, seq, 3 * heads * d, device=device, dtype=torch.float16)
    q, k, v = (_heads(t, heads) for t in qkv.split(heads * d, dim=-1))
    impls = {"rtcore": lambda: qkv_attention(qkv, heads), "sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
    return impls, "sdpa", {"flops": 4 * heads * seq * seq * d, "dtype": "fp16"}


def cross_attention(device, d, heads=16, seq=4096, text=77):
    from rtcore.kernels.attention import kv_attention

    q = torch.randn(1, seq, heads * d, device=device, dtype=torch.float16)
    kv = torch.randn(1, text, 2 * heads * d, device=device, dtype=torch.float16)
    qh = _heads(q, heads)
    k, v = (_heads(t, heads) for t in kv.split(heads * d, dim=-1))
    impls = {"rtcore": lambda: kv_attention(q, kv, heads), "sdpa": lambda: F.scaled_dot_product_attention(qh, k, v)}
    return impls, "sdpa", {"flops": 4 * heads * seq * text * d, "dtype": "fp16"}


def int8_linear(device, kn, m=8192):
    from rtcore.kernels.quant import int8_linear, quantize_int8_ref

    x = torch.randn(m, kn, device=device, dtype=torch.bfloat16)
    w = torch.randn(kn, kn, device=device, dtype=torch.bfloat16)
    w_codes, w_scales = quantize_int8_ref(w)
    x_codes, _ = quantize_int8_ref(x)
    w_t = w_codes.t().contiguous()
    impls = {"rtcore_int8": lambda: int8_linear(x, w_codes, w_scales), "torch_bf16": lambda: x @ w.t(),
             # the GEMM alone on activations already quantized: a lower bound for any int8 path built on torch
             "torch_int_mm": lambda: torch._int_mm(x_codes, w_t)}
    # each implementation against the peak of the arithmetic it runs on
    return impls, "torch_bf16", {"flops": 2 * m * kn * kn, "dtype": {"rtcore_int8": "int8", "torch_bf16": "bf16",
                                                                      "torch_int_mm": "int8"}}


CASES = ([(f"group_norm_silu {'x'.join(map(str, s))}{' channels_last' if cl else ''}", group_norm_silu,
           dict(shape=s, channels_last=cl)) for s in [(2, 320, 64, 64), (1, 128, 512, 512)] for cl in (False, True)]
         + [(f"qkv_attention D={d}", self_attention, dict(d=d)) for d in (40, 80, 160, 64)]
         + [(f"kv_attention D={d} L=77", cross_attention, dict(d=d)) for d in (40, 80, 160)]
         + [(f"int8_linear M=8192 K=N={kn}", int8_linear, dict(kn=kn)) for kn in (320, 640, 1280)])


def rates(ms, work, impl, device_name):
    """GB/s or TFLOP/s at a time of ``ms``, and the fraction of the device's datasheet peak where known."""
    from .flops import peak_tbps, peak_tflops

    if "bytes" in work:
        value, peak = work["bytes"] / ms / 1e6, peak_tbps(device_name)
        return {"GB/s": value, "of_peak": value / (1e3 * peak) if peak else None}
    dtype = work["dtype"][impl] if isinstance(work["dtype"], dict) else work["dtype"]
    value, peak = work["flops"] / ms / 1e9, peak_tflops(device_name, dtype)
    return {"TFLOP/s": value, "of_peak": value / peak if peak else None}


def run(device="cuda", cases=CASES):
    from triton.testing import do_bench

    from .common import header

    hdr = header(device)
    rows = []
    for name, make, params in cases:
        impls, baseline, work = make(torch.device(device), **params)
        times = {impl: do_bench(fn, quantiles=list(QUANTILES)) for impl, fn in impls.items()}
        for impl, (median, p20, p80) in times.items():
            rows.append(dict(case=name, impl=impl, median_ms=median, p20_ms=p20, p80_ms=p80,
                             speedup_vs_baseline=times[baseline][0] / median, baseline=baseline,
                             **rates(median, work, impl, hdr["device_name"])))
    return {"benchmark": "kernels", "header": hdr, "timing": "triton.testing.do_bench (CUDA events, L2 flushed)",
            "results": rows}


def markdown(report):
    h = report["header"]
    lines = [f"Triton kernels vs torch, {h['device_name']}, {h['date']}, rev {h['git_revision']}; "
             f"{report['timing']}", "",
             "| case | impl | median ms | p20 ms | p80 ms | rate | % of peak | × baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        rate = f"{r['GB/s']:.0f} GB/s" if "GB/s" in r else f"{r['TFLOP/s']:.1f} TFLOP/s"
        peak = "—" if r["of_peak"] is None else f"{100 * r['of_peak']:.0f}"
        lines.append(f"| {r['case']} | {r['impl']} | {r['median_ms']:.3f} | {r['p20_ms']:.3f} | {r['p80_ms']:.3f} | "
                     f"{rate} | {peak} | {r['speedup_vs_baseline']:.2f} (vs {r['baseline']}) |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m rtcore.bench.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default="bench_out")
    args = parser.parse_args(argv)
    report = run(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_kernels.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
