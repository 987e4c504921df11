"""What a request's image goes through before a device sees it: the upload read or the URL
fetched (in a pool of its own), its decoded size reserved against the server's memory bound,
then decoding beside the event loop."""

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import AsyncIterator

from fastapi import UploadFile
from PIL import Image

from tools.errors import UserInputError
from tools.images import load_image

from .fetch import ImageTooLargeError, UrlFetcher
from .options import ServerOptions
from .workers import QueueFull

# Bytes an image takes while it is decoded and converted (e.g. greyscale plus its RGB copy).
DECODED_BYTES_PER_PIXEL = 4
DECODE_WORKERS = 2  # images decoded at once; the rest wait their turn
FETCH_WORKERS = 4  # image URLs fetched at once, in a pool of their own


class ImageIntake:
    """Turns a request's upload or ``image_url`` into a decoded image, within the server's limits."""

    def __init__(self, options: ServerOptions, max_pixels: int) -> None:
        self.fetcher = UrlFetcher(options.max_upload_bytes, options.url_timeout) if options.image_urls else None
        self.url_timeout = options.url_timeout
        self.max_pixels = max_pixels
        self.fetches = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="rex-fetch")
        self.decodes = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="rex-decode")
        self.budget = DecodedBytes(options.max_decoded_bytes)

    @asynccontextmanager
    async def picture(self, image: UploadFile | None, image_url: str | None) -> AsyncIterator[Image.Image]:
        """The decoded image, its memory reserved until the block (the query) ends."""
        data = await _image_bytes(image, image_url, self.fetcher, self.fetches, self.url_timeout)
        with self.budget.reserve(_decoded_size(data)):
            # Decoding runs beside the event loop, not on a device queue.
            yield await asyncio.get_running_loop().run_in_executor(self.decodes, load_image, data, self.max_pixels)

    def close(self) -> None:
        self.fetches.shutdown(wait=False, cancel_futures=True)
        self.decodes.shutdown(wait=False, cancel_futures=True)


class DecodedBytes:
    """The decoded size of the images of requests in flight, kept under ``limit`` (on the event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0

    @contextmanager
    def reserve(self, size: int):
        if size > self.limit:
            raise ImageTooLargeError(f"the image decodes to {size / 2**20:,.0f} MB, over the server's limit of "
                                     f"{self.limit / 2**20:,.0f} MB")
        if self.used + size > self.limit:
            raise QueueFull(f"{self.used / 2**20:,.0f} MB of images are being decoded or answered")
        self.used += size
        try:
            yield
        finally:
            self.used -= size


def _decoded_size(data: bytes) -> int:
    """Bytes ``data`` will take once decoded, read from its header alone (0 when it is no image:
    decoding then says why)."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:  # noqa: BLE001 - not an image; load_image gives the one-line reason
        return 0
    return width * height * DECODED_BYTES_PER_PIXEL


async def _image_bytes(image: UploadFile | None, image_url: str | None, fetcher: UrlFetcher | None,
                       fetches: ThreadPoolExecutor, timeout: float) -> bytes:
    """The encoded image of a request: the uploaded file, or the fetched ``image_url`` (in the
    fetch pool, within ``timeout`` seconds from now, waiting for a free fetcher included)."""
    if (image is None) == (not image_url):
        raise UserInputError("send either an image file or an image_url")
    if image is not None:
        return await image.read()
    if fetcher is None:
        raise UserInputError("this server does not fetch image URLs (start it with --allow-image-urls); upload the file")
    deadline = time.monotonic() + timeout
    return await asyncio.get_running_loop().run_in_executor(fetches, fetcher.fetch, image_url, deadline)
