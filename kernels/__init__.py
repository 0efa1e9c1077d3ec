"""rtcore.kernels: Triton kernels, one op per file, each with its pure-torch reference (docs/DESIGN.md §5).

    group_norm.py  GroupNorm (+ SiLU, + residual): NCHW and channels_last, chunked Welford statistics
    attention.py   qkv_attention / kv_attention: flash-style attention reading packed QKV / KV GEMM outputs
    quant.py       quantize_int8 / int8_linear: per-token dynamic int8, int8×int8→int32 GEMM, fused dequant

Each op is also registered as ``torch.ops.rtcore.<name>`` with a fake implementation, so torch.compile and
torch.export trace through it. Without a GPU, set ``TRITON_INTERPRET=1`` before Triton is imported to run them
on the CPU (slowly: for tests on tiny shapes). Importing this package needs ``triton``.
"""


if __name__ == "kernels":
    # This folder is rtcore.kernels (setup.py's package_dir), but from the repository root, which `python -m pytest`
    # and `python -m rtcore` put first on sys.path, Python finds it as the top-level package `kernels` too, ahead of
    # Hugging Face's `kernels` that transformers imports. Hand the name to the next `kernels` on sys.path, or fail
    # as if this folder were not there: rtcore's own kernels import only as rtcore.kernels.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    _path = [p for p in sys.path if os.path.realpath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None:
        raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ folder is rtcore.kernels)",
                                  name="kernels")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import statement returns what sys.modules holds once this file has run
    if _spec.loader is not None:  # None: a namespace package, nothing to run
        _spec.loader.exec_module(_module)
else:
    from .attention import attention_ref, kv_attention, qkv_attention
    from .group_norm import group_norm, group_norm_ref
    from .quant import int8_linear, int8_linear_ref, quantize_int8, quantize_int8_ref

    __all__ = ["attention_ref", "group_norm", "group_norm_ref", "int8_linear", "int8_linear_ref", "kv_attention",
               "qkv_attention", "quantize_int8", "quantize_int8_ref"]
