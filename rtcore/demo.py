"""``rtcore demo``: the whole edit path offline, on the tiny checkpoint and a drawn sample image.

The tiny checkpoint has random weights, so the "after" image is noise-like: the demo proves the path (checkpoint
→ engines → encode → denoise → decode → PNG) and shows the time per stage, not image quality.
"""

import tempfile
import time
from pathlib import Path

import PIL.Image
import PIL.ImageDraw


def sample_image(width=128, height=128):
    """A drawn scene (sky, sun, ground, a horse-ish figure): deterministic, no file shipped, no download."""
    image = PIL.Image.new("RGB", (width, height))
    draw = PIL.ImageDraw.Draw(image)
    for y in range(height):  # sky gradient over ground
        shade = int(120 + 120 * y / height)
        color = (90, 150, shade) if y < height * 0.65 else (70, 130 - y % 7 * 3, 50)
        draw.line([(0, y), (width, y)], fill=color)
    s = min(width, height)
    draw.ellipse([width * 0.72, height * 0.08, width * 0.72 + s * 0.16, height * 0.08 + s * 0.16],
                 fill=(250, 220, 90))
    body = [width * 0.30, height * 0.45, width * 0.70, height * 0.62]
    draw.ellipse(body, fill=(120, 80, 40))
    for x in (0.34, 0.42, 0.58, 0.65):
        draw.rectangle([width * x, height * 0.58, width * (x + 0.04), height * 0.80], fill=(100, 65, 30))
    draw.ellipse([width * 0.62, height * 0.32, width * 0.80, height * 0.48], fill=(120, 80, 40))
    draw.ellipse([width * 0.40, height * 0.22, width * 0.52, height * 0.34], fill=(235, 235, 240))  # rider
    draw.rectangle([width * 0.42, height * 0.32, width * 0.50, height * 0.48], fill=(235, 235, 240))
    return image


def run_demo(out_dir, steps=50, strength=0.8, size=128, seed=0, device="cpu", checkpoint=None, log=print):
    """Builds (or uses) the tiny checkpoint, edits the sample image, writes before.png / after.png in out_dir."""
    import torch

    from rtcore import CycleDiffusion

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rtcore-tiny-") as tmp:
        start = time.perf_counter()
        if checkpoint is None:
            from rtcore.export import make_tiny_checkpoint

            checkpoint = make_tiny_checkpoint(Path(tmp) / "tiny")
        pipe = CycleDiffusion.from_pretrained(checkpoint, device=device)
        load_s = time.perf_counter() - start
        before = sample_image(size, size)
        before.save(out_dir / "before.png")
        source, target = "An astronaut riding a horse", "An astronaut riding an elephant"
        start = time.perf_counter()
        out = pipe(prompt=target, source_prompt=source, image=before, num_inference_steps=steps, strength=strength,
                   generator=torch.Generator().manual_seed(seed))
        total = time.perf_counter() - start
    out.images[0].save(out_dir / "after.png")
    log(f"edited {source!r} -> {target!r}: {int(steps * strength)} steps at {size}x{size} on {device}")
    log(f"  load + build   {load_s * 1e3:8.1f} ms")
    for stage, seconds in out.timings.items():
        log(f"  {stage:<14} {seconds * 1e3:8.1f} ms")
    log(f"  total edit     {total * 1e3:8.1f} ms")
    log(f"wrote {out_dir / 'before.png'} and {out_dir / 'after.png'}")
    return out
