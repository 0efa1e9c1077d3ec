"""The shapes world: a procedural dataset for rtcore's shipped model (rtcore-shapes) and the reader that judges edits.

A scene is one shape (circle, square, triangle) of one colour (red, green, blue, yellow) at a random position, size
and rotation, on a background (white, black, or a soft low-saturation gradient), 64×64 RGB, with the caption
"a red circle on a white background". Scenes are code, not files: ``scene(seed)`` is reproducible, and the
train and held-out sets are disjoint seed ranges (``TRAIN_SEEDS``, ``HELD_OUT_SEEDS``).

``read(image)`` recovers (colour, shape, background, mask) from pixels alone. The quality benchmark
(rtcore.bench.quality) and the text-to-image acceptance use it on generated and edited images; the dataset's own
ground truth (``Scene``) is what it is checked against. The reader relies on the world's one convention: objects
are saturated, backgrounds are not.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import PIL.Image
import PIL.ImageDraw

SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 175, 60), "blue": (45, 75, 225), "yellow": (235, 205, 35)}
HUES = {"red": 0.0, "yellow": 50.0, "green": 128.0, "blue": 227.0}  # degrees, of COLOURS (before jitter)
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ("white", "black", "gradient")
TRAIN_SEEDS = range(0, 1_000_000)
HELD_OUT_SEEDS = range(1_000_000, 1_100_000)
_SUPERSAMPLE = 4  # shapes are drawn at 4× and box-filtered down: anti-aliased edges, like a photo's


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # circumradius, pixels
    angle: float  # degrees
    tint: tuple  # the object's RGB after jitter
    gradient: tuple  # (rgb0, rgb1, direction in degrees) of a gradient background

    @property
    def caption(self):
        return caption(self.colour, self.shape, self.background)


def caption(colour, shape, background):
    return f"a {colour} {shape} on a {background} background"


def scene(seed) -> Scene:
    """The scene of one seed: every attribute drawn from its own numpy generator, so it is reproducible anywhere."""
    rng = np.random.default_rng(seed)
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    background = str(rng.choice(BACKGROUNDS))
    radius = float(rng.uniform(11.0, 19.0))
    margin = radius + 2.0
    cx, cy = (float(v) for v in rng.uniform(margin, SIZE - margin, size=2))
    angle = float(rng.uniform(0.0, 360.0))
    tint = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLOURS[colour])
    # a soft gradient: two greys with a faint tint each (saturation stays low, so objects stand out)
    grey = rng.uniform(70, 190, size=2)
    tints = rng.uniform(-18, 18, size=(2, 3))
    ends = tuple(tuple(int(np.clip(g + t, 0, 255)) for t in row) for g, row in zip(grey, tints))
    gradient = (ends[0], ends[1], float(rng.uniform(0.0, 360.0)))
    return Scene(colour, shape, background, cx, cy, radius, angle, tint, gradient)


def with_attribute(s: Scene, attribute, value) -> Scene:
    """The same scene with one attribute changed (the ground truth of an edit)."""
    if attribute not in ("colour", "shape", "background"):
        raise ValueError(f"attribute must be 'colour', 'shape' or 'background', got {attribute!r}")
    changes = {attribute: value}
    if attribute == "colour":
        changes["tint"] = COLOURS[value]
    return replace(s, **changes)


def _polygon(shape, cx, cy, radius, angle):
    corners = {"square": 4, "triangle": 3}[shape]
    start = math.radians(angle)
    return [(cx + radius * math.cos(start + 2 * math.pi * k / corners),
             cy + radius * math.sin(start + 2 * math.pi * k / corners)) for k in range(corners)]


def shape_mask(shape, cx, cy, radius, angle, size=SIZE):
    """Coverage in [0, 1] (size, size) of a shape: anti-aliased by supersampling."""
    s = _SUPERSAMPLE
    canvas = PIL.Image.new("L", (size * s, size * s), 0)
    draw = PIL.ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([(cx - radius) * s, (cy - radius) * s, (cx + radius) * s, (cy + radius) * s], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, radius, angle)], fill=255)
    small = canvas.resize((size, size), PIL.Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(s: Scene, size=SIZE):
    if s.background == "white":
        return np.full((size, size, 3), 245.0, dtype=np.float32)
    if s.background == "black":
        return np.full((size, size, 3), 12.0, dtype=np.float32)
    c0, c1, direction = s.gradient
    d = math.radians(direction)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    t = ((x - size / 2) * math.cos(d) + (y - size / 2) * math.sin(d)) / (size * 0.71) + 0.5
    t = np.clip(t, 0.0, 1.0)[..., None]
    return (1 - t) * np.asarray(c0, np.float32) + t * np.asarray(c1, np.float32)


def _uint8(image):
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(s: Scene):
    """(image uint8 (64, 64, 3), object coverage float (64, 64)) of a scene."""
    coverage = shape_mask(s.shape, s.cx, s.cy, s.radius, s.angle)
    a = coverage[..., None]
    image = (1 - a) * _background(s) + a * np.asarray(s.tint, np.float32)
    return _uint8(image), coverage


def image(s: Scene) -> PIL.Image.Image:
    return PIL.Image.fromarray(render(s)[0])


def pixels(scenes, objects=True):
    """The scenes as a float tensor (N, 3, 64, 64) in [-1, 1]: what a VAE takes (``objects=False``: their
    backgrounds alone)."""
    import torch

    images = np.stack([render(s)[0] if objects else _uint8(_background(s)) for s in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def held_out(n, start=0):
    """The first n held-out scenes (after ``start``)."""
    return [scene(seed) for seed in HELD_OUT_SEEDS[start:start + n]]


# ---------------------------------------------------------------- the reader: attributes from pixels alone


@dataclass
class Reading:
    colour: str  # None when no object is found
    shape: str
    background: str
    mask: np.ndarray  # bool (64, 64): the object's pixels
    centre: tuple  # (x, y) of the mask, or None


def _hsv(rgb):
    """Hue (degrees), saturation and value of uint8 RGB pixels (..., 3), vectorised."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(-1), x.min(-1)
    delta = np.maximum(mx - mn, 1e-6)
    hue = np.where(mx == r, (g - b) / delta % 6.0, np.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0))
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return hue * 60.0, sat, mx


