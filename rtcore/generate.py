"""Text-to-image and img2img (SDEdit) with DDIM on the same engines and CPU-resident step tables as CycleDiffusion.

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

from .base import (
    Pipeline,
    batch_size,
    broadcast,
    check_generator,
    check_number,
    check_output,
    output_count,
    stage,
)
from .cycle import step_mean
from .dpm import dpm_sample, dpm_table
from .images import MAX_PIXELS, check_pixels, preprocess
from .prompts import as_prompt_list, encode_prompts
from .schedule import step_table

SCHEDULERS = ("ddim", "dpm++2m")


def _draws(generator, shape, count):
    """``count`` standard normal tensors of ``shape`` (N, …), drawn in order on the CPU: one generator for the
    whole batch, or one generator per item (each item then draws its own sequence)."""
    if isinstance(generator, (list, tuple)):
        per_item = [torch.stack([torch.randn((1, *shape[1:]), generator=g) for _ in range(count)]) for g in generator]
        return list(torch.cat(per_item, dim=1))
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def sample(unet, table, guidance_scale, x, context, dtype, step_noise, callback=None, callback_steps=1):
    """The DDIM loop from x (N, C, h, w) float32; context rows are [uncond × N, cond × N] with guidance, else
    [cond × N]. ``step_noise`` holds one tensor per step when η > 0, else it is empty."""
    cfg = guidance_scale > 1.0
    timesteps = torch.as_tensor(table.timesteps, device=x.device)
    for i in range(len(table)):
        rows = [x, x] if cfg else [x]
        out = unet(torch.cat(rows).to(dtype), timesteps[i:i + 1], context).float().chunk(len(rows))
        eps = out[0] + guidance_scale * (out[1] - out[0]) if cfg else out[0]
        x = step_mean(table, i, x, eps)
        if step_noise:
            x = x + float(table.sigma[i]) * step_noise[i]
        if callback is not None and i % callback_steps == 0:
            callback(i, int(table.timesteps[i]), x)
    return x


class StableDiffusion(Pipeline):
    def _context(self, prompts, negatives, guidance_scale):
        embed = encode_prompts(self.engines, negatives + prompts)
        rows = ([embed[p] for p in negatives] if guidance_scale > 1.0 else []) + [embed[p] for p in prompts]
        return torch.stack(rows)

    def _prompts(self, prompt, negative_prompt, n_images, num_images_per_prompt):
        prompts = as_prompt_list(prompt, "prompt")
        negatives = as_prompt_list("" if negative_prompt is None else negative_prompt, "negative_prompt")
        batch = batch_size(prompt=prompts, negative_prompt=negatives, image=[None] * n_images)
        n = output_count(batch, num_images_per_prompt)
        return broadcast(prompts, n), broadcast(negatives, n), batch, n

    def _run(self, prompts, negatives, guidance_scale, loop, output_type, return_dict, timings):
        """Text encoding, then ``loop(context)`` → final latents, then decoding; each stage timed."""
        eng = self.engines
        with stage(timings, "text_encode", eng.device):
            context = self._context(prompts, negatives, guidance_scale)
        with stage(timings, "denoise", eng.device), torch.inference_mode():
            x = loop(context)
        return self._finish(x, output_type, return_dict, timings)

    def _ddim(self, table, guidance_scale, x, step_noise, callback, callback_steps):
        eng = self.engines
        noise = [n.to(device=eng.device, dtype=torch.float32) for n in step_noise]
        return lambda context: sample(eng.unet, table, guidance_scale, x, context, eng.dtype, noise, callback,
                                      callback_steps)

    def _check_common(self, guidance_scale, eta, output_type, return_dict, callback, callback_steps):
        check_number(guidance_scale, "guidance_scale")
        check_number(eta, "eta")  # DPM++ does not use it; a wrong type is still a mistake worth naming
        check_output(output_type, return_dict, callback, callback_steps)

    def text_to_image(self, prompt, height=None, width=None, num_inference_steps=50, guidance_scale=7.5,
                      negative_prompt=None, num_images_per_prompt=1, eta=0.0, generator=None, output_type="pil",
                      return_dict=True, callback=None, callback_steps=1, scheduler="ddim"):
        """Generates images from noise (diffusers' StableDiffusionPipeline) with ``scheduler`` "ddim" (η applies)
        or "dpm++2m" (DPM-Solver++(2M), deterministic: good images in 20–25 steps)."""
        eng = self.engines
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        self._check_common(guidance_scale, eta, output_type, return_dict, callback, callback_steps)
        f = eng.vae_scale_factor
        default = eng.fixed_size or (512, 512)
        height, width = height or default[0], width or default[1]
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < f or value % f:
                raise ValueError(f"{name} must be a positive multiple of {f}, got {value!r}")
        check_pixels(width, height, MAX_PIXELS, "height x width")
        if eng.fixed_size is not None and (height, width) != tuple(eng.fixed_size):
            raise ValueError(f"height/width: this {eng.backend} engine was built for {eng.fixed_size[1]}x"
                             f"{eng.fixed_size[0]}; rebuild it with --height/--width")
        prompts, negatives, _, n = self._prompts(prompt, negative_prompt, 1, num_images_per_prompt)
        check_generator(generator, n)
        shape = (n, eng.latent_channels, height // f, width // f)
        if scheduler == "dpm++2m":
            table = dpm_table(eng.scheduler, num_inference_steps)
            x = _draws(generator, shape, 1)[0].to(eng.device)

            def loop(context):
                return dpm_sample(eng.unet, table, guidance_scale, x, context, eng.dtype, callback, callback_steps)
        else:
            table = step_table(eng.scheduler, num_inference_steps, 1.0, eta)
            draws = _draws(generator, shape, 1 + (len(table) if eta > 0 else 0))
            x = draws[0].to(eng.device)  # DDIM's initial noise sigma is 1
            loop = self._ddim(table, guidance_scale, x, draws[1:], callback, callback_steps)
        return self._run(prompts, negatives, guidance_scale, loop, output_type, return_dict, {})

    def img2img(self, prompt, image, strength=0.8, num_inference_steps=50, guidance_scale=7.5, negative_prompt=None,
                num_images_per_prompt=1, eta=0.0, generator=None, output_type="pil", return_dict=True,
                callback=None, callback_steps=1):
        """SDEdit: noises the encoded image to strength·T and denoises it toward ``prompt``
        (diffusers' StableDiffusionImg2ImgPipeline with DDIM)."""
        eng = self.engines
        self._check_common(guidance_scale, eta, output_type, return_dict, callback, callback_steps)
        pixels = preprocess(image, eng.vae_scale_factor)
        if eng.fixed_size is not None and tuple(pixels.shape[2:]) != tuple(eng.fixed_size):
            raise ValueError(f"image: this {eng.backend} engine was built for {eng.fixed_size[1]}x"
                             f"{eng.fixed_size[0]} images; resize the image or rebuild the engine")
        prompts, negatives, _, n = self._prompts(prompt, negative_prompt, pixels.shape[0], num_images_per_prompt)
        check_generator(generator, n)
        table = step_table(eng.scheduler, num_inference_steps, strength, eta)
        timings = {}
        # diffusers' DDIM step draws on every step when η > 0 (the last one included)
        _, x, step_noise = self._noised_latents(pixels, n, generator, table, len(table) if eta > 0 else 0, timings)
        loop = self._ddim(table, guidance_scale, x, step_noise, callback, callback_steps)
        return self._run(prompts, negatives, guidance_scale, loop, output_type, return_dict, timings)
