"""Image I/O: user images in, (B, 3, H, W) tensors in [-1, 1] out; latents decoded back to PIL / numpy / torch.

Accepted inputs, like diffusers: a PIL image; a numpy array (H, W), (H, W, C) or (B, H, W, C), uint8 in [0, 255]
or float in [0, 1]; a torch tensor (C, H, W) or (B, C, H, W), uint8 in [0, 255] or float in [0, 1] (or [-1, 1],
which diffusers also accepts); or a list of any of these, all the same size. Grayscale becomes RGB, an alpha
channel is dropped.

Sizes that are not a multiple of the VAE factor (8) are resized *down* to the nearest multiple, as diffusers
does (PIL: Lanczos; arrays and tensors: nearest), so the same input gives the same pixels in both.

Images over :data:`MAX_PIXELS` are refused before they are decoded or converted (:class:`ImageTooLarge`): a small
compressed file can declare a size that takes gigabytes to decode, and the denoiser's memory grows with the area.
"""

import io

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

MAX_PIXELS = 4096 * 4096  # the library's limit per image; rtcore serve has its own, smaller --max-pixels
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # never a format PIL decodes with an outside program
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit greyscale PNG/TIFF open in one of these


class ImageTooLarge(ValueError):
    """An image with more pixels than the limit in force (``rtcore serve`` answers it with 413)."""


def check_pixels(width, height, max_pixels, name):
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels} "
                            "pixels; resize the image first")


