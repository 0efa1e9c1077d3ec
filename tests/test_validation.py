"""Bad input gets a clear error naming the parameter; odd but valid input works."""

import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from rtcore import CycleDiffusion
from rtcore.demo import sample_image

FAST = dict(num_inference_steps=4, strength=1.0)


def call(pipe, **overrides):
    args = dict(prompt="a red car", source_prompt="a black car", image=sample_image(64, 64),
                generator=torch.Generator().manual_seed(0), output_type="np", **FAST)
    args.update(overrides)
    return pipe(**args)


@pytest.mark.parametrize("overrides,exc,name", [
    (dict(strength=0.0), ValueError, "strength"),
    (dict(strength=1.01), ValueError, "strength"),
    (dict(strength=-0.5), ValueError, "strength"),
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=2, strength=0.3), ValueError, "strength"),
    (dict(eta=-0.1), ValueError, "eta"),
    (dict(image=None), ValueError, "image"),
    (dict(image=[]), ValueError, "image"),
    (dict(image="photo.png"), TypeError, "image"),
    (dict(image=np.zeros((4, 4, 3), np.uint8)), ValueError, "image"),
    (dict(image=np.full((64, 64, 3), 2.0, np.float32)), ValueError, "image"),
    (dict(image=torch.full((3, 64, 64), float("nan"))), ValueError, "image"),
    (dict(image=[sample_image(64, 64), sample_image(64, 48)]), ValueError, "image"),
    (dict(prompt=["a", "b"], source_prompt=["a", "b", "c"]), ValueError, "source_prompt"),
    (dict(prompt=["a", "b"], image=[sample_image(64, 64)] * 3), ValueError, "prompt"),
    (dict(prompt=None), TypeError, "prompt"),
    (dict(prompt=[]), ValueError, "prompt"),
    (dict(source_prompt=3), TypeError, "source_prompt"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(source_guidance_scale="2"), ValueError, "source_guidance_scale"),
    (dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    (dict(generator=[torch.Generator()] * 2), ValueError, "generator"),
    (dict(generator=42), TypeError, "generator"),
    (dict(output_type="jpeg"), ValueError, "output_type"),
    (dict(callback_steps=0), ValueError, "callback_steps"),
])
def test_bad_call_arguments(pipe, overrides, exc, name):
    with pytest.raises(exc, match=name):
        call(pipe, **overrides)


def test_unknown_backend(tiny_sd1):
    with pytest.raises(ValueError, match="backend.*eager"):
        CycleDiffusion.from_pretrained(tiny_sd1, backend="tensorrtx")


@pytest.mark.parametrize("kwargs,name", [(dict(dtype="fp64"), "dtype"), (dict(device="tpu"), "device")])
def test_bad_device_or_dtype(tiny_sd1, kwargs, name):
    with pytest.raises(ValueError, match=name):
        CycleDiffusion.from_pretrained(tiny_sd1, **kwargs)


def _size(result):
    return result.images.shape[1:3]


@pytest.mark.parametrize("image", [
    sample_image(64, 64).convert("L"),
    sample_image(64, 64).convert("RGBA"),
    sample_image(64, 64).convert("P"),
    np.asarray(sample_image(64, 64)),  # uint8 HWC
    np.asarray(sample_image(64, 64), dtype=np.float32) / 255.0,  # float HWC in [0, 1]
    np.asarray(sample_image(64, 64).convert("L")),  # HW grayscale
    torch.from_numpy(np.asarray(sample_image(64, 64), dtype=np.float32) / 255.0).permute(2, 0, 1),  # CHW [0, 1]
    torch.from_numpy(np.asarray(sample_image(64, 64), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1),  # [-1, 1]
], ids=["gray", "rgba", "palette", "np-uint8", "np-float", "np-gray", "pt", "pt-signed"])
def test_odd_but_valid_images(pipe, image):
    out = call(pipe, image=image)
    assert _size(out) == (64, 64) and np.isfinite(out.images).all()


def test_rgb_inputs_agree_across_types(pipe):
    pil = sample_image(64, 64)
    arr = np.asarray(pil)
    tensor = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)
    outs = [call(pipe, image=im).images for im in (pil, arr, tensor)]
    assert np.abs(outs[0] - outs[1]).max() < 1e-6 and np.abs(outs[0] - outs[2]).max() < 1e-6


@pytest.mark.parametrize("image,expected", [(sample_image(70, 53), (48, 64)),
                                            (np.zeros((53, 70, 3), np.uint8), (48, 64))])
def test_sizes_not_multiple_of_8_are_rounded_down(pipe, image, expected):
    assert _size(call(pipe, image=image)) == expected


def test_long_prompt_is_truncated_with_a_warning(pipe):
    long = " ".join(["astronaut"] * 100)
    with pytest.warns(UserWarning, match="truncated"):
        out = call(pipe, prompt=long)
    assert np.isfinite(out.images).all()


def test_empty_prompts_work(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = call(pipe, prompt="", source_prompt="")
    assert np.isfinite(out.images).all()


def test_user_inputs_are_not_modified(pipe):
    arr = np.asarray(sample_image(64, 64)).copy()
    tensor = torch.rand(1, 3, 64, 64)
    before_arr, before_tensor = arr.copy(), tensor.clone()
    call(pipe, image=arr)
    call(pipe, image=tensor)
    np.testing.assert_array_equal(arr, before_arr)
    torch.testing.assert_close(tensor, before_tensor, rtol=0, atol=0)


def test_output_types(pipe):
    pil = call(pipe, output_type="pil").images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (64, 64)
    pt = call(pipe, output_type="pt").images
    assert pt.shape == (1, 3, 64, 64) and 0 <= pt.min() and pt.max() <= 1
    latent = call(pipe, output_type="latent").images
    assert latent.shape == (1, 4, 8, 8)
    images, nsfw = call(pipe, return_dict=False)
    assert images.shape == (1, 64, 64, 3) and nsfw is None
