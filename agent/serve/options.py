"""The server's limits and switches, checked before anything heavy loads (``agent-cli serve``)."""

from __future__ import annotations

import math

from dataclasses import dataclass, fields
from typing import Optional

from tools.errors import UserInputError
from tools.images import SERVER_MAX_IMAGE_PIXELS

from ..configuration import STRATEGIES

DEFAULT_BATCH_WAIT_MS = 5.0


@dataclass(frozen=True)
class ServerOptions:
    """The server's limits and switches (``agent-cli serve`` flags of the same names)."""

    strategies: tuple[str, ...] = STRATEGIES  # what a request may ask for
    max_upload_bytes: int = 20 * 2**20  # the whole request body, and a fetched image
    max_queue: int = 32  # waiting queries per device before 503
    api_key: Optional[str] = None  # required in X-API-Key or "Authorization: Bearer" when set
    image_urls: bool = False  # fetch image_url (public addresses only)
    url_timeout: float = 10.0  # seconds for a whole fetch
    # Host headers answered (DNS rebinding); None answers every one (agent-cli serve passes its own).
    allowed_hosts: Optional[tuple[str, ...]] = None
    # Web pages (origins) whose forms and scripts may post; other origins get 403.
    cors_origins: tuple[str, ...] = ()
    request_timeout: float = 300.0  # seconds from arrival to answer before 504
    max_image_pixels: int = SERVER_MAX_IMAGE_PIXELS  # refused before decoding (the agent's own limit also holds)
    max_decoded_bytes: int = 1 << 30  # decoded images of requests in flight, at most
    # Slow clients: seconds for a request's headers and for its body, idle keep-alive seconds,
    # open connections at most (see limits.py).
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive: float = 5.0
    max_connections: int = 256
    # A device's batch waits this long after its first query for more (up to batch_size).
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS

    def __post_init__(self) -> None:
        for item in fields(self):  # nan passes every comparison below: refused first, by name
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UserInputError(f"{item.name} must be a finite number, got {value}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            # An empty key would switch authentication off while /healthz says a key is required.
            raise UserInputError("api_key is empty; give a key, or None to serve without one")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable()):
            # HTTP headers carry ASCII: a client could never send any other key.
            raise UserInputError("api_key must be printable ASCII (it travels in an HTTP header)")
        unknown = [name for name in self.strategies if name not in STRATEGIES]
        if unknown or not self.strategies:
            raise UserInputError(f"strategies must be some of {', '.join(STRATEGIES)}, got {list(self.strategies)}")
        if self.max_upload_bytes < 1 or self.max_queue < 0 or self.url_timeout <= 0:
            raise UserInputError("max_upload_bytes and url_timeout must be positive, max_queue not negative")
        if self.request_timeout <= 0 or self.max_image_pixels < 1 or self.max_decoded_bytes < 1:
            raise UserInputError("request_timeout, max_image_pixels and max_decoded_bytes must be positive")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise UserInputError(f"batch_wait_ms must lie in [0, 10000], got {self.batch_wait_ms}")
        if min(self.header_timeout, self.body_timeout, self.keep_alive) <= 0 or self.max_connections < 1:
            raise UserInputError("header, body and keep-alive timeouts and max_connections must be positive")
