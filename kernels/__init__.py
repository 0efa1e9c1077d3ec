"""rtcore.kernels: Triton kernels (GroupNorm+SiLU, fused QKV attention, int8 dynamic quantization).

Empty until the kernels issue lands; see DESIGN §5.
"""
