"""Turning what users pass as an image (path, PIL image, numpy array) into an RGB PIL image."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

# bytes: an encoded file (PNG, JPEG, ...) held in memory, e.g. an upload.
ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
_ORIENTATION = 0x0112  # the EXIF tag

# Files with more pixels are refused before decoding (decompression bombs). The default
# is PIL's own warning limit; PIL itself refuses files over twice its
# ``Image.MAX_IMAGE_PIXELS``, so raise that too to go beyond 179 megapixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
# agent-cli serve's default: lower, since a server decodes what strangers send.
SERVER_MAX_IMAGE_PIXELS = 40_000_000
# The smallest MLLM pixel budget (min_pixels / max_pixels) worth asking for: one merged 28x28
# patch of the Qwen families, below which their processors refuse or ignore the budget.
MIN_PIXEL_BUDGET = 28 * 28
# The largest: Qwen2-VL's own ceiling, 16,384 merged patches (16k visual tokens an image); and the
# most InternVL tiles (its releases use 6 to 12; the tile-grid search grows with the square).
MAX_PIXEL_BUDGET = 16384 * 28 * 28
MAX_TILES = 64
# Longer side over shorter side: the Qwen VL processors' own limit; beyond it Grounding DINO's
# resize leaves a side of 0 pixels. No camera or panorama comes near it.
MAX_ASPECT_RATIO = 200


def load_image(source: ImageInput, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, *,
               orientation: bool = True) -> Image.Image:
    """Return ``source`` as an RGB ``PIL.Image`` with EXIF orientation applied (``orientation=False``:
    the pixels as stored, in an image that carries no orientation any more).

    Paths are opened and fully decoded here, so a corrupt file fails at once with an
    ``ImageLoadError`` naming it; a file of more than ``max_pixels`` pixels is refused
    before decoding (``None``: no limit). ``bytes`` are an encoded file held in memory
    (an upload) and get the same checks. Every PIL mode (L, LA, P, RGBA, CMYK, I;16,
    ...) is converted to RGB. Arrays must be ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``
    ``uint8`` (RGB order). An image more than ``MAX_ASPECT_RATIO`` times longer than it is
    wide (or the other way round) is refused.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (str, Path)):
        image = _open(Path(source), max_pixels)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _decode(io.BytesIO(source), "image data", len(source), max_pixels)
    else:
        raise ImageLoadError(
            f"cannot read an image from a {type(source).__name__}; pass a path, bytes, PIL image or array"
        )
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"image has zero size ({image.width}x{image.height})")
    check_aspect_ratio(image.size)
    # exif_transpose copies even when there is nothing to rotate; images passed along a
    # pipeline (already loaded here) come back unchanged, the same object.
    if _orientation_of(image) != 1:
        if not orientation:  # a copy without metadata: nothing downstream can rotate it
            return Image.fromarray(np.asarray(image if image.mode == "RGB" else _to_rgb(image)))
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else _to_rgb(image)


