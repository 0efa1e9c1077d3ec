"""Every torch.compile / AOTInductor flag rtcore sets, in one place.

GPU: max-autotune (Triton GEMM/conv templates benchmarked at build time), coordinate-descent tuning and
epilogue fusion; the models are converted to channels_last before export (convolutions prefer NHWC). CPU:
inductor's defaults plus freezing, which folds the weights into the graph as constants and lets the C++
backend pre-pack them for its GEMM/conv kernels.
"""

import torch


def inductor_flags(device):
    if torch.device(device).type == "cuda":
        return {"max_autotune": True, "coordinate_descent_tuning": True, "epilogue_fusion": True}
    return {"freezing": True}
