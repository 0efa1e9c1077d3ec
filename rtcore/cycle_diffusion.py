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

import warnings
from dataclasses import dataclass

import torch

from .engines import Engines
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
    image_size: tuple  # (H, W) pixels

    @property
    def num_items(self):
        return self.z.shape[0]


class CycleDiffusion(Pipeline):
    def __init__(self, engines: Engines, cuda_graphs=None):
        """``cuda_graphs``: replay the denoising loop from CUDA graphs (default: on for CUDA devices with the eager
        and compile backends, whose engines run on torch's stream; ONNX Runtime and TensorRT run on their own)."""
        super().__init__(engines)
        self._cuda_graphs = cuda_graphs
        self._engines_changed()

    def _engines_changed(self):
        cuda_graphs = self._cuda_graphs
        if cuda_graphs is None:
            cuda_graphs = self.engines.device.type == "cuda" and self.engines.backend in ("eager", "compile")
        self._graphed = None
        if cuda_graphs:
            from .graphs import GraphedDenoiser

            self._graphed = GraphedDenoiser(self.engines.unet, self.engines.device)

    def _denoise(self, table, rows, z, context, callback=None, callback_steps=1, **source):
        """The loop (rtcore.sampling.denoise), from a CUDA graph when enabled (a callback needs the plain loop: it
        runs Python per step). A replay is one launch, so its progress bar moves once, by the whole loop."""
        if self._graphed is not None and callback is None:
            from .graphs import CaptureError

            try:
                with self.progress_bar(total=len(table.timesteps)) as bar:
                    out = self._graphed(table, rows, z, context, self.engines.dtype, **source)
                    bar.update(len(table.timesteps))
                return out
            except CaptureError as err:  # this engine's loop cannot be captured: fall back for good, say so once
                # only a capture failure turns graphs off: any other error (out of memory included) is the caller's
                warnings.warn(f"CUDA graph capture failed ({err}); running the denoising loop without graphs",
                              stacklevel=3)
                self._graphed = None
        return super()._denoise(table, rows, z, context, callback, callback_steps, **source)

    # -- the two halves -----------------------------------------------------------------------------------------

    def prepare_source(self, pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt,
                       generator, timings):
        """The source side before the loop: checks it, encodes and noises the images with every draw made
        (rtcore.embed writes these for the C++ runner). Returns (table, x0, z, step_noise, source prompt per item)."""
        eng = self.engines
        n = output_count(batch, num_images_per_prompt)
        self.check_size(*pixels.shape[2:], "image")
        table = step_table(eng.scheduler, num_inference_steps, strength, eta)
        check_generator(generator, n)
        x0, z, step_noise = self.noised_latents(pixels, n, generator, table, len(noisy_steps(table)), timings)
        return table, x0, z, step_noise, broadcast(sources, n)

    def _context(self, rows, sources=(), targets=()):
        """The text embeddings of every UNet row of ``rows`` (one source and/or target prompt per item)."""
        return rows.context(encode_prompts(self.engines, ["", *sources, *targets]), sources, targets)

    def encode(self, image, source_prompt, strength=0.8, num_inference_steps=50, source_guidance_scale=1.0, eta=0.1,
               num_images_per_prompt=1, generator=None):
        """The source half of an edit, run once: returns an :class:`EncodedSource` for :meth:`edit`."""
        check_number(source_guidance_scale, "source_guidance_scale")
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = batch_size(source_prompt=sources, image=[None] * pixels.shape[0])
        rows = Rows("encode", source_guidance_scale=source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self.prepare_source(
            pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt, generator, timings)
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, sources=source_items)
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            _, residuals = self._denoise(table, rows, z, context, x0=x0, step_noise=step_noise)
        return EncodedSource(table=table, z=z, residuals=residuals, image_size=tuple(pixels.shape[2:]))

    def edit(self, source: EncodedSource, prompt, guidance_scale=7.5, output_type="pil", return_dict=True,
             callback=None, callback_steps=1):
        """The target half: edits an encoded source toward ``prompt`` (one, or a list sharing the source)."""
        if not isinstance(source, EncodedSource):
            raise TypeError(f"source must be the EncodedSource returned by encode(), got {type(source).__name__}")
        check_number(guidance_scale, "guidance_scale")
        output_type = check_output(output_type, return_dict, callback, callback_steps)
        targets = as_prompt_list(prompt, "prompt")
        n = batch_size(prompt=targets, source=[None] * source.num_items)
        rows = Rows("decode", guidance_scale=guidance_scale)
        timings = {}
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, targets=broadcast(targets, n))
        z = source.z.expand(n, -1, -1, -1)
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(source.table, rows, z, context, callback, callback_steps, residuals=source.residuals)
        return self._finish(x, output_type, return_dict, timings)

    # -- the whole edit in one loop (3 UNet rows per step by default) ---------------------------------------------

    def __call__(self, prompt, source_prompt, image=None, strength=0.8, num_inference_steps=50, guidance_scale=7.5,
                 source_guidance_scale=1.0, num_images_per_prompt=1, eta=0.1, generator=None, output_type="pil",
                 return_dict=True, callback=None, callback_steps=1):
        check_number(guidance_scale, "guidance_scale")
        check_number(source_guidance_scale, "source_guidance_scale")
        output_type = check_output(output_type, return_dict, callback, callback_steps)
        targets = as_prompt_list(prompt, "prompt")
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = batch_size(prompt=targets, source_prompt=sources, image=[None] * pixels.shape[0])
        rows = Rows("cycle", guidance_scale, source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self.prepare_source(
            pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt, generator, timings)
        with stage(timings, "text_encode", self.engines.device):
            context = self._context(rows, source_items, broadcast(targets, len(source_items)))
        with stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(table, rows, z, context, callback, callback_steps, x0=x0, step_noise=step_noise)
        return self._finish(x, output_type, return_dict, timings)
