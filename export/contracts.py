"""One declared I/O contract per exported model: input/output names, dynamic axes, sample inputs, min/opt/max shapes.

Every exporter (ONNX, AOTInductor, TensorRT) reads the contract, so the four engines of an engine directory
share one call signature whatever built them. It is the one described in ``rtcore.engines``.
"""

from dataclasses import dataclass

import torch
from torch import nn


class TextEncoder(nn.Module):
    """input_ids (P, 77) int64 → last hidden state (P, 77, C) in ``out_dtype`` (the engine's), whatever precision
    the CLIP model computes in."""

    def __init__(self, clip, out_dtype):
        super().__init__()
        self.clip, self.out_dtype = clip, out_dtype

    def forward(self, input_ids):
        return self.clip(input_ids).last_hidden_state.to(self.out_dtype)


class VAEEncoder(nn.Module):
    """image (B, 3, H, W) in [-1, 1] → posterior (mean, std), unscaled: the runtime draws the sample itself."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image)


class VAEDecoder(nn.Module):
    """latents (B, 4, h, w), unscaled → image (B, 3, 8h, 8w)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents)


@dataclass
class Contract:
    name: str
    module: nn.Module
    inputs: tuple  # input names, in call order
    outputs: tuple
    sample: tuple  # sample inputs at the opt shape
    dynamic_axes: dict  # name → {axis: label}, inputs and outputs (ONNX's convention)
    profile: dict  # input name → (min, opt, max) shapes (TensorRT's optimisation profile)


def contracts(checkpoint, height, width, batch, device="cpu", dtype=torch.float32):
    """The four contracts at one shape profile: ``batch`` images of height × width (the opt shape).

    Dynamic axes let ONNX Runtime and AOTInductor engines take any batch, row count and size; the min/opt/max
    profile is what TensorRT optimises for (rows: 1 … 4·batch, the most UNet rows an edit uses per step).
    """
    f = checkpoint.vae.config.scale_factor
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of {f}, got {height}x{width}")
    h, w = height // f, width // f
    latent = checkpoint.vae.config.latent_channels
    text_len = checkpoint.tokenizer.model_max_length
    text_dim = checkpoint.text_encoder.config.hidden_size
    rows = 3 * batch  # the default edit: y_src, x∅, x_tgt per item
    prompts = 3
    opts = dict(device=device, dtype=dtype)
    return {
        "text_encoder": Contract(
            "text_encoder", TextEncoder(checkpoint.text_encoder, dtype), ("input_ids",), ("embeddings",),
            (torch.zeros((prompts, text_len), dtype=torch.int64, device=device),),
            {"input_ids": {0: "prompts"}, "embeddings": {0: "prompts"}},
            {"input_ids": ((1, text_len), (prompts, text_len), (2 * batch + 1, text_len))}),
        "vae_encoder": Contract(
            "vae_encoder", VAEEncoder(checkpoint.vae), ("image",), ("mean", "std"),
            (torch.zeros((batch, 3, height, width), **opts),),
            {"image": {0: "batch", 2: "height", 3: "width"}, "mean": {0: "batch", 2: "h", 3: "w"},
             "std": {0: "batch", 2: "h", 3: "w"}},
            {"image": ((1, 3, height, width), (batch, 3, height, width), (batch, 3, height, width))}),
        "vae_decoder": Contract(
            "vae_decoder", VAEDecoder(checkpoint.vae), ("latents",), ("image",),
            (torch.zeros((batch, latent, h, w), **opts),),
            {"latents": {0: "batch", 2: "h", 3: "w"}, "image": {0: "batch", 2: "height", 3: "width"}},
            {"latents": ((1, latent, h, w), (batch, latent, h, w), (batch, latent, h, w))}),
        "unet": Contract(
            "unet", checkpoint.unet, ("sample", "timestep", "encoder_hidden_states"), ("out",),
            (torch.zeros((rows, latent, h, w), **opts), torch.tensor([999], device=device),
             torch.zeros((rows, text_len, text_dim), **opts)),
            {"sample": {0: "rows", 2: "h", 3: "w"}, "encoder_hidden_states": {0: "rows"},
             "out": {0: "rows", 2: "h", 3: "w"}},
            {"sample": ((1, latent, h, w), (rows, latent, h, w), (4 * batch, latent, h, w)),
             "timestep": ((1,), (1,), (1,)),
             "encoder_hidden_states": ((1, text_len, text_dim), (rows, text_len, text_dim),
                                       (4 * batch, text_len, text_dim))}),
    }
