"""Fetching an image by URL for the server, within bounds.

A server that fetches what its clients name can be turned against the network it sits in
(server-side request forgery), so ``UrlFetcher``:

- takes http and https URLs only;
- resolves the host itself and refuses it when any of its addresses is not public
  (loopback, private, link-local, shared, reserved, multicast; IPv4-mapped IPv6 included),
  then connects to the very address it checked, so a second DNS answer cannot differ;
- checks every redirect hop the same way, at most ``max_redirects`` of them;
- stops at ``max_bytes`` (declared or received) and at ``timeout`` seconds for the whole
  fetch (connecting, the response headers, the body, redirects included), however slowly
  the bytes trickle in: a watchdog shuts the socket down at the deadline (looking up the
  host name is bounded by the system resolver's own timeout, not by this one).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urljoin, urlsplit

from tools.errors import UserInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 64 * 1024
MAX_HOST_CHARS = 253  # the DNS limit on a whole name


class ImageFetchError(UserInputError):
    """An image URL that cannot or may not be fetched."""


class ImageTooLargeError(ImageFetchError):
    """An image URL whose content exceeds the size limit."""


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` lies on the public internet (not loopback, private, link-local, ...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class UrlFetcher:
    """``fetch(url) -> bytes`` with the bounds above; ``allow_address`` decides which addresses may be reached."""

    max_bytes: int
    timeout: float = 10.0
    max_redirects: int = 3
    allow_address: Callable[[IPAddress], bool] = is_public_address

    def fetch(self, url: str, deadline: float | None = None) -> bytes:
        """The bytes at ``url``; ``deadline`` (``time.monotonic()``) defaults to ``timeout`` from now."""
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        try:
            for _ in range(self.max_redirects + 1):
                connection, response, sock, watchdog = self._request(url, deadline)
                try:
                    if response.status in REDIRECTS and response.getheader("Location"):
                        url = urljoin(url, response.getheader("Location"))
                        continue
                    if response.status != 200:
                        raise ImageFetchError(f"{url}: the server answered {response.status} {response.reason}")
                    return self._read(url, response, sock, deadline)
                finally:
                    watchdog.cancel()
                    connection.close()
        except (TimeoutError, socket.timeout):
            raise ImageFetchError(f"{url}: no complete answer within {self.timeout:g} s") from None
        except ssl.SSLError as error:
            raise ImageFetchError(f"{url}: TLS failed ({error.reason or error})") from None
        except (OSError, http.client.HTTPException) as error:
            if time.monotonic() >= deadline:  # the watchdog cut the connection
                raise ImageFetchError(f"{url}: no complete answer within {self.timeout:g} s") from None
            raise ImageFetchError(f"{url}: fetch failed ({error or type(error).__name__})") from None
        raise ImageFetchError(f"{url}: more than {self.max_redirects} redirects")

    def _request(self, url: str, deadline: float):
        """The connection, response, socket and watchdog of ``GET url``, the host's address checked first."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as error:  # e.g. "http://[::1/": an unclosed IPv6 literal
            raise ImageFetchError(f"{url[:200]!r}: not a valid URL ({error})") from None
        if parts.scheme not in ("http", "https"):
            raise ImageFetchError(f"{url!r}: only http and https image URLs are fetched")
        if not host:
            raise ImageFetchError(f"{url!r}: no host in the URL")
        if len(host) > MAX_HOST_CHARS:
            raise ImageFetchError(f"{url[:200]!r}...: the host name is longer than {MAX_HOST_CHARS} characters")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageFetchError(f"{url!r}: invalid port") from None
        address = self._checked_address(url, host, port)
        sock = socket.create_connection((str(address), port), timeout=_remaining(deadline))
        # Per-receive timeouts restart with every byte; this one does not.
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, args=(sock,))
        watchdog.daemon = True
        watchdog.start()
        try:
            if parts.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            # The connection is handed the socket to the checked address; it names the host
            # only in the Host header (and TLS in the SNI and certificate check above).
            connection = http.client.HTTPConnection(host, port, timeout=_remaining(deadline))
            connection.sock = sock
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers={"User-Agent": "rex-agent", "Accept": "image/*"})
            # The connection lets go of the socket when the response closes it, so it is returned too.
            return connection, connection.getresponse(), sock, watchdog
        except BaseException:
            watchdog.cancel()
            sock.close()  # a failed handshake or request must not leave the socket open
            raise

    def _checked_address(self, url: str, host: str, port: int) -> IPAddress:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):  # UnicodeError: a label IDNA cannot encode (over 63, empty)
            raise ImageFetchError(f"{url}: cannot resolve host {host!r}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        refused = [address for address in addresses if not self.allow_address(address)]
        if refused or not addresses:
            raise ImageFetchError(
                f"{url}: refused, {host} resolves to {refused[0] if refused else 'nothing'}, "
                "which is not a public address"
            )
        return addresses[0]

    def _read(self, url: str, response: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bytes:
        declared = response.getheader("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageTooLargeError(f"{url}: {int(declared):,} bytes, over the limit of {self.max_bytes:,}")
        data = bytearray()
        while True:
            sock.settimeout(_remaining(deadline))
            chunk = response.read1(CHUNK)
            if not chunk:
                if time.monotonic() >= deadline:  # the watchdog ended it: cut short, not complete
                    raise TimeoutError
                return bytes(data)
            data += chunk
            if len(data) > self.max_bytes:
                raise ImageTooLargeError(f"{url}: more than the limit of {self.max_bytes:,} bytes")


def _shut(sock: socket.socket) -> None:
    """End every wait on ``sock`` (a blocked receive returns at once)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left
