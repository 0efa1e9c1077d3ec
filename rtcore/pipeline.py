"""What every rtcore pipeline shares (the base of CycleDiffusion and StableDiffusion): loading (checkpoint, hub id
or engine directory), argument checks, timing per stage, the noised start of an image, and turning final latents
into images with a NaN check.

A pipeline object holds no per-call state, so concurrent calls from several threads are safe.
"""

import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .approximations import EXACT
from .engines import BACKENDS, DTYPE_NAMES, Engines, eager_engines, resolve_device, resolve_dtype, resolve_int8
from .graphs import CaptureError, GraphedDenoiser
from .images import postprocess
from .manifest import MANIFEST, read_manifest, rebuild_command, validate
from .sampling import denoise, draw_noise
from .schedule import is_real

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class PipelineOutput:
    images: Any
    nsfw_content_detected: Any = None
    timings: dict = field(default_factory=dict)  # seconds per stage of this call


MAX_IMAGES_PER_CALL = 256  # outputs of one call (batch x num_images_per_prompt): beyond this, memory runs out first


def check_number(value, name):
    if not is_real(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_positive_int(value, name, minimum=1):
    """``value`` is an int (a numpy one too, never a bool) of at least ``minimum``, else a ValueError naming it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_output(output_type, return_dict, callback, callback_steps):
    """The output and progress arguments every pipeline call takes, checked before any work. Returns the output
    type, with diffusers' deprecated alias "numpy" (which its own CycleDiffusion tests pass) read as "np"."""
    if output_type == "numpy":
        # diffusers' words (VaeImageProcessor.postprocess), and its category: FutureWarning
        warnings.warn(f"the output_type {output_type} is outdated and has been set to `np`. Please make sure to set it "
                      "to one of these instead: `pil`, `np`, `pt`, `latent`", FutureWarning, stacklevel=3)
        output_type = "np"
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if not isinstance(return_dict, bool):
        raise TypeError(f"return_dict must be True or False, got {return_dict!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function (step, timestep, latents) or None, got "
                        f"{type(callback).__name__}")
    check_positive_int(callback_steps, "callback_steps")
    return output_type


def output_count(batch, num_images_per_prompt):
    """The number of images a call makes: batch x num_images_per_prompt, bounded."""
    check_positive_int(num_images_per_prompt, "num_images_per_prompt")
    n = batch * int(num_images_per_prompt)
    if n > MAX_IMAGES_PER_CALL:
        raise ValueError(f"num_images_per_prompt: {batch} inputs x {num_images_per_prompt} = {n} images in one call; "
                         f"at most {MAX_IMAGES_PER_CALL} (split the work over several calls)")
    return n


def batch_size(**lists):
    """Each named list has length 1 (shared) or B; returns B or raises naming the mismatching parameters."""
    sizes = {name: len(items) for name, items in lists.items()}
    batch = max(sizes.values())
    bad = {name: n for name, n in sizes.items() if n not in (1, batch)}
    if bad:
        raise ValueError(f"batch sizes do not match: {sizes}; each of {', '.join(sizes)} must have one item or "
                         f"the same number of items")
    return batch


def broadcast(items, n):
    """A list of 1 or n → a list of n (item j of n items made from a list of B = item j // (n // B))."""
    return [items[j * len(items) // n] for j in range(n)]


def check_generator(generator, n):
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
            check_generator(g, n)
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


@contextmanager
def stage(timings, name, device):
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


class Pipeline:
    def __init__(self, engines: Engines, cuda_graphs=None):
        """``cuda_graphs``: replay the denoising loop of calls without a callback from CUDA graphs (default: on for
        CUDA devices with the eager and compile backends, whose engines run on torch's stream; ONNX Runtime and
        TensorRT run on their own)."""
        self.engines = engines
        self.safety = None  # an rtcore.safety.Safety (from_pretrained(safety_checker=True)), or None: off
        self.source_path = None  # the checkpoint folder or engine directory this pipeline came from
        self._progress_bar_config = {}  # tqdm options of the denoising bar (set_progress_bar_config)
        self._cuda_graphs = cuda_graphs
        self._engines_changed()

    # -- what diffusers users call on a pipeline ----------------------------------------------------------------

    @property
    def device(self):
        return self.engines.device

    @property
    def dtype(self):
        return self.engines.dtype

    def set_progress_bar_config(self, **kwargs):
        """tqdm options for the denoising progress bar, as in diffusers: ``disable=True`` silences it."""
        self._progress_bar_config = kwargs

    def progress_bar(self, iterable=None, total=None):
        """A tqdm bar with this pipeline's options (diffusers' ``DiffusionPipeline.progress_bar``)."""
        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self._progress_bar_config)
        raise ValueError("progress_bar: pass iterable or total")

    def to(self, device=None, dtype=None):
        """diffusers' ``pipe.to(device)``, ``pipe.to(dtype)``, ``pipe.to(device, dtype)``: moves an eager pipeline's
        models and returns the pipeline. A built engine is bound to its device and dtype when it is built and
        loaded, so asking it for others raises a ValueError that says how to get them."""
        if isinstance(device, torch.dtype):  # pipe.to(torch.float16)
            device, dtype = None, device
        eng = self.engines
        device = eng.device if device is None else resolve_device(device)
        dtype = eng.dtype if dtype is None else resolve_dtype(dtype)
        if (device, dtype) == (eng.device, eng.dtype):
            return self
        if eng.checkpoint is None:
            raise ValueError(self._bound_engine_message(device, dtype))
        self.engines = eager_engines(eng.checkpoint, device, dtype)
        if self.safety is not None:
            from .safety import Safety

            self.safety = Safety(self.source_path, device, dtype)
        self._engines_changed()
        return self

    def _bound_engine_message(self, device, dtype):
        eng = self.engines
        what = f"pipe.to({str(device)!r}, {DTYPE_NAMES[dtype]}): this {eng.backend} engine runs on {eng.device} in " \
               f"{DTYPE_NAMES[eng.dtype]}, fixed when it was built and loaded"
        if self.source_path is None or not (Path(self.source_path) / MANIFEST).is_file():
            return f"{what}; make the pipeline again for {device} and {DTYPE_NAMES[dtype]}"
        if dtype == eng.dtype and eng.backend == "onnx":  # ONNX files run on any device ONNX Runtime has
            return f"{what}; load the engine directory again: rtcore.load({str(self.source_path)!r}, " \
                   f"device={str(device)!r})"
        manifest = read_manifest(self.source_path)
        command = rebuild_command({**manifest, "dtype": DTYPE_NAMES[dtype], "device": {"type": device.type}})
        return f"{what}; rebuild it for them with: {command}, then load that"

    def _engines_changed(self):
        """Derives what depends on the engines (the CUDA-graph denoiser), at first and whenever ``to`` moves them."""
        cuda_graphs = self._cuda_graphs
        if cuda_graphs is None:
            cuda_graphs = self.engines.device.type == "cuda" and self.engines.backend in ("eager", "compile")
        self._graphed = GraphedDenoiser(self.engines) if cuda_graphs else None

    def _denoise(self, table, rows, z, context, callback=None, callback_steps=1, approximations=EXACT, **inputs):
        """The loop (rtcore.sampling.denoise) of every sampler, with the pipeline's progress bar and
        ``approximations`` (rtcore.approximations). Replayed from a CUDA graph when graphs are on and no callback is
        given (a callback runs Python per step); a replay is one launch, so its bar moves once, by the whole loop. A
        loop that cannot be captured, or a capture that runs out of memory, turns graphs off for good with one
        warning, and the plain loop runs instead."""
        total = len(table.timesteps)
        graphed = self._graphed  # another thread may turn graphs off meanwhile
        with self.progress_bar(total=total) as bar:
            if graphed is not None and callback is None:
                try:
                    out = graphed(table, rows, z, context, self.engines.dtype, approximations=approximations,
                                  **inputs)
                    bar.update(total)
                    return out
                except (CaptureError, torch.OutOfMemoryError) as err:
                    self._graphs_off(err)
            eng = self.engines
            return denoise(eng.unet, table, rows, z, context, eng.dtype, callback=callback,
                           callback_steps=callback_steps, progress=bar.update, approximations=approximations,
                           unet_parts=(eng.unet_full, eng.unet_shallow), **inputs)

    def _graphs_off(self, err):
        if self._graphed is None:
            return  # another call has said so already
        # its graphs go with it, and the pool memory they held returns to the caching allocator for the plain loop
        # (not emptied to the device here: another thread's capture may be underway, which empty_cache forbids)
        self._graphed = None
        what = "capture failed" if isinstance(err, CaptureError) else "ran out of memory"
        warnings.warn(f"CUDA graph {what} ({err}); running the denoising loop without graphs from now on",
                      stacklevel=4)

    @classmethod
    def from_pretrained(cls, path, backend=None, device="cpu", dtype=None, kernels=False, int8=False, height=None,
                        width=None, batch=1, safety_checker=False):
        """A pipeline from a checkpoint (folder or hub id) or from an engine directory.

        Checkpoint: ``backend`` "eager" (default) runs the reference models; "onnx", "compile" or "tensorrt"
        builds an engine directory into the cache once (keyed by checkpoint content, settings and versions) and
        loads it. ``kernels=True`` runs the UNet and VAE on rtcore's Triton kernels; ``int8=True`` adds dynamic
        int8 GEMMs where the size policy says (eager and compile backends; Triton and a CUDA device needed) or int8
        linear layers (openvino, bf16); ``int8="static"`` (openvino) makes the convolutions int8 too, calibrated.
        ``height``/``width``/``batch`` set the shape profile of built engines (default: the UNet's sample size).
        Engine directory (has a manifest.json): its backend and dtype are used; passing others is an error.
        ``safety_checker=True`` runs the checkpoint's StableDiffusionSafetyChecker on every decoded image.
        """
        pipe = cls._from_pretrained(path, backend, device, dtype, kernels, int8, height, width, batch)
        if safety_checker:
            from .safety import Safety

            pipe.safety = Safety(pipe.source_path, pipe.engines.device, pipe.engines.dtype)
        return pipe

    @classmethod
    def _from_pretrained(cls, path, backend, device, dtype, kernels, int8, height, width, batch):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        device = resolve_device(device)
        if (Path(str(path)) / MANIFEST).is_file():
            manifest = validate(path, device, check_hashes=False)  # the load below hashes the files
            if backend not in (None, manifest["backend"]):
                raise ValueError(f"{path} is a {manifest['backend']!r} engine directory; backend={backend!r} "
                                 "does not match (leave backend unset)")
            if dtype is not None and resolve_dtype(dtype) != resolve_dtype(manifest["dtype"]):
                raise ValueError(f"{path} was built for dtype {manifest['dtype']}; dtype={dtype!r} does not match")
            return cls.load(path, device)
        backend = backend or "eager"
        dtype, int8 = resolve_dtype(dtype or torch.float32), resolve_int8(int8)
        if int8 == "static" and backend == "eager":
            raise ValueError("int8='static' (calibrated int8 convolutions) is an openvino engine: pass "
                             "backend='openvino', dtype='bf16'; the eager backend's int8 is dynamic (int8=True)")
        if backend != "eager":
            from rtcore.export.build import cached_build  # the export stack only when a checkpoint is built

            engine_dir = cached_build(path, backend, dtype, height, width, batch, kernels, int8, device)
            return cls.load(engine_dir, device, check_hashes=False)  # cached_build has just validated it
        from rtcore.export import load_checkpoint

        checkpoint = load_checkpoint(path)
        if kernels or int8:
            from rtcore.export.patch import patch

            for model in (checkpoint.unet, checkpoint.vae):
                patch(model, group_norm=kernels, attention=kernels, int8=int8)
        pipe = cls(eager_engines(checkpoint, device, dtype))
        pipe.source_path = checkpoint.path
        return pipe

    @classmethod
    def load(cls, engine_dir, device="cpu", providers=None, check_hashes=True):
        """A pipeline on an engine directory (``rtcore export`` output): no export stack, no checkpoint needed.
        The manifest is always checked; ``check_hashes=False`` skips re-hashing artifacts a caller just checked."""
        from .backends import load_engines

        pipe = cls(load_engines(engine_dir, device, providers, check_hashes))
        pipe.source_path = Path(engine_dir)  # engine directories carry the checkpoint's safety checker, if any
        return pipe

    def noised_latents(self, pixels, *, n, generator, table, num_step_draws, timings):
        """Encodes the images and noises them to the table's first timestep, with all draws made up front in
        diffusers' order (VAE sample, forward noise, then ``num_step_draws`` step draws: rtcore.sampling.draw_noise).
        Returns float32 device tensors x0, z (N, C, h, w) and the step noise (num_step_draws, N, C, h, w); item j
        of N comes from image j // (N / images)."""
        eng = self.engines
        n_images, f = pixels.shape[0], eng.vae_scale_factor
        shape = (n, eng.latent_channels, pixels.shape[2] // f, pixels.shape[3] // f)
        draws = draw_noise(generator, shape, 2 + num_step_draws, images=n_images)
        with stage(timings, "vae_encode", eng.device), torch.inference_mode():
            mean, std = eng.vae_encode(pixels.to(eng.device, eng.dtype))
        to_dev = dict(device=eng.device, dtype=torch.float32)
        mean = mean.float().repeat_interleave(n // n_images, dim=0)
        std = std.float().repeat_interleave(n // n_images, dim=0)
        x0 = eng.scaling_factor * (mean + std * draws[0].to(**to_dev))
        z = table.a_start * x0 + table.b_start * draws[1].to(**to_dev)
        return x0, z, draws[2:].to(**to_dev)

    def check_size(self, height, width, name):
        """Engines built for one image size (compile, tensorrt) refuse any other, naming the parameter."""
        fixed = self.engines.fixed_size
        if fixed is not None and (height, width) != tuple(fixed):
            raise ValueError(f"{name}: this {self.engines.backend} engine was built for {fixed[1]}x{fixed[0]} images, "
                             f"got {width}x{height}; resize the image or rebuild the engine with --height/--width")

    def _finish(self, x, output_type, return_dict, timings):
        eng = self.engines
        nsfw = None
        if not torch.isfinite(x).all():
            raise FloatingPointError(
                f"the edit produced NaN/inf latents ({eng.backend}, {eng.dtype}); with fp16 try dtype=torch.float32 "
                "or bfloat16, and check the checkpoint weights")
        if output_type == "latent":
            images = x.to(eng.dtype)
        else:
            with stage(timings, "vae_decode", eng.device), torch.inference_mode():
                decoded = eng.vae_decode((x / eng.scaling_factor).to(eng.dtype))
            if not torch.isfinite(decoded).all():
                raise FloatingPointError(f"the VAE decoder produced NaN/inf pixels ({eng.backend}, {eng.dtype}); "
                                         "the fp16 SD VAE overflows on some images: use dtype=torch.float32")
            if self.safety is not None:
                decoded, nsfw = self.safety(decoded)
            images = postprocess(decoded, output_type)
        if not return_dict:
            return images, nsfw
        return PipelineOutput(images=images, nsfw_content_detected=nsfw, timings=timings)
