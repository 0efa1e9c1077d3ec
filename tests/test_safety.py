"""The optional safety checker against diffusers' StableDiffusionSafetyChecker on the same weights."""

import json
import shutil

import numpy as np
import pytest
import torch

from rtcore import CycleDiffusion
from rtcore.demo import sample_image

ARGS = dict(prompt="An astronaut riding an elephant", source_prompt="An astronaut riding a horse",
            num_inference_steps=6, output_type="np")


@pytest.fixture(scope="module")
def with_checker(tiny_sd1, tmp_path_factory):
    """The tiny checkpoint plus a random tiny StableDiffusionSafetyChecker and its feature extractor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    path = tmp_path_factory.mktemp("safety") / "tiny"
    shutil.copytree(tiny_sd1, path)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8),
                        projection_dim=16)
    torch.manual_seed(0)
    StableDiffusionSafetyChecker(config).save_pretrained(path / "safety_checker", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path / "feature_extractor")
    index = path / "model_index.json"
    index.write_text(json.dumps(dict(json.loads(index.read_text()),
                                     safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
                                     feature_extractor=["transformers", "CLIPImageProcessor"],
                                     requires_safety_checker=True)))
    return path


def _set_thresholds(path, concept, special=1.0):
    from safetensors.torch import load_file, save_file

    weights = path / "safety_checker" / "model.safetensors"
    state = load_file(weights)
    state["concept_embeds_weights"] = torch.as_tensor(concept, dtype=torch.float32).expand(17).clone()
    state["special_care_embeds_weights"] = torch.full((3,), special)
    save_file(state, str(weights))


@pytest.mark.parametrize("threshold,flagged", [(-1.0, True), (1.0, False)])
def test_checker_matches_diffusers(with_checker, threshold, flagged):
    from diffusers import CycleDiffusionPipeline

    _set_thresholds(with_checker, threshold)
    ours = CycleDiffusion.from_pretrained(with_checker, safety_checker=True)
    ref = CycleDiffusionPipeline.from_pretrained(with_checker)
    ref.set_progress_bar_config(disable=True)
    image = sample_image(64, 64)
    got = ours(image=image, generator=torch.Generator().manual_seed(0), **ARGS)
    want = ref(image=image, generator=torch.Generator().manual_seed(0), **ARGS)
    assert got.nsfw_content_detected == want.nsfw_content_detected == [flagged]
    assert np.abs(got.images - want.images).max() <= 1e-3
    assert (got.images.max() == 0) == flagged  # flagged images come back black


def test_checker_is_off_by_default_and_refused_when_missing(with_checker, tiny_sd1, pipe):
    _set_thresholds(with_checker, -1.0)
    out = CycleDiffusion.from_pretrained(with_checker)(image=sample_image(64, 64), **ARGS)
    assert out.nsfw_content_detected is None and out.images.max() > 0
    with pytest.raises(ValueError, match="safety_checker"):
        CycleDiffusion.from_pretrained(tiny_sd1, safety_checker=True)


def test_per_image_flags_in_a_batch(with_checker):
    """A threshold between two images' concept scores flags exactly one of them."""
    from rtcore.safety import Safety

    _set_thresholds(with_checker, 1.0)
    pipe = CycleDiffusion.from_pretrained(with_checker, safety_checker=True)
    images = [sample_image(64, 64), sample_image(64, 64).rotate(90)]
    args = dict(ARGS, prompt=["a red car", "a dog"], source_prompt="a horse", image=images)
    clean = pipe(generator=[torch.Generator().manual_seed(k) for k in (1, 2)], **args)
    checker = pipe.safety
    pixels = checker.extractor([np.uint8(np.round(a * 255)) for a in clean.images], return_tensors="pt").pixel_values
    embeds = torch.nn.functional.normalize(checker.model.visual_projection(checker.model.vision_model(pixels)[1]))
    cos = (embeds @ torch.nn.functional.normalize(checker.model.concept_embeds).t())[:, 0]
    assert isinstance(checker, Safety) and abs(cos[0] - cos[1]) > 2e-3
    # just above the lower score: diffusers' rule rounds (score − threshold) to 3 decimals before comparing
    checker.model.concept_embeds_weights.data[0] = float(cos.min()) + 6e-4
    out = pipe(generator=[torch.Generator().manual_seed(k) for k in (1, 2)], **args)
    assert sum(out.nsfw_content_detected) == 1
    flagged = out.nsfw_content_detected.index(True)
    assert out.images[flagged].max() == 0
    assert flagged == int(cos.argmax())
    np.testing.assert_allclose(out.images[1 - flagged], clean.images[1 - flagged], atol=1e-6)
