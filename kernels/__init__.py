"""rtcore.kernels: Triton kernels, one op per file, each with its pure-torch reference (docs/DESIGN.md §5).

    group_norm.py  GroupNorm (+ SiLU, + residual): NCHW and channels_last, chunked Welford statistics
    attention.py   qkv_attention / kv_attention: flash-style attention reading packed QKV / KV GEMM outputs
    quant.py       quantize_int8 / int8_linear: per-token dynamic int8, int8×int8→int32 GEMM, fused dequant

Each op is also registered as ``torch.ops.rtcore.<name>`` with a fake implementation, so torch.compile and
torch.export trace through it. Without a GPU, set ``TRITON_INTERPRET=1`` before Triton is imported to run them
on the CPU (slowly: for tests on tiny shapes). Importing this package needs ``triton``.
"""

from .attention import attention_ref, kv_attention, qkv_attention
from .group_norm import group_norm, group_norm_ref
from .quant import int8_linear, int8_linear_ref, quantize_int8, quantize_int8_ref

__all__ = ["attention_ref", "group_norm", "group_norm_ref", "int8_linear", "int8_linear_ref", "kv_attention",
           "qkv_attention", "quantize_int8", "quantize_int8_ref"]