def _pil_to_rgb(image, name):
    """Any PIL mode → RGB: alpha dropped, greyscale repeated, 16-bit greyscale scaled (not clipped) to 8 bits."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = PIL.Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
    elif image.mode == "F":
        raise TypeError(f"{name}: 32-bit float PIL images ('F') have no agreed range; pass a float numpy array in "
                        "[0, 1] instead")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"{name}: PIL image mode {image.mode!r} cannot be converted to RGB ({err})") from None


def _bad_dtype(kind, dtype, name):
    raise TypeError(f"{name}: {kind} images must be uint8 (0..255) or floating point (0..1), got dtype {dtype}")


def _to_tensor(image, name, max_pixels):
    """One user image (or batch) → (float32 tensor (B, C, H, W), None), or (None, RGB PIL image) for PIL input."""
    if isinstance(image, PIL.Image.Image):
        check_pixels(*image.size, max_pixels, name)  # before convert(), which decodes a lazily opened file
        return None, _pil_to_rgb(image, name)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[None, :, :, None]
        elif arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise ValueError(f"{name}: numpy images must be (H, W), (H, W, C) or (B, H, W, C); got shape {image.shape}")
        if arr.size == 0:
            raise ValueError(f"{name}: the numpy array is empty (shape {image.shape})")
        check_pixels(arr.shape[2], arr.shape[1], max_pixels, name)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        else:
            _bad_dtype("numpy", arr.dtype, name)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))), None
    if torch.is_tensor(image):
        if image.ndim not in (3, 4):
            raise ValueError(f"{name}: tensor images must be (C, H, W) or (B, C, H, W); got shape {tuple(image.shape)}")
        if image.numel() == 0:
            raise ValueError(f"{name}: the tensor is empty (shape {tuple(image.shape)})")
        check_pixels(image.shape[-1], image.shape[-2], max_pixels, name)
        if image.dtype == torch.uint8:  # what torchvision.io.read_image returns
            t = image.detach().to("cpu", torch.float32) / 255.0
        elif image.dtype.is_floating_point:
            t = image.detach().to("cpu", torch.float32)
        else:
            _bad_dtype("tensor", image.dtype, name)
        return (t[None] if t.ndim == 3 else t), None
    raise TypeError(f"{name} must be a PIL image, numpy array, torch tensor or a list of them; "
                    f"got {type(image).__name__}")


def _fix_channels(t, name):
    c = t.shape[1]
    if c == 1:
        return t.expand(-1, 3, -1, -1)
    if c == 4:  # RGBA: drop alpha
        return t[:, :3]
    if c != 3:
        raise ValueError(f"{name}: expected 1, 3 or 4 channels, got {c} (tensors are channels-first (B, C, H, W))")
    return t


def preprocess(image, scale_factor=8, name="image", max_pixels=None):
    """User image(s) → float32 CPU tensor (B, 3, H, W) in [-1, 1], H and W multiples of ``scale_factor``.
    ``max_pixels`` per image defaults to :data:`MAX_PIXELS`."""
    if image is None:
        raise ValueError(f"{name} is required: pass a PIL image, numpy array or torch tensor")
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError(f"{name} is an empty list")
    tensors = []
    for item in items:
        t, pil = _to_tensor(item, name, max_pixels)
        if pil is not None:
            w, h = (s - s % scale_factor for s in pil.size)
            if w == 0 or h == 0:
                raise ValueError(f"{name}: size {pil.size} is smaller than {scale_factor} pixels")
            if (w, h) != pil.size:
                pil = pil.resize((w, h), resample=PIL.Image.LANCZOS)
            t = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        else:
            t = _fix_channels(t, name)
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            if t.min() < 0:
                if t.min() < -1.0 - 1e-6 or t.max() > 1.0 + 1e-6:
                    raise ValueError(f"{name}: float values must lie in [0, 1] (or [-1, 1]); got "
                                     f"[{t.min().item():.3g}, {t.max().item():.3g}]")
                t = (t + 1) / 2  # diffusers accepts [-1, 1] tensors as already normalised
            elif t.max() > 1.0 + 1e-6:
                raise ValueError(f"{name}: float values must lie in [0, 1]; got max {t.max().item():.3g} "
                                 "(pass uint8 arrays for 0..255)")
            h, w = t.shape[-2:]
            h8, w8 = h - h % scale_factor, w - w % scale_factor
            if h8 == 0 or w8 == 0:
                raise ValueError(f"{name}: size {w}x{h} is smaller than {scale_factor} pixels")
            if (h8, w8) != (h, w):
                t = F.interpolate(t, size=(h8, w8))
        tensors.append(t)
    if len({tuple(t.shape[-2:]) for t in tensors}) > 1:
        sizes = sorted({f"{t.shape[-1]}x{t.shape[-2]}" for t in tensors})
        raise ValueError(f"{name}: all images in a batch must have the same size after rounding down to a multiple "
                         f"of {scale_factor}; got {sizes}")
    return torch.cat(tensors).contiguous() * 2.0 - 1.0


def postprocess(image, output_type):
    """Decoded image (B, 3, H, W) in about [-1, 1] → PIL list | numpy (B, H, W, 3) | torch (B, 3, H, W), in [0, 1]."""
    image = (image.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return image
    arr = image.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return arr
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def open_image(source, max_pixels=None, name="image"):
    """An image file (a path, or its bytes) → RGB PIL image, its size checked against ``max_pixels`` (default
    :data:`MAX_PIXELS`) from the header, before any pixel is decoded. Errors name ``name`` and what is accepted."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    what = "the uploaded file" if isinstance(source, (bytes, bytearray)) else f"file {source}"
    try:
        image = PIL.Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                               formats=IMAGE_FORMATS)  # reads the header only
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: image file not found: {source}") from None
    except PIL.Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{name}: {what} declares too many pixels ({err})") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ValueError(f"{name}: {what} is not an image PIL can read as {'/'.join(IMAGE_FORMATS)}") from None
    with image:
        check_pixels(*image.size, max_pixels, name)
        try:
            image.load()
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise ValueError(f"{name}: {what} is damaged or truncated ({err})") from None
        return _pil_to_rgb(image, name)


def load_image(path, max_pixels=None):
    """Reads an image file as RGB (a clear FileNotFoundError / ValueError instead of PIL's traceback)."""
    return open_image(path, max_pixels)
