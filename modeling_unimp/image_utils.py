"""The one image loader of unimp: PIL image, file path, bytes or a `datasets.Image` cell -> an RGB PIL image.

Checkpoint file: the processor and the image-generation pipeline use it, so it imports PIL and the standard library
only.
"""

import io
import os
from collections.abc import Mapping

from PIL import Image


def load_image(image, size: int | None = None, *, draft: bool = False) -> Image.Image | None:
    """Decode `image` to RGB, bicubic-resized to `size`² when given (no aspect-preserving crop, reference §1.2).

    Args:
        image: a PIL image, a path (str or `os.PathLike`), encoded bytes, an undecoded `datasets.Image` cell
            (`{"path", "bytes"}`) or None.
        size: the side of the square output; None keeps the decoded size.
        draft: let the JPEG decoder downscale in the DCT domain to about 2·`size` first (faster on large JPEGs; the
            pixels then differ slightly from a full decode).

    Returns:
        the RGB image, or None when `image` is None or does not decode (the caller decides whether that is an error).

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
    try:
        picture = Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) if opened else image
    except (OSError, ValueError):
        return None
    try:
        if draft and size is not None:
            picture.draft("RGB", (2 * size, 2 * size))
        rgb = picture.convert("RGB")
        return rgb.resize((size, size), Image.Resampling.BICUBIC) if size is not None else rgb
    except (OSError, ValueError):
        return None
    finally:
        if opened:
            picture.close()


__all__ = ["load_image"]