def read_background(rgb, mask=None):
    """white / black / gradient from the 3-pixel border ring (object pixels left out)."""
    ring = np.zeros(rgb.shape[:2], bool)
    ring[:3], ring[-3:], ring[:, :3], ring[:, -3:] = True, True, True, True
    if mask is not None and (ring & ~mask).sum() > 40:
        ring &= ~mask
    border = rgb[ring].astype(np.float32)
    mean = border.mean()
    if mean > 215:
        return "white"
    if mean < 40:
        return "black"
    return "gradient"


def _hue_name(hues):
    """The colour name nearest to the circular mean of ``hues`` (degrees)."""
    angle = math.degrees(math.atan2(np.sin(np.radians(hues)).mean(), np.cos(np.radians(hues)).mean())) % 360.0
    return min(HUES, key=lambda name: min(abs(angle - HUES[name]), 360 - abs(angle - HUES[name])))


def iou(a, b):
    """Intersection over union of two bool masks (0 when both are empty)."""
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def read_shape(mask):
    """(shape, IoU): the template (circle, square, triangle of the mask's area, at its centroid, best rotation)
    that overlaps the mask most."""
    area = mask.sum()
    if area < 12:
        return None, 0.0
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    best = (None, -1.0)
    # circumradius giving the mask's area: circle πr², square 2r², triangle (3√3/4)r²
    templates = (("circle", math.pi, 1), ("square", 2.0, 90), ("triangle", 3 * math.sqrt(3) / 4, 120))
    for shape, area_per_r2, period in templates:
        r = math.sqrt(area / area_per_r2)
        for angle in range(0, period, 6):
            template = shape_mask(shape, cx, cy, r, angle) > 0.5
            overlap = iou(mask, template)
            if overlap > best[1]:
                best = (shape, overlap)
    return best


def dilate(mask, r):
    """``mask`` grown by ``r`` pixels (square neighbourhood); pixels beyond the border count as outside."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def read(rgb) -> Reading:
    """Reads colour, shape and background of a 64×64 image (uint8 (H, W, 3) array or PIL image)."""
    rgb = np.asarray(rgb.convert("RGB") if isinstance(rgb, PIL.Image.Image) else rgb)
    hue, sat, value = _hsv(rgb)
    mask = (sat > 0.45) & (value > 0.3)  # the object: saturated, not too dark (backgrounds are never saturated)
    background = read_background(rgb, mask)
    if mask.sum() < 12:
        return Reading(None, None, background, mask, None)
    ys, xs = np.nonzero(mask)
    return Reading(_hue_name(hue[mask]), read_shape(mask)[0], background, mask, (xs.mean(), ys.mean()))
