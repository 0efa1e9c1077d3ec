"""Random checkpoints in diffusers' folder layout: the tiny ones for tests and the demo, and real-shape ones
(SD 1.5, SD 2.1-768) for benchmarks that must run offline.

Tests, the demo and the tiny benchmarks use the tiny checkpoint, so nothing is downloaded and diffusers can
load the very same folder as the oracle. Weights are random (seeded). The CLIP BPE vocabulary is built here
from the byte alphabet plus merges for a few demo words. The scheduler is SD's DDIM configuration.
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
# real shapes: SD 1.5 (UNet ~860M parameters, VAE ~84M, CLIP ViT-L/14 text encoder) and SD 2.1-768 (v-prediction)
SD15_UNET = dict(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=8,
                 cross_attention_dim=768, sample_size=64)
SD21_UNET = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                 upcast_attention=True, sample_size=96)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4, norm_num_groups=32,
              sample_size=512, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              scaling_factor=0.18215)
CLIP_L14 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
OPENCLIP_H14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                    max_position_embeddings=77, projection_dim=1024, hidden_act="gelu", vocab_size=49408)

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


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


def save_model(folder, model, config, filename="diffusion_pytorch_model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / filename))


def write_tokenizer(folder, words=DEMO_WORDS):
    vocab, merges = tiny_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    write_json(folder / "special_tokens_map.json", {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"})
    return vocab


def write_model_index(root):
    """model_index.json of a Stable Diffusion pipeline folder (no safety checker)."""
    write_json(root / "model_index.json", {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None], "requires_safety_checker": False})


def clip_config(text_cfg, vocab):
    """transformers' CLIPTextConfig for a text config of this file and a vocabulary from ``tiny_vocab``."""
    from transformers import CLIPTextConfig

    text = dict(text_cfg)
    text.setdefault("vocab_size", len(vocab))
    config = CLIPTextConfig(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"], **text)
    config.architectures = ["CLIPTextModel"]
    return config


# preset → (unet config, vae config, text config, prediction type)
PRESETS = {
    "tiny": (UNET_CONFIGS["sd1"], VAE_CONFIG, TEXT_CONFIG, "epsilon"),
    "tiny-sd2": (UNET_CONFIGS["sd2"], VAE_CONFIG, TEXT_CONFIG, "v_prediction"),
    "sd15": (SD15_UNET, SD_VAE, CLIP_L14, "epsilon"),
    "sd21": (SD21_UNET, dict(SD_VAE, sample_size=768), OPENCLIP_H14, "v_prediction"),
}


def _gentle_init(model, std=0.02):
    """Small normal weights and zero biases, so that a random model at full depth stays finite in fp16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim > 1:
                p.normal_(0.0, std)


def make_random_checkpoint(path, preset="tiny", seed=0, dtype=torch.float32):
    """Writes a random checkpoint folder at ``path`` for a preset of PRESETS and returns it.

    "tiny" (SD-v1 layout, ε-prediction) and "tiny-sd2" (v-prediction, linear projections, per-block heads,
    upcast attention) are toy-sized for tests. "sd15" and "sd21" have the real SD 1.5 / 2.1-768 shapes with
    small random weights, for benchmarks: several GB, so pass dtype=torch.float16 to halve the disk.
    """
    from transformers import CLIPTextModel

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
    unet_cfg, vae_cfg, text_cfg, prediction_type = PRESETS[preset]
    real_size = not preset.startswith("tiny")
    torch.manual_seed(seed)
    vocab = write_tokenizer(root / "tokenizer")

    models = []
    unet_cfg = dict(unet_cfg, _class_name="UNet2DConditionModel")
    models.append((root / "unet", UNet(UNetConfig.from_dict(unet_cfg)), unet_cfg, "diffusion_pytorch_model"))
    vae_cfg = dict(vae_cfg, _class_name="AutoencoderKL")
    models.append((root / "vae", AutoencoderKL(VAEConfig.from_dict(vae_cfg)), vae_cfg, "diffusion_pytorch_model"))
    clip_cfg = clip_config(text_cfg, vocab)
    models.append((root / "text_encoder", CLIPTextModel(clip_cfg), clip_cfg.to_dict(), "model"))
    for folder, model, config, stem in models:
        if real_size:
            _gentle_init(model)
        save_model(folder, model.to(dtype), config, filename=f"{stem}.safetensors")

    scheduler = dict(SCHEDULER_CONFIG, prediction_type=prediction_type)
    write_json(root / "scheduler" / "scheduler_config.json", scheduler)
    write_model_index(root)
    return root


def make_tiny_checkpoint(path, kind="sd1", seed=0):
    """The tiny random checkpoint: ``kind`` "sd1" (ε-prediction) or "sd2" (SD 2.x options, v-prediction)."""
    if kind not in ("sd1", "sd2"):
        raise ValueError(f"kind must be 'sd1' or 'sd2', got {kind!r}")
    return make_random_checkpoint(path, "tiny" if kind == "sd1" else "tiny-sd2", seed)


TINY_DDPM_UNET = dict(sample_size=32, block_out_channels=[16, 32, 32], layers_per_block=1, attention_head_dim=8,
                      norm_num_groups=8, down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                      up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
DDPM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
                  "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": True, "variance_type": "fixed_small"}


def make_tiny_ddpm(path, seed=0):
    """A tiny random pixel-space DDPM (diffusers' DDPMPipeline layout: unet/ with a UNet2DModel, scheduler/)."""
    from .unet2d import UNet2DConfig, UNet2DModel

    root = Path(path)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose a new folder")
    torch.manual_seed(seed)
    config = dict(TINY_DDPM_UNET, _class_name="UNet2DModel")
    save_model(root / "unet", UNet2DModel(UNet2DConfig.from_dict(config)), config)
    write_json(root / "scheduler" / "scheduler_config.json", DDPM_SCHEDULER)
    write_json(root / "model_index.json", {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
                                            "unet": ["diffusers", "UNet2DModel"],
                                            "scheduler": ["diffusers", "DDPMScheduler"]})
    return root
