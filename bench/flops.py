"""FLOPs per stage, counted from the model configs, and the roofline they imply on known GPUs.

Counts come from torch's FlopCounterMode running the reference models on the meta device, so nothing is allocated
and any config or resolution can be counted. At SD 1.5 shapes (64×64 latents) they reproduce docs/DESIGN.md §7: UNet
0.80 TFLOP per batch row, VAE encode 1.12 TFLOP, VAE decode 2.52 TFLOP, CLIP 13 GFLOP per prompt.
"""

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense (no sparsity) peak TFLOP/s (TOP/s for int8) by dtype; the first name found in the device name wins. fp32 is the
# non-tensor-core peak: cuDNN runs fp32 convolutions in TF32 by default, so an fp32 fraction can exceed 1.
PEAK_TFLOPS = {
    "H200": {"bf16": 989, "fp16": 989, "fp32": 67, "int8": 1979},
    "H100 NVL": {"bf16": 835, "fp16": 835, "fp32": 60, "int8": 1671},
    "H100 PCIe": {"bf16": 756, "fp16": 756, "fp32": 51, "int8": 1513},
    "H100": {"bf16": 989, "fp16": 989, "fp32": 67, "int8": 1979},
    "A100": {"bf16": 312, "fp16": 312, "fp32": 19.5, "int8": 624},
    "L40S": {"bf16": 362, "fp16": 362, "fp32": 91.6, "int8": 733},
    "L4": {"bf16": 121, "fp16": 121, "fp32": 30.3, "int8": 242},
    "RTX 4090": {"bf16": 165, "fp16": 165, "fp32": 82.6, "int8": 661},
}

# HBM bandwidth, TB/s (the datasheet figure): what a memory-bound kernel such as GroupNorm is measured against
PEAK_TBPS = {"H200": 4.8, "H100 NVL": 3.9, "H100 PCIe": 2.0, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "L4": 0.3,
             "RTX 4090": 1.008}


def _lookup(table, device_name):
    for name, value in table.items():
        if name in (device_name or ""):
            return value
    return None


def peak_tflops(device_name, dtype_name):
    peaks = _lookup(PEAK_TFLOPS, device_name)
    return peaks.get(dtype_name) if peaks else None


def peak_tbps(device_name):
    return _lookup(PEAK_TBPS, device_name)


def _count(fn, *args):
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def stage_flops(checkpoint, height, width, unet_rows, prompts, steps):
    """FLOPs of each stage of one edit for the checkpoint folder's configs (one image per call)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from rtcore.export.unet import UNet, UNetConfig
    from rtcore.export.vae import AutoencoderKL, VAEConfig

    root = Path(checkpoint)
    configs = {name: json.loads((root / name / "config.json").read_text()) for name in ("unet", "vae", "text_encoder")}
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_dict(configs["unet"]))
        vae = AutoencoderKL(VAEConfig.from_dict(configs["vae"]))
        clip = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
        f = vae.config.scale_factor
        latent = torch.empty(1, vae.config.latent_channels, height // f, width // f)
        text = torch.empty(1, 77, configs["unet"]["cross_attention_dim"])
        per_row = _count(unet, latent, torch.tensor([1]), text)
        deep = torch.empty(1, unet.deep_channels, *latent.shape[2:])
        return {
            "text_encode": prompts * _count(clip, torch.zeros(1, 77, dtype=torch.long)),
            "vae_encode": _count(vae.encode, torch.empty(1, 3, height, width)),
            "denoise": steps * unet_rows * per_row,
            "vae_decode": _count(vae.decode, latent),
            "unet_per_row": per_row,
            "unet_shallow_per_row": _count(unet.forward_shallow, latent, torch.tensor([1]), text, deep),
        }


def denoise_flops(flops, steps, rows, approximations):
    """UNet FLOPs of a loop of ``steps`` steps with ``rows`` (rtcore.sampling.Rows) per item, under
    ``approximations``: each step's rows (all of them before the guidance cutoff, the conditional ones after) times
    the whole UNet's or the shallow path's FLOPs per row (``flops`` from stage_flops)."""
    total = 0
    for i in range(steps):
        step_rows = rows if approximations.guided_step(i, steps) else rows.unguided()
        full = not approximations.caches or approximations.full_step(i)
        total += step_rows.per_item * flops["unet_per_row" if full else "unet_shallow_per_row"]
    return total