def check_pixel_budget(min_pixels: int | None, max_pixels: int | None, max_patches: int | None = None) -> None:
    """``UserInputError`` for an MLLM image budget no model can use: a budget outside
    [``MIN_PIXEL_BUDGET``, ``MAX_PIXEL_BUDGET``], ``min_pixels`` over ``max_pixels``, or a tile
    count outside [1, ``MAX_TILES``]."""
    from .errors import UserInputError

    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and not MIN_PIXEL_BUDGET <= value <= MAX_PIXEL_BUDGET:
            raise UserInputError(f"{name} must lie in [{MIN_PIXEL_BUDGET}, {MAX_PIXEL_BUDGET}] (one 28x28 patch to "
                                 f"16,384 of them), got {value}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise UserInputError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    if max_patches is not None and not 1 <= max_patches <= MAX_TILES:
        raise UserInputError(f"max_patches must lie in [1, {MAX_TILES}], got {max_patches}")


def check_aspect_ratio(size: tuple[int, int]) -> None:
    """``ImageLoadError`` for an image ``(w, h)`` more than ``MAX_ASPECT_RATIO`` times longer one way."""
    if max(size) > MAX_ASPECT_RATIO * min(size):
        raise ImageLoadError(f"image is {size[0]}x{size[1]}, more than {MAX_ASPECT_RATIO} times longer "
                             "one way than the other: no model resizes it sensibly")


def exif_orientation(source: ImageInput) -> int:
    """The EXIF orientation of ``source`` (1: none, or nothing to tell, as for arrays), read from the
    file's header without decoding its pixels."""
    if isinstance(source, Image.Image):
        return _orientation_of(source)
    if not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        return 1
    try:
        if isinstance(source, (str, Path)) and not Path(source).is_file():  # never open a pipe
            return 1
        with _header(source) as opened:
            return _orientation_of(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # load_image reports it
        return 1


def frame_sizes(path: str | Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(w, h)`` of the image file ``path`` as stored and with its EXIF orientation applied (they
    differ when the orientation turns it by 90 degrees), read from its header."""
    _file_size(Path(path))
    try:
        with _header(path) as opened:
            size, orientation = opened.size, _orientation_of(opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        load_image(path)  # says why in one line (ImageLoadError)
        raise ImageLoadError(f"{path}: its header cannot be read") from None
    return size, (size[::-1] if orientation in _QUARTER_TURNS else size)


def _header(source) -> Image.Image:
    """``source`` opened without decoding its pixels, PIL's decompression-bomb warning silenced
    (the pixel limit is ``load_image``'s to apply)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)


# EXIF orientations that swap width and height (transposed, rotated by 90 or 270 degrees).
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation_of(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(_ORIENTATION, 1))
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


# Integer modes wider than 8 bits: PIL's convert("RGB") clips them at 255 instead of scaling.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    """``image`` in RGB; 16-bit greyscale (and 32-bit integer images holding 16-bit values, as
    PIL opens some 16-bit PNGs) is scaled from 0..65535 to 0..255, not clipped."""
    if image.mode not in _WIDE_INTEGER_MODES:
        return image.convert("RGB")
    values = np.asarray(image).astype(np.float64)
    if image.mode == "I" and values.size and values.max() <= 255 and values.min() >= 0:
        scaled = values  # already 8-bit values in a 32-bit image
    else:
        scaled = values.clip(0, 65535) / 257.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L").convert("RGB")


def _open(path: Path, max_pixels: int | None) -> Image.Image:
    return _decode(path, str(path), _file_size(path), max_pixels)


def _file_size(path: Path) -> int:
    """The size of the image file ``path``; ``ImageLoadError`` when it is none that can be read."""
    try:
        if not path.exists():
            raise ImageLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ImageLoadError(f"{path}: is a directory, not an image")
        if not path.is_file():  # a pipe or device: opening it could wait forever
            raise ImageLoadError(f"{path}: not a regular file, not an image")
        return path.stat().st_size
    except OSError as error:  # e.g. a name over the file system's limit
        raise ImageLoadError(f"{str(path)[:120]}: {error.strerror or error}") from None


def _decode(file: Path | IO[bytes], name: str, size: int, max_pixels: int | None) -> Image.Image:
    """Decode ``file`` (called ``name`` in errors, ``size`` bytes long) whole, after the pixel check."""
    if size == 0:
        raise ImageLoadError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces PIL's decompression-bomb warning and error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as opened:
                pixels = opened.width * opened.height
                if max_pixels is not None and pixels > max_pixels:
                    raise ImageLoadError(
                        f"{name}: {opened.width}x{opened.height} is {pixels:,} pixels, over the limit of "
                        f"{max_pixels:,} (raise max_image_pixels to allow it)"
                    )
                opened.load()
                return opened
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: {error} (PIL.Image.MAX_IMAGE_PIXELS sets that limit)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({error})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ImageLoadError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(array)
    raise ImageLoadError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
