"""The tiny random checkpoint: SD-v1 (or SD-v2-like) layout at toy sizes, written in diffusers' folder layout.

Tests, the demo and the tiny benchmarks use it, so nothing is downloaded and diffusers can load the very same
folder as the oracle. Weights are random (seeded), the CLIP BPE vocabulary is built here from the byte alphabet
plus merges for a few demo words, and the scheduler is SD's DDIM configuration.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

DEMO_WORDS = ("a", "an", "astronaut", "riding", "horse", "elephant", "photo", "of", "cat", "dog", "red", "blue",
              "car", "colored", "black", "painting")

UNET_CONFIGS = {
    "sd1": dict(block_out_channels=[32, 64, 64], layers_per_block=1, attention_head_dim=4, cross_attention_dim=32,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                norm_num_groups=8, sample_size=16),
    # SD 2.x options: per-block head counts, linear projections, upcast attention
    "sd2": dict(block_out_channels=[32, 64, 64], layers_per_block=1, attention_head_dim=[2, 4, 4],
                cross_attention_dim=32, use_linear_projection=True, upcast_attention=True,
                down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                norm_num_groups=8, sample_size=16),
}
VAE_CONFIG = dict(block_out_channels=[16, 32, 32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=8,
                  sample_size=128, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, scaling_factor=0.18215)
TEXT_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu")
SCHEDULER_CONFIG = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                    "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
                    "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
                    "timestep_spacing": "leading"}


def _bytes_to_unicode():
    """CLIP's (and GPT-2's) reversible byte → printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_vocab(words=DEMO_WORDS):
    """A small but complete CLIP BPE vocabulary: every byte (alone and word-final) plus left-to-right merges that
    spell each demo word as one token. Returns (vocab dict, merges list)."""
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            if f"{merge[0]} {merge[1]}" not in merges:
                merges.append(f"{merge[0]} {merge[1]}")
                tokens.append(merge[0] + merge[1])
            pieces = [merge[0] + merge[1]] + pieces[2:]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, merges


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def _save_model(folder, model, config, filename="diffusion_pytorch_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "config.json", config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / filename))


def _write_tokenizer(folder):
    vocab, merges = tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_json(folder / "special_tokens_map.json", {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    return vocab


def make_tiny_checkpoint(path, kind="sd1", seed=0):
    """Writes a random tiny SD checkpoint folder at ``path`` and returns it. ``kind``: "sd1" (ε-prediction,
    conv projections) or "sd2" (v-prediction, linear projections, per-block heads, upcast attention)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if kind not in UNET_CONFIGS:
        raise ValueError(f"kind must be one of {sorted(UNET_CONFIGS)}, got {kind!r}")
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
    torch.manual_seed(seed)
    vocab = _write_tokenizer(root / "tokenizer")

    unet_cfg = dict(UNET_CONFIGS[kind], _class_name="UNet2DConditionModel")
    _save_model(root / "unet", UNet(UNetConfig.from_dict(unet_cfg)), unet_cfg)
    vae_cfg = dict(VAE_CONFIG, _class_name="AutoencoderKL")
    _save_model(root / "vae", AutoencoderKL(VAEConfig.from_dict(vae_cfg)), vae_cfg)

    text_cfg = CLIPTextConfig(vocab_size=len(vocab), bos_token_id=vocab["<|startoftext|>"],
                              eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
                              **TEXT_CONFIG)
    text_cfg.architectures = ["CLIPTextModel"]
    _save_model(root / "text_encoder", CLIPTextModel(text_cfg), text_cfg.to_dict(), filename="model.safetensors")

    scheduler = dict(SCHEDULER_CONFIG)
    if kind == "sd2":
        scheduler["prediction_type"] = "v_prediction"
    _write_json(root / "scheduler" / "scheduler_config.json", scheduler)
    _write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False})
    return root
