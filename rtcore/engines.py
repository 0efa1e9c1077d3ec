"""Engines: the compiled (or eager) models behind plain call signatures, plus what the runtime needs to
know about them. Pipelines only ever call these; backends only ever produce them.

    text_encode(input_ids (P, 77) int64)            → embeddings (P, 77, C)
    vae_encode(image (B, 3, H, W) in [-1, 1])       → (mean, std), each (B, 4, H/8, W/8), unscaled
    vae_decode(latents (B, 4, h, w), unscaled)      → image (B, 3, 8h, 8w) in about [-1, 1]
    unet(sample (R, 4, h, w), timestep (1,), text (R, 77, C)) → model output (R, 4, h, w)
    unet_full(sample, timestep, text)               → (model output, deep features (R, D, h, w))
    unet_shallow(sample, timestep, text, deep)      → model output: a feature-cached step (DeepCache)

Inputs and outputs are device tensors in the engine dtype (``input_ids`` stays int64).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .schedule import DDIMConfig

BACKENDS = ("eager", "onnx", "openvino", "compile", "tensorrt")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # as manifests write them


@dataclass
class Engines:
    text_encode: Callable
    vae_encode: Callable
    vae_decode: Callable
    unet: Callable
    unet_full: Callable  # the same UNet, also returning the deep features feature caching keeps
    unet_shallow: Callable  # the shallow path, from kept deep features
    tokenizer: Any
    scheduler: DDIMConfig
    scaling_factor: float
    vae_scale_factor: int
    latent_channels: int
    device: torch.device
    dtype: torch.dtype
    backend: str
    fixed_size: tuple = None  # (H, W) for engines built for one image size; None: any multiple of vae_scale_factor
    default_size: tuple = (512, 512)  # (H, W) text-to-image draws when not told: the UNet's own, or the build's
    providers: dict = field(default_factory=dict)  # ONNX Runtime: the providers each session really runs
    checkpoint: Any = None  # eager: the loaded checkpoint whose models these callables run (Pipeline.to moves it)


def resolve_dtype(dtype):
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(set(DTYPES))} or torch.float32/float16/bfloat16, got {dtype!r}")


INT8_MODES = ("dynamic", "static")


def resolve_int8(int8):
    """False/None → None; True → "dynamic"; "dynamic"/"static" as they are."""
    if int8 is None or int8 is False:
        return None
    if int8 is True:
        return "dynamic"
    if int8 not in INT8_MODES:
        raise ValueError(f"int8 must be False, True, 'dynamic' or 'static', got {int8!r}")
    return int8


def resolve_device(device):
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available on this machine; use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    return device


def eager_engines(checkpoint, device, dtype) -> Engines:
    """The reference models of a loaded checkpoint, as they are: the numerical reference for every backend."""
    unet = checkpoint.unet.to(device, dtype)
    vae = checkpoint.vae.to(device, dtype)
    text_encoder = checkpoint.text_encoder.to(device, dtype)

    def text_encode(input_ids):
        return text_encoder(input_ids).last_hidden_state

    return Engines(
        text_encode=text_encode,
        vae_encode=vae.encode,
        vae_decode=vae.decode,
        unet=unet,
        unet_full=unet.forward_full,
        unet_shallow=unet.forward_shallow,
        tokenizer=checkpoint.tokenizer,
        scheduler=DDIMConfig.from_dict(checkpoint.scheduler_config),
        scaling_factor=vae.config.scaling_factor,
        vae_scale_factor=vae.config.scale_factor,
        latent_channels=vae.config.latent_channels,
        device=device,
        dtype=dtype,
        backend="eager",
        default_size=(unet.config.sample_size * vae.config.scale_factor,) * 2,  # as diffusers' pipelines
        checkpoint=checkpoint,
    )
