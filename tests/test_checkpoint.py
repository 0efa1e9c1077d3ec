"""Checkpoint loading: safetensors only, clear errors for missing, corrupt or pickle-only folders."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from rtcore import CycleDiffusion
from rtcore.export import load_checkpoint, make_tiny_checkpoint


@pytest.fixture
def copy(tiny_sd1, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_sd1, path)
    return path


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        CycleDiffusion.from_pretrained(tmp_path / "nope")


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        load_checkpoint("rtcore-test/not-a-real-model")


def test_missing_subfolder(copy):
    shutil.rmtree(copy / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        load_checkpoint(copy)


def test_missing_model_index(copy):
    (copy / "model_index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_checkpoint(copy)


def test_truncated_weights(copy):
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated.*diffusion_pytorch_model.safetensors"):
        load_checkpoint(copy)


def test_corrupt_config(copy):
    (copy / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt JSON"):
        load_checkpoint(copy)


def test_weights_that_do_not_match_the_config(copy):
    cfg_file = copy / "unet" / "config.json"
    cfg_file.write_text(json.dumps(dict(json.loads(cfg_file.read_text()), cross_attention_dim=48)))
    with pytest.raises(ValueError, match="do not match its config.json"):
        load_checkpoint(copy)


def test_pickle_only_weights_are_refused_not_loaded(copy):
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    # a pickle that would run code if it were ever unpickled
    marker = copy / "UNPICKLED"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).touch()"

    class Evil:
        def __reduce__(self):
            return (exec, (payload,))

    torch.save({"x": Evil()}, copy / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors only.*convert"):
        load_checkpoint(copy)
    assert not marker.exists()


def test_sharded_safetensors_load(copy, tiny_sd1):
    from safetensors.torch import load_file, save_file

    folder = copy / "unet"
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(state)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(folder / name))
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    loaded = load_checkpoint(copy).unet.state_dict()
    reference = load_checkpoint(tiny_sd1).unet.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_tiny_factory_refuses_to_overwrite(tiny_sd1):
    with pytest.raises(FileExistsError):
        make_tiny_checkpoint(tiny_sd1)


def test_tiny_tokenizer_spells_demo_words_as_single_tokens(pipe):
    ids = pipe.engines.tokenizer("An astronaut riding a horse").input_ids
    assert len(ids) == 2 + 5  # start, five words, end


def test_runtime_import_does_not_load_the_export_stack():
    code = ("import sys, rtcore; bad = [m for m in ('rtcore.export', 'rtcore.bench', 'diffusers') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hub_download_fetches_what_the_safety_checker_needs_and_no_pickles():
    """The allow-list goes through huggingface_hub's own filter, as snapshot_download applies it."""
    from huggingface_hub.utils import filter_repo_objects

    from rtcore.export.checkpoint import HUB_PATTERNS

    repo = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin", "safety_checker/config.json", "safety_checker/model.safetensors",
            "safety_checker/pytorch_model.bin", "feature_extractor/preprocessor_config.json",
            "tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json", "v1-5.ckpt"]
    fetched = set(filter_repo_objects(repo, allow_patterns=HUB_PATTERNS))
    assert {"safety_checker/config.json", "safety_checker/model.safetensors",
            "feature_extractor/preprocessor_config.json", "tokenizer/merges.txt"} <= fetched
    assert not {p for p in fetched if p.endswith((".bin", ".ckpt"))}
