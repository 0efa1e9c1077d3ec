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
    # bool is not a number, and odd shapes, types and sizes are named, not a deep error
    (dict(strength=True), ValueError, "strength"),
    (dict(eta=True), ValueError, "eta"),
    (dict(num_images_per_prompt=True), ValueError, "num_images_per_prompt"),
    (dict(num_images_per_prompt=10**6), ValueError, "num_images_per_prompt"),
    (dict(num_inference_steps=1000), ValueError, "num_inference_steps"),  # steps_offset=1 reaches timestep 1000
    (dict(image=np.zeros((0, 64, 3), np.uint8)), ValueError, "image"),
    (dict(image=np.zeros((0, 64, 64, 3), np.uint8)), ValueError, "image"),
    (dict(image=torch.zeros(3, 0, 64)), ValueError, "image"),
    (dict(image=torch.zeros(3, 64, 64, dtype=torch.int64)), TypeError, "image"),
    (dict(image=np.zeros((64, 64, 3), bool)), TypeError, "image"),
    (dict(image=np.zeros((64, 64, 2), np.uint8)), ValueError, "image"),
    (dict(image=torch.zeros(1, 1, 3, 64, 64)), ValueError, "image"),
    (dict(image=PIL.Image.new("F", (64, 64))), TypeError, "image"),
    (dict(image=PIL.Image.new("La", (64, 64))), ValueError, "image"),
    (dict(image=np.zeros((4104, 4104), np.uint8)), ValueError, "over the limit"),
    (dict(callback="print"), TypeError, "callback"),
    (dict(return_dict="no"), TypeError, "return_dict"),
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
    torch.from_numpy(np.asarray(sample_image(64, 64))).permute(2, 0, 1),  # uint8 CHW, as torchvision reads files
    torch.from_numpy(np.asarray(sample_image(64, 64))).permute(2, 0, 1)[None],  # uint8 BCHW
    sample_image(64, 64).convert("CMYK"),
    PIL.Image.fromarray(np.asarray(sample_image(64, 64).convert("L")).astype(np.uint16) * 257),  # 16-bit grey
    np.asarray(sample_image(64, 64), dtype=np.float16) / 255,
], ids=["gray", "rgba", "palette", "np-uint8", "np-float", "np-gray", "pt", "pt-signed", "pt-uint8", "pt-uint8-batch",
        "cmyk", "grey16", "np-float16"])
def test_odd_but_valid_images(pipe, image):
    out = call(pipe, image=image)
    assert _size(out) == (64, 64) and np.isfinite(out.images).all()


def test_rgb_inputs_agree_across_types(pipe):
    pil = sample_image(64, 64)
    arr = np.asarray(pil)
    tensor = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)
    uint8_tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    outs = [call(pipe, image=im).images for im in (pil, arr, tensor, uint8_tensor)]
    for other in outs[1:]:
        assert np.abs(outs[0] - other).max() < 1e-6


def test_sixteen_bit_grey_is_scaled_not_clipped(pipe):
    from rtcore.images import preprocess

    grey8 = np.asarray(sample_image(64, 64).convert("L"))
    grey16 = PIL.Image.fromarray(grey8.astype(np.uint16) * 257)
    assert grey16.mode.startswith("I")
    np.testing.assert_array_equal(preprocess(grey16), preprocess(PIL.Image.fromarray(grey8)))


def test_numpy_scalars_are_numbers(pipe):
    out = call(pipe, strength=np.float32(1.0), eta=np.float64(0.1), num_inference_steps=np.int64(4),
               guidance_scale=np.float32(7.5))
    np.testing.assert_array_equal(out.images, call(pipe, eta=0.1).images)


def test_image_file_decompression_bomb_is_refused_before_decoding(tmp_path):
    import time

    from rtcore.images import ImageTooLarge, load_image

    path = tmp_path / "bomb.png"
    PIL.Image.new("1", (12000, 12000)).save(path)
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match="12000x12000.*over the limit"):
        load_image(path)
    assert time.perf_counter() - start < 1


@pytest.mark.parametrize("data,needle", [(b"", "not an image"), (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an image")])
def test_unreadable_or_outside_format_files_are_refused(tmp_path, data, needle):
    from rtcore.images import load_image

    path = tmp_path / "in.png"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=needle):
        load_image(path)


def test_truncated_image_file_is_a_clear_error(tmp_path):
    from rtcore.images import load_image

    full = tmp_path / "full.png"
    sample_image(64, 64).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_image(cut)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(height=10**6, width=10**6), ValueError, "height x width"),
    (dict(eta=True), ValueError, "eta"),
    (dict(callback=3), TypeError, "callback"),
    (dict(num_images_per_prompt=1000), ValueError, "num_images_per_prompt"),
    (dict(num_inference_steps=999, scheduler="dpm++2m"), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=1000), ValueError, "num_inference_steps"),
])
def test_text_to_image_bad_arguments(pipe, kwargs, exc, name):
    from rtcore import StableDiffusion

    with pytest.raises(exc, match=name):
        StableDiffusion(pipe.engines).text_to_image("a", **dict(dict(height=64, width=64, num_inference_steps=2),
                                                                **kwargs))


@pytest.mark.parametrize("kwargs,exc,name", [(dict(strength=True), ValueError, "strength"),
                                             (dict(image=torch.zeros(3, 64, 0)), ValueError, "image")])
def test_img2img_and_encode_bad_arguments(pipe, kwargs, exc, name):
    from rtcore import StableDiffusion

    args = dict(dict(image=sample_image(64, 64), num_inference_steps=2), **kwargs)
    with pytest.raises(exc, match=name):
        StableDiffusion(pipe.engines).img2img("a", **args)
    with pytest.raises(exc, match=name):
        pipe.encode(source_prompt="a", **args)


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
