"""Text-to-image (DDIM or DPM-Solver++(2M)) and img2img (SDEdit, DDIM) on the same engines, CPU-resident step
tables and sampling loop (rtcore.sampling) as CycleDiffusion.

    sd = StableDiffusion.from_pretrained(path)          # or StableDiffusion(cycle_pipe.engines): shared engines
    out = sd.text_to_image("An astronaut riding a horse", height=512, width=512, generator=...)
    out = sd.img2img("An astronaut riding an elephant", image=photo, strength=0.75, generator=...)

Both match diffusers' StableDiffusionPipeline / StableDiffusionImg2ImgPipeline with a DDIMScheduler for the same
checkpoint and CPU seed. The random draws are made up front in diffusers' order. text-to-image draws the initial
latents. img2img draws the VAE sample, then the forward noise. Both then draw one noise per step when η > 0
(diffusers' DDIM step draws even on the last step). The per-step update is the target half of CycleDiffusion's:
x' = μ(x, ε) + σ·n.
"""

import torch

from .approximations import Approximations
from .images import MAX_PIXELS, check_pixels, preprocess
from .pipeline import (
    Pipeline,
    batch_size,
    broadcast,
    check_generator,
    check_number,
    check_output,
    output_count,
    stage,
)
from .prompts import as_prompt_list, encode_prompts
from .sampling import Rows, draw_noise
from .schedule import dpm_table, step_table

SCHEDULERS = ("ddim", "dpm++2m")


class StableDiffusion(Pipeline):
    def _prompts(self, prompt, negative_prompt, n_images, num_images_per_prompt):
        prompts = as_prompt_list(prompt, "prompt")
        negatives = as_prompt_list("" if negative_prompt is None else negative_prompt, "negative_prompt")
        batch = batch_size(prompt=prompts, negative_prompt=negatives, image=[None] * n_images)
        n = output_count(batch, num_images_per_prompt)
        return broadcast(prompts, n), broadcast(negatives, n), n

    def _run(self, table, rows, x, *, step_noise, prompts, negatives, output_type, return_dict, callback,
             callback_steps, timings, approximations):
        """Text encoding, the loop (rtcore.sampling.denoise) from x, then decoding; each stage timed."""
        eng = self.engines
        with stage(timings, "text_encode", eng.device):
            context = rows.context(encode_prompts(eng, negatives + prompts), targets=prompts, negatives=negatives)
        with stage(timings, "denoise", eng.device), torch.inference_mode():
            x, _ = self._denoise(table, rows, x, context, callback, callback_steps, approximations,
                                 step_noise=step_noise)
        return self._finish(x, output_type, return_dict, timings)

    def _check_common(self, guidance_scale, eta, output_type, return_dict, callback, callback_steps):
        check_number(guidance_scale, "guidance_scale")
        check_number(eta, "eta")  # DPM++ does not use it; a wrong type is still a mistake worth naming
        return check_output(output_type, return_dict, callback, callback_steps)

    def text_to_image(self, prompt, height=None, width=None, num_inference_steps=50, guidance_scale=7.5,
                      negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=None, output_type="pil",
                      return_dict=True, callback=None, callback_steps=1, scheduler="ddim", cache_interval=1,
                      guidance_cutoff=1.0):
        """Generates images from noise (diffusers' StableDiffusionPipeline) with ``scheduler`` "ddim" (η applies)
        or "dpm++2m" (DPM-Solver++(2M), deterministic: good images in 20–25 steps). ``guidance_cutoff`` is diffusers'
        SDCFGCutoffCallback(cutoff_step_ratio=...), ``cache_interval`` feature caching (rtcore.approximations)."""
        eng = self.engines
        approximations = Approximations(cache_interval, guidance_cutoff)
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        output_type = self._check_common(guidance_scale, eta, output_type, return_dict, callback, callback_steps)
        f = eng.vae_scale_factor
        height, width = height or eng.default_size[0], width or eng.default_size[1]  # a fixed-size engine's own
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < f or value % f:
                raise ValueError(f"{name} must be a positive multiple of {f}, got {value!r}")
        check_pixels(width, height, MAX_PIXELS, "height x width")
        self.check_size(height, width, "height/width")
        prompts, negatives, n = self._prompts(prompt, negative_prompt, 1, num_images_per_prompt)
        check_generator(generator, n)
        shape = (n, eng.latent_channels, height // f, width // f)
        if scheduler == "dpm++2m":
            table, rows = dpm_table(eng.scheduler, num_inference_steps), Rows("dpm++", guidance_scale)
            draws = draw_noise(generator, shape, 1)
        else:
            table, rows = step_table(eng.scheduler, num_inference_steps, 1.0, eta), Rows("ddim", guidance_scale)
            draws = draw_noise(generator, shape, 1 + (len(table) if eta > 0 else 0))
        draws = draws.to(eng.device)  # DDIM's and DPM++'s initial noise sigma is 1
        step_noise = draws[1:] if len(draws) > 1 else None
        return self._run(table, rows, draws[0], step_noise=step_noise, prompts=prompts, negatives=negatives,
                         output_type=output_type, return_dict=return_dict, callback=callback,
                         callback_steps=callback_steps, timings={}, approximations=approximations)

    def img2img(self, prompt, image, strength=0.8, num_inference_steps=50, guidance_scale=7.5, negative_prompt=None,
                num_images_per_prompt=1, eta=0.0, generator=None, output_type="pil", return_dict=True,
                callback=None, callback_steps=1, cache_interval=1, guidance_cutoff=1.0):
        """SDEdit: noises the encoded image to strength·T and denoises it toward ``prompt``
        (diffusers' StableDiffusionImg2ImgPipeline with DDIM); the approximations as in :meth:`text_to_image`."""
        eng = self.engines
        approximations = Approximations(cache_interval, guidance_cutoff)
        output_type = self._check_common(guidance_scale, eta, output_type, return_dict, callback, callback_steps)
        pixels = preprocess(image, eng.vae_scale_factor)
        self.check_size(*pixels.shape[2:], "image")
        prompts, negatives, n = self._prompts(prompt, negative_prompt, pixels.shape[0], num_images_per_prompt)
        check_generator(generator, n)
        table = step_table(eng.scheduler, num_inference_steps, strength, eta)
        timings = {}
        # diffusers' DDIM step draws on every step when η > 0 (the last one included)
        _, x, step_noise = self.noised_latents(pixels, n=n, generator=generator, table=table,
                                               num_step_draws=len(table) if eta > 0 else 0, timings=timings)
        return self._run(table, Rows("ddim", guidance_scale), x, step_noise=step_noise if eta > 0 else None,
                         prompts=prompts, negatives=negatives, output_type=output_type, return_dict=return_dict,
                         callback=callback, callback_steps=callback_steps, timings=timings,
                         approximations=approximations)
