"""The API served by uvicorn on 127.0.0.1 in a background thread: for notebooks, tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import ServerOptions
from .limits import uvicorn_config


class BackgroundServer:
    """Context manager: ``with BackgroundServer(create_app(agent)) as server: ... server.url``.

    It listens on a free port of 127.0.0.1; leaving the block stops it gracefully.
    """

    def __init__(self, app) -> None:
        # IPPROTO_TCP named, so asyncio sets TCP_NODELAY on each connection (see agent.cli.serve.listen).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        options = getattr(app.state, "options", None) or ServerOptions()
        config = uvicorn_config(app, header_timeout=options.header_timeout, keep_alive=options.keep_alive,
                                max_connections=options.max_connections, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
