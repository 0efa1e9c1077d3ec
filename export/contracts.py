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


class UNetFull(nn.Module):
    """sample, timestep, text → (model output, deep features): the UNet that also keeps what feature caching
    reuses (export/unet.py, UNet.forward_full)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet.forward_full(sample, timestep, encoder_hidden_states)


class UNetShallow(nn.Module):
    """sample, timestep, text, deep features → model output: the shallow path of a cached step."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, deep):
        return self.unet.forward_shallow(sample, timestep, encoder_hidden_states, deep)


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

    The UNet is two graphs: ``unet``, the whole model, which also outputs the deep features that feature caching
    keeps (an exact step ignores them), and ``unet_shallow``, which takes them back on a cached step. The second holds
    only the shallow path's weights (conv_in, the first down layer, the last up block's final layers, the head).
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
    deep = checkpoint.unet.deep_channels
    unet_inputs = ("sample", "timestep", "encoder_hidden_states")
    unet_sample = (torch.zeros((rows, latent, h, w), **opts), torch.tensor([999], device=device),
                   torch.zeros((rows, text_len, text_dim), **opts))
    row_axes = {0: "rows", 2: "h", 3: "w"}
    unet_axes = {"sample": row_axes, "encoder_hidden_states": {0: "rows"}}
    unet_profile = {"sample": ((1, latent, h, w), (rows, latent, h, w), (4 * batch, latent, h, w)),
                    "timestep": ((1,), (1,), (1,)),
                    "encoder_hidden_states": ((1, text_len, text_dim), (rows, text_len, text_dim),
                                              (4 * batch, text_len, text_dim))}
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
            "unet", UNetFull(checkpoint.unet), unet_inputs, ("out", "deep"), unet_sample,
            {**unet_axes, "out": row_axes, "deep": row_axes}, unet_profile),
        "unet_shallow": Contract(
            "unet_shallow", UNetShallow(checkpoint.unet), (*unet_inputs, "deep"), ("out",),
            (*unet_sample, torch.zeros((rows, deep, h, w), **opts)), {**unet_axes, "deep": row_axes, "out": row_axes},
            {**unet_profile, "deep": ((1, deep, h, w), (rows, deep, h, w), (4 * batch, deep, h, w))}),
    }
