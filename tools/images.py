"""Turning what users pass as an image (path, PIL image, numpy array) into an RGB PIL image."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

ImageInput = Union[str, Path, Image.Image, np.ndarray]


def load_image(source: ImageInput) -> Image.Image:
    """Return ``source`` as an RGB ``PIL.Image`` with EXIF orientation applied.

    Paths are opened and fully decoded here, so a corrupt file fails at once with an
    ``ImageLoadError`` naming it. Arrays must be ``(H, W)``, ``(H, W, 3)`` or
    ``(H, W, 4)`` ``uint8`` (RGB order).
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (str, Path)):
        image = _open(Path(source))
    else:
        raise ImageLoadError(f"cannot read an image from a {type(source).__name__}; pass a path, PIL image or array")
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"image has zero size ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({error})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageLoadError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(array)
    raise ImageLoadError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
