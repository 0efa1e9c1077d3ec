"""CycleDiffusion: text-guided editing of a real image, diffusers-compatible API on rtcore engines.

    pipe = CycleDiffusion.from_pretrained(path, backend="eager", device="cpu", dtype=torch.float32)
    out = pipe(prompt=..., source_prompt=..., image=..., generator=torch.Generator().manual_seed(0))
    src = pipe.encode(image=..., source_prompt=..., generator=...)   # the source half, once
    out = pipe.edit(src, prompt=["...", "..."])                         # any number of targets

Batching: ``prompt``, ``source_prompt`` and ``image`` are each one item (shared) or a list of B items; output item
j = b·num_images_per_prompt + k. A list of generators must have one generator per output item, and then each item
equals that item edited alone. One generator draws for the whole batch in diffusers' order (for a single item
this reproduces diffusers' ``CycleDiffusionPipeline`` exactly).

A pipeline object holds no per-call state: concurrent calls from several threads are safe with the eager backend.
"""

from dataclasses import dataclass

import torch

from .approximations import EXACT, Approximations
from .images import preprocess
from .pipeline import (
    Pipeline,
    PipelineOutput,
    batch_size,
    broadcast,
    check_generator,
    check_number,
    check_output,
    output_count,
    stage,
)
from .prompts import as_prompt_list, encode_prompts
from .sampling import Rows, noisy_steps
from .schedule import StepTable, step_table

CycleDiffusionOutput = PipelineOutput  # the name diffusers users look for


@dataclass
class EncodedSource:
    """The source half of an edit: the noised start z and, per step, the residual y' − μ_src (docs/DESIGN.md §3)."""

    table: StepTable
    z: torch.Tensor  # (N, C, h, w) float32 on the engine device
    residuals: list  # one (N, C, h, w) float32 tensor per step
    approximations: Approximations = EXACT  # what the source half ran with: edit's default

    @property
    def num_items(self):
        return self.z.shape[0]


class CycleDiffusion(Pipeline):
    # -- the two halves -----------------------------------------------------------------------------------------

    def prepare_source(self, pixels, sources, *, batch, strength, num_inference_steps, eta, num_images_per_prompt,
                       generator, timings):
        """The source side before the loop: checks it, encodes and noises the images with every draw made
        (rtcore.cpp_request writes these for the C++ runner). Returns (table, x0, z, step_noise, source prompt per
        item)."""
        eng = self.engines
        n = output_count(batch, num_images_per_prompt)
        self.check_size(*pixels.shape[2:], "image")
        table = step_table(eng.scheduler, num_inference_steps, strength, eta)
        check_generator(generator, n)
        x0, z, step_noise = self.noised_latents(pixels, n=n, generator=generator, table=table,
                                                num_step_draws=len(noisy_steps(table)), timings=timings)
        return table, x0, z, step_noise, broadcast(sources, n)

    def _context(self, rows, sources=(), targets=()):
        """The text embeddings of every UNet row of ``rows`` (one source and/or target prompt per item)."""
        return rows.context(encode_prompts(self.engines, ["", *sources, *targets]), sources, targets)

    def encode(self, image, source_prompt, strength=0.8, num_inference_steps=50, source_guidance_scale=1.0, eta=0.1,
               num_images_per_prompt=1, generator=None, cache_interval=1, guidance_cutoff=1.0):
        """The source half of an edit, run once: returns an :class:`EncodedSource` for :meth:`edit`. With the same
        ``cache_interval`` and ``guidance_cutoff`` given to both halves, encode + edit equals the full call."""
        check_number(source_guidance_scale, "source_guidance_scale")
        approximations = Approximations(cache_interval, guidance_cutoff)
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = batch_size(source_prompt=sources, image=[None] * pixels.shape[0])
        rows = Rows("source", source_guidance_scale=source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self.prepare_source(
            pixels, sources, batch=batch, strength=strength, num_inference_steps=num_inference_steps, eta=eta,
            num_images_per_prompt=num_images_per_prompt, generator=generator, timings=timings)
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, sources=source_items)
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            _, residuals = self._denoise(table, rows, z, context, approximations=approximations, x0=x0,
                                         step_noise=step_noise)
        return EncodedSource(table=table, z=z, residuals=residuals, approximations=approximations)

    def edit(self, source: EncodedSource, prompt, guidance_scale=7.5, output_type="pil", return_dict=True,
             callback=None, callback_steps=1, cache_interval=None, guidance_cutoff=None):
        """The target half: edits an encoded source toward ``prompt`` (one, or a list sharing the source).
        ``cache_interval``/``guidance_cutoff`` left as None are the ones the source was encoded with, which is what
        makes encode + edit equal the full call; others are allowed, but then the two halves differ."""
        if not isinstance(source, EncodedSource):
            raise TypeError(f"source must be the EncodedSource returned by encode(), got {type(source).__name__}")
        check_number(guidance_scale, "guidance_scale")
        encoded = source.approximations
        approximations = Approximations(encoded.cache_interval if cache_interval is None else cache_interval,
                                        encoded.guidance_cutoff if guidance_cutoff is None else guidance_cutoff)
        output_type = check_output(output_type, return_dict, callback, callback_steps)
        targets = as_prompt_list(prompt, "prompt")
        n = batch_size(prompt=targets, source=[None] * source.num_items)
        rows = Rows("target", guidance_scale=guidance_scale)
        timings = {}
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, targets=broadcast(targets, n))
        z = source.z.expand(n, -1, -1, -1)
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(source.table, rows, z, context, callback, callback_steps, approximations,
                                 residuals=source.residuals)
        return self._finish(x, output_type, return_dict, timings)

    # -- the whole edit in one loop (3 UNet rows per step by default) ---------------------------------------------

    def __call__(self, prompt, source_prompt, image=None, strength=0.8, num_inference_steps=50, guidance_scale=7.5,
                 source_guidance_scale=1.0, num_images_per_prompt=1, eta=0.1, generator=None, output_type="pil",
                 return_dict=True, callback=None, callback_steps=1, cache_interval=1, guidance_cutoff=1.0):
        """The whole edit in one loop. ``cache_interval`` > 1 and ``guidance_cutoff`` < 1 trade accuracy for fewer
        UNet FLOPs (rtcore.approximations; their cost is measured in docs/QUALITY.md); the defaults are exact."""
        check_number(guidance_scale, "guidance_scale")
        approximations = Approximations(cache_interval, guidance_cutoff)
        check_number(source_guidance_scale, "source_guidance_scale")
        output_type = check_output(output_type, return_dict, callback, callback_steps)
        targets = as_prompt_list(prompt, "prompt")
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = batch_size(prompt=targets, source_prompt=sources, image=[None] * pixels.shape[0])
        rows = Rows("cycle", guidance_scale, source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self.prepare_source(
            pixels, sources, batch=batch, strength=strength, num_inference_steps=num_inference_steps, eta=eta,
            num_images_per_prompt=num_images_per_prompt, generator=generator, timings=timings)
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, source_items, broadcast(targets, len(source_items)))
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(table, rows, z, context, callback, callback_steps, approximations, x0=x0,
                                 step_noise=step_noise)
        return self._finish(x, output_type, return_dict, timings)
