"""The calls diffusers users make on a pipeline work on rtcore's, so that swapping one for the other works:
diffusers' own CycleDiffusion fast-test call, the progress bar methods, ``pipe.to``."""

import random

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion, StableDiffusion


def diffusers_fast_test_inputs(seed=0):
    """``get_dummy_inputs`` of diffusers' tests/pipelines/stable_diffusion/test_cycle_diffusion.py: a (1, 3, 32, 32)
    float tensor from ``floats_tensor`` (Python's random in [0, 1)), moved to [0.5, 1), and "numpy" output."""
    rng = random.Random(seed)
    image = torch.tensor([rng.random() for _ in range(3 * 32 * 32)], dtype=torch.float32).view(1, 3, 32, 32)
    return dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
                image=image / 2 + 0.5, num_inference_steps=2, eta=0.1, strength=0.8, guidance_scale=3,
                source_guidance_scale=1, output_type="numpy")


def test_diffusers_fast_test_call_runs_and_matches_diffusers(pipe, diffusers_pipe):
    with pytest.warns(FutureWarning, match="output_type numpy is outdated"):
        ours = pipe(generator=torch.Generator().manual_seed(0), **diffusers_fast_test_inputs()).images
    with pytest.warns(FutureWarning, match="output_type numpy is outdated"):
        ref = diffusers_pipe(generator=torch.Generator().manual_seed(0), **diffusers_fast_test_inputs()).images
    assert isinstance(ours, np.ndarray) and ours.shape == ref.shape == (1, 32, 32, 3)
    assert np.abs(ours - ref).max() <= 1e-3 and ours.std() > 0.01


def test_other_unknown_output_types_are_still_refused(pipe):
    with pytest.raises(ValueError, match="output_type must be one of"):
        pipe(**{**diffusers_fast_test_inputs(), "output_type": "numpyy"})


def test_denoising_shows_a_progress_bar_by_default_and_disable_silences_it(tiny_sd1, capsys):
    pipe = CycleDiffusion.from_pretrained(tiny_sd1)
    args = dict(prompt="a", source_prompt="b", image=torch.rand(1, 3, 32, 32), num_inference_steps=10,
                strength=0.5, output_type="np")
    pipe(**args)
    assert "5/5" in capsys.readouterr().err  # int(10 · 0.5) steps
    pipe.set_progress_bar_config(disable=True)
    pipe(**args)
    assert capsys.readouterr().err == ""
    pipe.set_progress_bar_config(desc="editing")
    pipe.encode(image=args["image"], source_prompt="b", num_inference_steps=4, strength=1.0)
    err = capsys.readouterr().err
    assert "editing" in err and "4/4" in err  # the source half alone runs the bar too
    sd = StableDiffusion(pipe.engines)
    sd.text_to_image("a", height=32, width=32, num_inference_steps=3, output_type="np")
    assert "3/3" in capsys.readouterr().err


def test_progress_bar_takes_an_iterable_or_a_total(pipe, capsys):
    pipe.set_progress_bar_config()  # the shared pipeline may have served (a service silences its bar): tqdm's defaults
    assert list(pipe.progress_bar(range(3))) == [0, 1, 2]
    with pipe.progress_bar(total=4) as bar:
        bar.update(4)
    assert bar.n == 4 and "4/4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="iterable or total"):
        pipe.progress_bar()


def test_to_moves_an_eager_pipeline(tiny_sd1):
    moved = CycleDiffusion.from_pretrained(tiny_sd1)
    moved.set_progress_bar_config(disable=True)
    assert moved.to("cpu") is moved and moved.device == torch.device("cpu")
    assert moved.to(torch.bfloat16) is moved and moved.dtype == torch.bfloat16
    assert next(moved.engines.unet.parameters()).dtype == torch.bfloat16
    built = CycleDiffusion.from_pretrained(tiny_sd1, dtype=torch.bfloat16)
    args = dict(prompt="a", source_prompt="b", image=torch.rand(1, 3, 32, 32), num_inference_steps=4,
                output_type="np")
    ours = moved(generator=torch.Generator().manual_seed(1), **args).images
    theirs = built(generator=torch.Generator().manual_seed(1), **args).images
    np.testing.assert_array_equal(ours, theirs)


def test_to_on_a_built_engine_says_how_to_get_one(onnx_pipe):
    assert onnx_pipe.to("cpu") is onnx_pipe and onnx_pipe.to(torch.float32) is onnx_pipe
    with pytest.raises(ValueError, match=r"this onnx engine runs on cpu in fp32.*rtcore export .* --dtype fp16"):
        onnx_pipe.to(torch.float16)
    with pytest.raises(ValueError, match="CUDA is not available|rtcore.load"):
        onnx_pipe.to("cuda")
