"""The one image loader of unimp: PIL image, file path, bytes or a `datasets.Image` cell -> an RGB PIL image.

Checkpoint file: the processor and the image-generation pipeline use it, so it imports PIL and the standard library
only.
"""

import io
import os
import warnings
from collections.abc import Mapping

from PIL import Image

# Modes whose values are not 0-255 levels: PIL's convert("RGB") clips them (16-bit white, float black).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(picture: Image.Image) -> Image.Image:
    """RGB with 16-bit and float levels scaled to 0-255 (PIL's own convert clips them to 255 or 0).

    16-bit modes map 0-65535 to 0-255; a 32-bit integer image is taken as 16-bit when its values fit, else scaled
    by its maximum; a float image is taken as 0-1 when its values fit, else as 0-255 when they fit, else scaled
    to its range.
    """
    if picture.mode not in _WIDE_MODES:
        return picture.convert("RGB")
    mode = picture.mode
    if mode.startswith("I;16"):
        picture = picture.convert("I")
    low, high = picture.getextrema()
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        scale, offset = 255.0 / 65535.0, 0.0
    elif mode == "F" and low >= 0.0 and high <= 1.0:
        scale, offset = 255.0, 0.0
    elif low >= 0 and high <= 255:
        scale, offset = 1.0, 0.0
    else:  # an unknown range: stretch it to 0-255
        scale = 255.0 / (high - low) if high > low else 0.0
        offset = -low * scale
    levels = picture.convert("F").point(lambda value: value * scale + offset + 0.5)  # F -> L truncates: round
    return levels.convert("L").convert("RGB")


def load_image(image, size: int | None = None, *, draft: bool = False) -> Image.Image | None:
    """Decode `image` to RGB, bicubic-resized to `size`² when given (no aspect-preserving crop, reference §1.2).

    Args:
        image: a PIL image, a path (str or `os.PathLike`), encoded bytes, an undecoded `datasets.Image` cell
            (`{"path", "bytes"}`) or None.
        size: the side of the square output; None keeps the decoded size.
        draft: let the JPEG decoder downscale in the DCT domain to about 2·`size` first (faster on large JPEGs; the
            pixels then differ slightly from a full decode).

    Returns:
        the RGB image (16-bit and float levels scaled to 0-255), or None when `image` is None or does not decode;
        a decompression bomb (more pixels than PIL's `Image.MAX_IMAGE_PIXELS` allows) also gives None, with a
        warning (the caller decides whether None is an error).

    Raises:
        ValueError: `image` is of another type.
    """
    if image is None:
        return None
    if isinstance(image, Mapping):  # an undecoded datasets.Image cell
        image = image.get("path") or image.get("bytes")
    if not isinstance(image, (Image.Image, str, os.PathLike, bytes, bytearray)):
        raise ValueError(f"an image must be a PIL image, a file path, bytes or None, got {type(image).__name__}")
    opened = not isinstance(image, Image.Image)
    source = image if isinstance(image, (str, os.PathLike)) else f"a {type(image).__name__} image"
    try:
        picture = Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) if opened else image
    except Image.DecompressionBombError as error:  # over 2x the limit: PIL refuses to open it
        warnings.warn(f"{source}: not decoded, a possible decompression bomb ({error}); the item is image-less",
                      UserWarning, stacklevel=2)
        return None
    except (OSError, ValueError, SyntaxError):
        return None
    limit = Image.MAX_IMAGE_PIXELS
    if opened and limit is not None and picture.width * picture.height > limit:  # 1-2x: PIL would only warn
        warnings.warn(f"{source}: not decoded, a possible decompression bomb ({picture.width}x{picture.height} "
                      f"pixels, over PIL's Image.MAX_IMAGE_PIXELS = {limit}); the item is image-less",
                      UserWarning, stacklevel=2)
        picture.close()
        return None
    try:
        if draft and size is not None:
            picture.draft("RGB", (2 * size, 2 * size))
        rgb = _to_rgb(picture)
        return rgb.resize((size, size), Image.Resampling.BICUBIC) if size is not None else rgb
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    finally:
        if opened:
            picture.close()


__all__ = ["load_image"]
