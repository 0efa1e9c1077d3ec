"""Optional safety checker, compatible with diffusers' StableDiffusionSafetyChecker. It is off unless asked for.

It loads the ``safety_checker/`` weights (safetensors, the same parameter names as diffusers) and the
``feature_extractor/`` preprocessing of a checkpoint. For each decoded image it scores the CLIP image embedding
against the checkpoint's concept embeddings with diffusers' exact rule (special-care concepts lower every
threshold by 0.01). An image with a bad concept is replaced by a black one, and ``nsfw_content_detected``
gets True for it, as in the reference pipeline.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .images import postprocess


class SafetyChecker(nn.Module):
    def __init__(self, config):
        from transformers import CLIPVisionModel

        super().__init__()
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(17, config.projection_dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(3, config.projection_dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(17), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(3), requires_grad=False)

    @torch.no_grad()
    def flags(self, clip_input):
        """clip_input (B, 3, S, S) → one bool per image: does it show a bad concept."""
        embeds = F.normalize(self.visual_projection(self.vision_model(clip_input)[1]))
        special = (embeds @ F.normalize(self.special_care_embeds).t()).cpu().float().numpy()
        concepts = (embeds @ F.normalize(self.concept_embeds).t()).cpu().float().numpy()
        special_w = self.special_care_embeds_weights.tolist()
        concept_w = self.concept_embeds_weights.tolist()
        result = []
        for i in range(embeds.shape[0]):
            adjustment = 0.0
            for k, threshold in enumerate(special_w):  # diffusers' rule, rounding included
                if round(special[i][k] - threshold + adjustment, 3) > 0:
                    adjustment = 0.01
            result.append(any(round(concepts[i][k] - t + adjustment, 3) > 0 for k, t in enumerate(concept_w)))
        return result


class Safety:
    """The checker and its image preprocessing, applied to decoded images."""

    def __init__(self, root, device, dtype):
        from transformers import CLIPConfig, CLIPImageProcessor

        from rtcore.export.checkpoint import load_weights  # safetensors only; pickle refused

        root = Path(root)
        folder, extractor = root / "safety_checker", root / "feature_extractor"
        if not folder.is_dir() or not extractor.is_dir():
            raise ValueError(f"safety_checker=True, but {root} carries no safety_checker/ and feature_extractor/ "
                             "folders; use a checkpoint that ships them, or leave the checker off")
        self.model = SafetyChecker(CLIPConfig.from_pretrained(str(folder)))
        self.model.load_state_dict(load_weights(folder, "model"), strict=True)
        self.model.to(device, dtype).eval()
        self.extractor = CLIPImageProcessor.from_pretrained(str(extractor))
        self.device, self.dtype = device, dtype

    def __call__(self, decoded):
        """decoded (B, 3, H, W) in about [-1, 1] → (images with flagged ones black, flags)."""
        pixels = self.extractor(postprocess(decoded, "pil"), return_tensors="pt").pixel_values
        flags = self.model.flags(pixels.to(self.device, self.dtype))
        if any(flags):
            decoded = decoded.clone()
            decoded[torch.tensor(flags, device=decoded.device)] = -1.0  # black after postprocessing
        return decoded, flags
