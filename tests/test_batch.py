"""Batching: each item equals that item edited alone; encode once, edit many; encode/edit equals the full call."""

import numpy as np
import pytest
import torch

from rtcore.demo import sample_image

STEPS = dict(num_inference_steps=10, strength=0.8)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def edit_alone(pipe, prompt, source_prompt, image, seed, **kwargs):
    return pipe(prompt=prompt, source_prompt=source_prompt, image=image, generator=gens(seed)[0], output_type="np",
                **STEPS, **kwargs).images[0]


@pytest.mark.parametrize("guidance", [dict(), dict(source_guidance_scale=2.0), dict(guidance_scale=1.0)])
def test_each_batch_item_equals_the_item_alone(pipe, guidance):
    images = [sample_image(64, 64), sample_image(64, 64).rotate(90)]
    prompts, sources = ["a red car", "an elephant"], ["a black car", "a horse"]
    batch = pipe(prompt=prompts, source_prompt=sources, image=images, generator=gens(11, 12), output_type="np",
                 **STEPS, **guidance).images
    for j in range(2):
        alone = edit_alone(pipe, prompts[j], sources[j], images[j], 11 + j, **guidance)
        assert np.abs(batch[j] - alone).max() <= 1e-3
    assert np.abs(batch[0] - batch[1]).max() > 1e-2


def test_num_images_per_prompt_items_equal_items_alone(pipe, image):
    batch = pipe(prompt=["a red car", "a dog"], source_prompt="a black car", image=image, num_images_per_prompt=2,
                 generator=gens(1, 2, 3, 4), output_type="np", **STEPS).images
    assert batch.shape[0] == 4
    for j, prompt in enumerate(["a red car", "a red car", "a dog", "a dog"]):
        assert np.abs(batch[j] - edit_alone(pipe, prompt, "a black car", image, j + 1)).max() <= 1e-3


def test_one_generator_batch_is_deterministic_and_distinct(pipe, image):
    args = dict(prompt="a red car", source_prompt="a black car", image=image, num_images_per_prompt=3,
                output_type="np", **STEPS)
    first = pipe(generator=gens(5)[0], **args).images
    again = pipe(generator=gens(5)[0], **args).images
    np.testing.assert_array_equal(first, again)
    assert np.abs(first[0] - first[1]).max() > 1e-2  # different noise per item


@pytest.mark.parametrize("guidance", [dict(), dict(source_guidance_scale=2.0, guidance_scale=3.0)])
def test_encode_then_edit_equals_the_full_call(pipe, image, guidance):
    w_s = guidance.get("source_guidance_scale", 1.0)
    w = guidance.get("guidance_scale", 7.5)
    src = pipe.encode(image=image, source_prompt="a black car", source_guidance_scale=w_s, eta=0.1,
                      generator=gens(3)[0], **STEPS)
    edited = pipe.edit(src, prompt="a red car", guidance_scale=w, output_type="np").images
    full = pipe(prompt="a red car", source_prompt="a black car", image=image, eta=0.1, generator=gens(3)[0],
                output_type="np", **STEPS, **guidance).images
    assert np.abs(edited - full).max() <= 1e-3


def test_encode_once_edit_many_targets(pipe, image):
    src = pipe.encode(image=image, source_prompt="a horse", generator=gens(9)[0], **STEPS)
    targets = ["an elephant", "a dog", "a cat"]
    many = pipe.edit(src, prompt=targets, output_type="np").images
    assert many.shape[0] == 3
    for k, target in enumerate(targets):
        alone = pipe(prompt=target, source_prompt="a horse", image=image, generator=gens(9)[0], output_type="np",
                     **STEPS).images[0]
        assert np.abs(many[k] - alone).max() <= 1e-3
    # the source is not consumed: editing it again gives the same pixels (up to batch-size float noise)
    assert np.abs(pipe.edit(src, prompt="a dog", output_type="np").images[0] - many[1]).max() <= 1e-4


def test_edit_rejects_a_mismatched_target_list(pipe, image):
    src = pipe.encode(image=[image, image], source_prompt="a horse", generator=gens(1, 2), **STEPS)
    with pytest.raises(ValueError, match="prompt"):
        pipe.edit(src, prompt=["a", "b", "c"])
    with pytest.raises(TypeError, match="source"):
        pipe.edit("not a source", prompt="a")


def test_callback_sees_every_step(pipe, image):
    seen = []
    pipe(prompt="a", source_prompt="b", image=image, generator=gens(0)[0], output_type="latent",
         callback=lambda i, t, latents: seen.append((i, t, tuple(latents.shape))), callback_steps=3, **STEPS)
    assert [s[0] for s in seen] == [0, 3, 6]
    assert seen[0][1] == 701 and seen[0][2] == (1, 4, 8, 8)


def test_concurrent_calls_equal_serial_calls(pipe, image):
    """One pipeline object, several threads: same seeds give the same images as serial calls."""
    from concurrent.futures import ThreadPoolExecutor

    def edit(seed):
        return edit_alone(pipe, "a red car", "a black car", image, seed)

    seeds = list(range(8))
    serial = [edit(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(edit, seeds))
    for a, b in zip(serial, concurrent):
        np.testing.assert_array_equal(a, b)
