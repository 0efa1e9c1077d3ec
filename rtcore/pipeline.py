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

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cycle import Guidance, denoise, draw_noise, noisy_steps
from .engines import BACKENDS, Engines, eager_engines, resolve_device, resolve_dtype
from .images import postprocess, preprocess
from .manifest import MANIFEST, read_manifest
from .prompts import as_prompt_list, encode_prompts
from .schedule import StepTable, step_table

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class CycleDiffusionOutput:
    images: Any
    nsfw_content_detected: Any = None
    timings: dict = field(default_factory=dict)  # seconds per stage of this call


@dataclass
class EncodedSource:
    """The source half of an edit: the noised start z and, per step, the residual y' − μ_src (DESIGN §3)."""

    table: StepTable
    z: torch.Tensor  # (N, C, h, w) float32 on the engine device
    residuals: list  # one (N, C, h, w) float32 tensor per step
    image_size: tuple  # (H, W) pixels
    settings: dict

    @property
    def num_items(self):
        return self.z.shape[0]


def _check_number(value, name, low=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_output_type(output_type):
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")


def _batch_size(**lists):
    """Each named list has length 1 (shared) or B; returns B or raises naming the mismatching parameters."""
    sizes = {name: len(items) for name, items in lists.items()}
    batch = max(sizes.values())
    bad = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if bad:
        raise ValueError(f"batch sizes do not match: {sizes}; each of {', '.join(sizes)} must have one item or "
                         f"the same number of items")
    return batch


def _broadcast(items, n):
    """A list of 1 or n → a list of n (item j of n items made from a list of B = item j // (n // B))."""
    return [items[j * len(items) // n] for j in range(n)]


def _check_generator(generator, n):
    if generator is None or isinstance(generator, torch.Generator):
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator: rtcore draws all noise on the CPU so that "
                             "every device gives the same image for a seed")
        return
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise ValueError(f"generator is a list of {len(generator)} generators; it must have one per output "
                             f"image ({n} = batch size x num_images_per_prompt)")
        for g in generator:
            _check_generator(g, n)
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


@contextmanager
def _stage(timings, name, device):
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


class CycleDiffusion:
    def __init__(self, engines: Engines, cuda_graphs=None):
        """``cuda_graphs``: replay the denoising loop from CUDA graphs (default: on for CUDA devices with the eager
        and compile backends, whose engines run on torch's stream; ONNX Runtime and TensorRT run on their own)."""
        self.engines = engines
        if cuda_graphs is None:
            cuda_graphs = engines.device.type == "cuda" and engines.backend in ("eager", "compile")
        self._graphed = None
        if cuda_graphs:
            from .graphs import GraphedDenoiser

            self._graphed = GraphedDenoiser(engines.unet, engines.device)

    def _denoise(self, table, guidance, z, context, callback=None, callback_steps=1, **source):
        """The loop, from a CUDA graph when enabled (a callback needs the plain loop: it runs Python per step)."""
        if self._graphed is not None and callback is None:
            try:
                return self._graphed(table, guidance, z, context, self.engines.dtype, **source)
            except RuntimeError as err:  # capture is not possible for every engine: fall back, say so once
                warnings.warn(f"CUDA graph capture failed ({err}); running the denoising loop without graphs",
                              stacklevel=3)
                self._graphed = None
        return denoise(self.engines.unet, table, guidance, z, context, self.engines.dtype, callback=callback,
                       callback_steps=callback_steps, **source)

    @classmethod
    def from_pretrained(cls, path, backend=None, device="cpu", dtype=None, kernels=False, int8=False, height=None,
                        width=None, batch=1):
        """A pipeline from a checkpoint (folder or hub id) or from an engine directory.

        Checkpoint: ``backend`` "eager" (default) runs the reference models; "onnx", "compile" or "tensorrt"
        builds an engine directory into the cache once (keyed by checkpoint content, settings and versions) and
        loads it. ``kernels=True`` runs the UNet and VAE on rtcore's Triton kernels; ``int8=True`` adds dynamic
        int8 GEMMs where the size policy says (eager and compile backends; Triton and a CUDA device needed).
        ``height``/``width``/``batch`` set the shape profile of built engines (default: the UNet's sample size).
        Engine directory (has a manifest.json): its backend and dtype are used; passing others is an error.
        """
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        device = resolve_device(device)
        if (Path(str(path)) / MANIFEST).is_file():
            manifest = read_manifest(path)
            if backend not in (None, manifest["backend"]):
                raise ValueError(f"{path} is a {manifest['backend']!r} engine directory; backend={backend!r} "
                                 "does not match (leave backend unset)")
            if dtype is not None and resolve_dtype(dtype) != resolve_dtype(manifest["dtype"]):
                raise ValueError(f"{path} was built for dtype {manifest['dtype']}; dtype={dtype!r} does not match")
            return cls.load(path, device)
        backend = backend or "eager"
        dtype = resolve_dtype(dtype or torch.float32)
        if backend != "eager":
            from rtcore.export.build import cached_build  # the export stack only when a checkpoint is built

            engine_dir = cached_build(path, backend, dtype, height, width, batch, kernels, int8, device)
            return cls.load(engine_dir, device)
        from rtcore.export import load_checkpoint

        checkpoint = load_checkpoint(path)
        if kernels or int8:
            from rtcore.export.patch import patch

            for model in (checkpoint.unet, checkpoint.vae):
                patch(model, group_norm=kernels, attention=kernels, int8=int8)
        return cls(eager_engines(checkpoint, device, dtype))

    @classmethod
    def load(cls, engine_dir, device="cpu", providers=None):
        """A pipeline on an engine directory (``rtcore export`` output): no export stack, no checkpoint needed."""
        from .load import load_engines

        return cls(load_engines(engine_dir, device, providers))

    # -- the two halves -----------------------------------------------------------------------------------------

    def _prepare_source(self, pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt,
                        generator, timings):
        """Validates the source side; returns (table, x0, z, step_noise, source prompt per item)."""
        eng = self.engines
        _check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        if eng.fixed_size is not None and tuple(pixels.shape[2:]) != tuple(eng.fixed_size):
            raise ValueError(f"image: this {eng.backend} engine was built for {eng.fixed_size[1]}x{eng.fixed_size[0]} "
                             f"images, got {pixels.shape[3]}x{pixels.shape[2]}; resize the image or rebuild the "
                             "engine with --height/--width")
        table = step_table(eng.scheduler, num_inference_steps, strength, eta)
        n_images = pixels.shape[0]
        n = batch * num_images_per_prompt
        _check_generator(generator, n)
        f = eng.vae_scale_factor
        latent_shape = (eng.latent_channels, pixels.shape[2] // f, pixels.shape[3] // f)
        vae_sample, forward_noise, step_noise = draw_noise(generator, n_images, n // n_images, latent_shape,
                                                           len(noisy_steps(table)))
        with _stage(timings, "vae_encode", eng.device), torch.inference_mode():
            mean, std = eng.vae_encode(pixels.to(eng.device, eng.dtype))
        to_dev = dict(device=eng.device, dtype=torch.float32)
        mean = mean.float().repeat_interleave(n // n_images, dim=0)
        std = std.float().repeat_interleave(n // n_images, dim=0)
        x0 = eng.scaling_factor * (mean + std * vae_sample.to(**to_dev))
        z = table.a_start * x0 + table.b_start * forward_noise.to(**to_dev)
        return table, x0, z, step_noise.to(**to_dev), _broadcast(sources, n)

    def _context(self, guidance, source_items, target_items):
        """Text embeddings of every UNet row, in the row order of :func:`rtcore.cycle.denoise`."""
        embed = encode_prompts(self.engines, [""] + source_items + target_items)
        rows = []
        if source_items:
            rows += [embed[""]] * len(source_items) if guidance.source_cfg else []
            rows += [embed[p] for p in source_items]
        if target_items:
            rows += [embed[""]] * len(target_items) if guidance.target_cfg else []
            rows += [embed[p] for p in target_items]
        return torch.stack(rows)

    def _finish(self, x, output_type, return_dict, timings):
        eng = self.engines
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"the edit produced NaN/inf latents ({eng.backend}, {eng.dtype}); with fp16 try dtype=torch.float32 "
                "or bfloat16, and check the checkpoint weights")
        if output_type == "latent":
            images = x.to(eng.dtype)
        else:
            with _stage(timings, "vae_decode", eng.device), torch.inference_mode():
                decoded = eng.vae_decode((x / eng.scaling_factor).to(eng.dtype))
            if not torch.isfinite(decoded).all():
                raise FloatingPointError(f"the VAE decoder produced NaN/inf pixels ({eng.backend}, {eng.dtype}); "
                                         "the fp16 SD VAE overflows on some images: use dtype=torch.float32")
            images = postprocess(decoded, output_type)
        if not return_dict:
            return images, None
        return CycleDiffusionOutput(images=images, timings=timings)

    def encode(self, image, source_prompt, strength=0.8, num_inference_steps=50, source_guidance_scale=1.0, eta=0.1,
               num_images_per_prompt=1, generator=None):
        """The source half of an edit, run once: returns an :class:`EncodedSource` for :meth:`edit`."""
        _check_number(source_guidance_scale, "source_guidance_scale")
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = _batch_size(source_prompt=sources, image=[None] * pixels.shape[0])
        guidance = Guidance(source_guidance_scale=source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self._prepare_source(
            pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt, generator, timings)
        with _stage(timings, "text_encode", self.engines.device):
            context = self._context(guidance, source_items, [])
        with _stage(timings, "denoise", self.engines.device), torch.inference_mode():
            _, residuals = self._denoise(table, guidance, z, context, x0=x0, step_noise=step_noise)
        settings = dict(strength=strength, num_inference_steps=num_inference_steps, eta=eta,
                        source_guidance_scale=source_guidance_scale, timings=timings)
        return EncodedSource(table=table, z=z, residuals=residuals, image_size=tuple(pixels.shape[2:]),
                             settings=settings)

    def edit(self, source: EncodedSource, prompt, guidance_scale=7.5, output_type="pil", return_dict=True,
             callback=None, callback_steps=1):
        """The target half: edits an encoded source toward ``prompt`` (one, or a list sharing the source)."""
        if not isinstance(source, EncodedSource):
            raise TypeError(f"source must be the EncodedSource returned by encode(), got {type(source).__name__}")
        _check_number(guidance_scale, "guidance_scale")
        _check_output_type(output_type)
        _check_positive_int(callback_steps, "callback_steps")
        targets = as_prompt_list(prompt, "prompt")
        n = _batch_size(prompt=targets, source=[None] * source.num_items)
        guidance = Guidance(guidance_scale=guidance_scale)
        timings = {}
        with _stage(timings, "text_encode", self.engines.device):
            context = self._context(guidance, [], _broadcast(targets, n))
        z = source.z.expand(n, -1, -1, -1)
        with _stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(source.table, guidance, z, context, callback, callback_steps,
                                 residuals=source.residuals)
        return self._finish(x, output_type, return_dict, timings)

    # -- the whole edit in one loop (3 UNet rows per step by default) ---------------------------------------------

    def __call__(self, prompt, source_prompt, image=None, strength=0.8, num_inference_steps=50, guidance_scale=7.5,
                 source_guidance_scale=1.0, num_images_per_prompt=1, eta=0.1, generator=None, output_type="pil",
                 return_dict=True, callback=None, callback_steps=1):
        _check_number(guidance_scale, "guidance_scale")
        _check_number(source_guidance_scale, "source_guidance_scale")
        _check_output_type(output_type)
        _check_positive_int(callback_steps, "callback_steps")
        targets = as_prompt_list(prompt, "prompt")
        sources = as_prompt_list(source_prompt, "source_prompt")
        pixels = preprocess(image, self.engines.vae_scale_factor)
        batch = _batch_size(prompt=targets, source_prompt=sources, image=[None] * pixels.shape[0])
        guidance = Guidance(guidance_scale, source_guidance_scale)
        timings = {}
        table, x0, z, step_noise, source_items = self._prepare_source(
            pixels, sources, batch, strength, num_inference_steps, eta, num_images_per_prompt, generator, timings)
        with _stage(timings, "text_encode", self.engines.device):
            context = self._context(guidance, source_items, _broadcast(targets, len(source_items)))
        with _stage(timings, "denoise", self.engines.device), torch.inference_mode():
            x, _ = self._denoise(table, guidance, z, context, callback, callback_steps, x0=x0, step_noise=step_noise)
        return self._finish(x, output_type, return_dict, timings)
