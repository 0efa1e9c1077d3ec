"""Checkpoint loading: a diffusers-layout folder (a hub id, or a model shipped with rtcore) → reference models,
safetensors only.

Layout read: model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/. Weights come from
``*.safetensors`` files (single or sharded with an ``.index.json``); pickle files (``.bin``, ``.ckpt``, ``.pt``) are
refused, never unpickled. A hub id is downloaded once through huggingface_hub, safetensors and configs only.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
# models inside the package (rtcore/models/): the one trained model, rtcore.export.train_shapes' output
SHIPPED = ("rtcore-shapes",)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
# what a hub download fetches: configs, safetensors weights, the tokenizer, and the safety checker's image
# preprocessing (feature_extractor/), which safety_checker=True needs; never pickle weights
HUB_PATTERNS = ["model_index.json", "*/config.json", "*/*.safetensors", "*/*.safetensors.index.json",
                "scheduler/*.json", "tokenizer/*", "feature_extractor/*.json"]

CONVERT_HINT = ("convert it once with: python -c \"import torch, safetensors.torch as st; "
                "st.save_file(torch.load('IN.bin', weights_only=True), 'OUT.safetensors')\" "
                "on a file you trust, or re-save the pipeline with diffusers' save_pretrained(safe_serialization=True)")


@dataclass
class Checkpoint:
    path: Path
    unet: UNet
    vae: AutoencoderKL
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler_config: dict


def resolve(path_or_id) -> Path:
    """A local checkpoint folder as it is, a model shipped with rtcore ("rtcore-shapes"), or a hub id ("org/name")
    downloaded once (safetensors and configs only)."""
    path = Path(os.path.expanduser(str(path_or_id)))
    if path.is_dir():
        return path
    name = str(path_or_id)
    if name in SHIPPED:  # inside the installed package: rtcore/models/NAME
        import rtcore

        folder = Path(rtcore.__file__).resolve().parent / "models" / name
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{name} ships with rtcore but {folder} is incomplete; reinstall rtcore")
        return folder
    if path.exists():
        raise ValueError(f"model path {name} is a file; expected a diffusers-layout folder "
                         f"(model_index.json, {', '.join(SUBFOLDERS)})")
    if name.startswith((".", "/", "~")) or name.count("/") != 1:  # a path, not an "org/name" hub id
        raise FileNotFoundError(f"model folder not found: {name} (expected a local diffusers-layout folder or a "
                                "hub id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated repo: one clear message
        raise FileNotFoundError(f"model {name!r} is not a local folder and could not be fetched from the hub "
                                f"({type(err).__name__}: {err}); download it to a folder and pass the path") from None


def _read_json(path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"missing {path}: not a complete diffusers-layout checkpoint") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupt JSON in {path}: {err}") from None


def _load_safetensors(file):
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"corrupt or truncated weight file {file}: {err}; re-download or re-export it") from None


def load_weights(folder: Path, stem: str) -> dict:
    """All tensors of ``folder/stem.safetensors`` (or its shards). Refuses pickle-only folders."""
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        shards = sorted(set(_read_json(index)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_safetensors(folder / shard))
        return state
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder} holds only pickle weights ({', '.join(pickles)}); rtcore loads safetensors only "
                         f"and never unpickles a file. To use it, {CONVERT_HINT}")
    raise FileNotFoundError(f"no weights in {folder}: expected {single.name}")


def _load_module(module, state, where):
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"weights in {where} do not match its config.json: {str(err)[:600]}") from None
    return module


def load_unet(folder: Path) -> UNet:
    cfg = UNetConfig.from_dict(_read_json(folder / "config.json"))
    with torch.device("meta"):  # no random init: weights are assigned straight from the file
        model = UNet(cfg)
    return _load_module(model, load_weights(folder, WEIGHT_STEMS["unet"]), folder).eval()


def load_vae(folder: Path) -> AutoencoderKL:
    cfg = VAEConfig.from_dict(_read_json(folder / "config.json"))
    with torch.device("meta"):
        model = AutoencoderKL(cfg)
    return _load_module(model, load_weights(folder, WEIGHT_STEMS["vae"]), folder).eval()


def load_text_encoder(folder: Path):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_dict(_read_json(folder / "config.json"))
    model = CLIPTextModel(config)
    state = load_weights(folder, WEIGHT_STEMS["text_encoder"])
    state.pop("text_model.embeddings.position_ids", None)  # a buffer older exports saved; transformers rebuilds it
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    if not (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"missing tokenizer files in {folder} (vocab.json and merges.txt)")
    return CLIPTokenizer.from_pretrained(str(folder))


def load_checkpoint(path_or_id) -> Checkpoint:
    """Loads the reference models (fp32, CPU, eval mode) of a Stable Diffusion v1.x/v2.x checkpoint."""
    root = resolve(path_or_id)
    _read_json(root / "model_index.json")
    missing = [name for name in SUBFOLDERS if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} is missing subfolder(s) {missing}; a diffusers-layout checkpoint has "
                                f"{', '.join(SUBFOLDERS)}")
    scheduler_config = _read_json(root / "scheduler" / "scheduler_config.json")
    return Checkpoint(
        path=root,
        unet=load_unet(root / "unet"),
        vae=load_vae(root / "vae"),
        text_encoder=load_text_encoder(root / "text_encoder"),
        tokenizer=load_tokenizer(root / "tokenizer"),
        scheduler_config=scheduler_config,
    )
