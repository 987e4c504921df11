"""Limits on what a client can hold: body size and time, header time, connections.

- ``BodySizeLimit``: bodies over the limit get a JSON 413, whether declared or streamed,
  and a body still not in after ``body_timeout`` seconds a JSON 408.
- ``uvicorn_config``: the server with a header deadline (a connection whose request headers
  are not complete ``header_timeout`` seconds after it opened, or after its last answer, is
  closed; uvicorn itself would wait forever), idle keep-alive connections closed after
  ``keep_alive`` seconds, and at most ``max_connections`` at once (503 beyond).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """ASGI middleware refusing request bodies of more than ``max_bytes``.

    A declared ``Content-Length`` over the limit is answered before any byte is read; a
    body that streams past it (chunked uploads) stops being read there, and the request
    parsing fails with the same 413. A body that trickles in slower than ``body_timeout``
    seconds in all fails with 408.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout
        self.detail = f"the request is over the upload limit of {max_bytes:,} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.detail}, 413)(scope, receive, send)
            return
        received = 0
        deadline = None if self.body_timeout is None else time.monotonic() + self.body_timeout

        async def counted() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), None if deadline is None else deadline - time.monotonic())
            except asyncio.TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.body_timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)


def uvicorn_config(app, *, header_timeout: float = 10.0, keep_alive: float = 5.0, max_connections: int | None = 256,
                   log_level: str = "info"):
    """A ``uvicorn.Config`` for ``app`` with the limits of the module docstring."""
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, lifespan="on", http=_with_header_deadline(header_timeout),
                          timeout_keep_alive=keep_alive, limit_concurrency=max_connections)


def _with_header_deadline(seconds: float):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        """uvicorn's h11 protocol, closing a connection whose request headers take too long."""

        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and not self._in_request():
                self._arm()  # the next request has begun to arrive
            super().data_received(data)
            if self._in_request():
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


class JsonTrustedHostMiddleware(TrustedHostMiddleware):
    """Starlette's Host allow-list, answering a refused Host in JSON (``{"detail": ...}``, 400) as
    every other error of the API is, instead of plain text; no www. redirects."""

    def __init__(self, app: ASGIApp, allowed_hosts) -> None:
        async def admitted(scope: Scope, receive: Receive, send: Send) -> None:
            scope[_ADMITTED] = True
            await app(scope, receive, send)

        super().__init__(admitted, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return

        async def answer(message: Message) -> None:
            if scope.get(_ADMITTED):
                await send(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                refusal = JSONResponse({"detail": "this server does not answer to that Host header"}, 400)
                await refusal(scope, receive, send)

        await super().__call__(scope, receive, answer)


_ADMITTED = "rex.host_admitted"  # the scope key a request the allow-list admitted carries
