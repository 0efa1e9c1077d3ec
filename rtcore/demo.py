"""``rtcore demo``: a real edit, offline, with the model that ships with rtcore (rtcore-shapes).

A held-out scene of the shapes world (rtcore.shapes) is encoded once and edited three ways: its colour, its shape
and its background. The demo writes a before/after grid (grid.png) and each image, and prints the time of each
stage. ``sample_image`` is the drawn scene the tests use with the tiny random checkpoint.
"""

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


def demo_edits(scene):
    """(label, target prompt) of the three edits of a scene: the next colour, the next shape, the next background."""
    from rtcore import shapes

    def following(values, value):
        values = list(values)
        return values[(values.index(value) + 1) % len(values)]

    colour = following(shapes.COLOURS, scene.colour)
    shape = following(shapes.SHAPES, scene.shape)
    background = following(shapes.BACKGROUNDS, scene.background)
    return [(f"colour: {colour}", shapes.caption(colour, scene.shape, scene.background)),
            (f"shape: {shape}", shapes.caption(scene.colour, shape, scene.background)),
            (f"background: {background}", shapes.caption(scene.colour, scene.shape, background))]


def grid(images, labels, scale=4):
    """Images side by side, each enlarged ``scale``× (nearest: the pixels as they are), with a label under each."""
    w, h = images[0].width * scale, images[0].height * scale
    out = PIL.Image.new("RGB", (w * len(images), h + 18), "white")
    draw = PIL.ImageDraw.Draw(out)
    for k, (image, label) in enumerate(zip(images, labels)):
        out.paste(image.resize((w, h), PIL.Image.Resampling.NEAREST), (k * w, 0))
        draw.text((k * w + 4, h + 3), label, fill="black")
    return out


def run_demo(out_dir, steps=50, strength=0.6, scene=0, seed=0, device="cpu", checkpoint="rtcore-shapes",
             log=print):
    """Edits held-out scene number ``scene`` of the shapes world three ways with ``checkpoint`` (default: the
    shipped rtcore-shapes) and writes before.png, one PNG per edit and grid.png in ``out_dir``."""
    import torch

    from rtcore import CycleDiffusion, shapes

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = CycleDiffusion.from_pretrained(checkpoint, device=device)
    pipe.set_progress_bar_config(disable=True)  # the demo prints each stage's time instead
    load_s = time.perf_counter() - start
    source = shapes.held_out(1, start=scene)[0]
    before = shapes.image(source)
    edits = demo_edits(source)
    start = time.perf_counter()
    encoded = pipe.encode(image=before, source_prompt=source.caption, strength=strength, num_inference_steps=steps,
                          generator=torch.Generator().manual_seed(seed))
    encode_s = time.perf_counter() - start
    out = pipe.edit(encoded, prompt=[prompt for _, prompt in edits])  # all three targets share one encoding
    total = time.perf_counter() - start
    before.save(out_dir / "before.png")
    for (label, _), image in zip(edits, out.images):
        image.save(out_dir / f"{label.split(':')[0]}.png")
    grid([before, *out.images], ["before", *(label for label, _ in edits)]).save(out_dir / "grid.png")
    log(f"edited {source.caption!r} three ways ({int(steps * strength)} steps at "
        f"{before.width}x{before.height} on {device}):")
    for label, prompt in edits:
        log(f"  {label:<20} -> {prompt!r}")
    log(f"  load           {load_s * 1e3:8.1f} ms")
    log(f"  encode         {encode_s * 1e3:8.1f} ms  (VAE encode and the source half of the loop, once)")
    for name, seconds in out.timings.items():
        log(f"  edit {name:<9} {seconds * 1e3:8.1f} ms")
    log(f"  total edit     {total * 1e3:8.1f} ms")
    log(f"wrote {out_dir / 'grid.png'} (before | colour | shape | background)")
    return out
