"""``agent-cli serve``: the HTTP API and web page (``agent/serve/``), models loaded once at start-up."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from typing import List, Optional

import typer

from agent.cli.settings import with_settings
from agent.configuration import Configuration
from agent.serve.options import DEFAULT_BATCH_WAIT_MS
from tools.errors import UserInputError
from tools.images import SERVER_MAX_IMAGE_PIXELS

SERVE_PACKAGES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


# The server's images come from strangers: a smaller default limit; one --device per GPU (repeatable).
@with_settings(exclude=("device",), defaults={"max_image_pixels": SERVER_MAX_IMAGE_PIXELS})
def serve(
    device: Optional[List[str]] = typer.Option(
        None, "--device", help="auto, cpu, cuda or cuda:N; repeat for one model copy and queue per GPU."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 serves the whole network."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    strategies: Optional[str] = typer.Option(
        None, "--strategies", help="Comma-separated strategies a request may ask for (default: all five)."
    ),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="REX_API_KEY", help="Require this key (X-API-Key or Authorization: Bearer)."
    ),
    allow_image_urls: bool = typer.Option(
        False, "--allow-image-urls", help="Fetch image_url of requests (public addresses only)."
    ),
    url_timeout: float = typer.Option(10.0, "--url-timeout", min=0.1, help="Seconds for one image URL fetch."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest request body (MB)."),
    max_queue: int = typer.Option(32, "--max-queue", min=0, help="Waiting requests per device before 503."),
    request_timeout: float = typer.Option(300.0, "--request-timeout", help="Seconds to answer a request before 504."),
    max_decoded_mb: float = typer.Option(
        1024.0, "--max-decoded-mb", help="Decoded images of requests in flight at most (MB); 503 beyond."),
    allowed_hosts: Optional[str] = typer.Option(
        None, "--allowed-hosts", help="Comma-separated Host names answered (default: --host and localhost names)."),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="A web page origin allowed to post (repeat for several; * for any)."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds for a request's headers."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", help="Seconds for a request's body before 408."),
    keep_alive: float = typer.Option(5.0, "--keep-alive", help="Seconds an idle connection stays open."),
    max_connections: int = typer.Option(256, "--max-connections", help="Open connections at most; 503 beyond."),
    batch_wait_ms: float = typer.Option(
        DEFAULT_BATCH_WAIT_MS, "--batch-wait-ms", help="A device's batch waits this long after its first query for more "
        "(up to --batch-size); 0: only those already waiting."),
    *,
    settings: Configuration,
) -> None:
    """Serve the agent over HTTP: POST /locate, GET /healthz, a web page at /, OpenAPI docs at /docs."""
    missing = [package for module, package in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise UserInputError(f"agent-cli serve needs {', '.join(missing)}: pip install 'rex-agent[serve]'")
    from agent.serve.options import ServerOptions

    # The options are checked before anything heavy is imported.
    allowed = tuple(name.strip() for name in strategies.split(",") if name.strip()) if strategies else None
    options = ServerOptions(
        **({"strategies": allowed} if allowed else {}),
        max_upload_bytes=_megabytes(max_upload_mb, "--max-upload-mb"),
        max_queue=max_queue,
        # click reads an empty REX_API_KEY as unset: read it here, so that it is refused, not ignored.
        api_key=_checked_api_key(api_key if api_key is not None else os.environ.get("REX_API_KEY")),
        image_urls=allow_image_urls,
        url_timeout=url_timeout,
        allowed_hosts=_allowed_hosts(host, allowed_hosts),
        cors_origins=tuple(cors_origin or ()),
        request_timeout=request_timeout,
        max_image_pixels=settings.max_image_pixels,
        max_decoded_bytes=_megabytes(max_decoded_mb, "--max-decoded-mb"),
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        keep_alive=keep_alive,
        max_connections=max_connections,
        batch_wait_ms=batch_wait_ms,
    )
    _run(settings, options, device, host, port)


def _run(settings: Configuration, options, devices: Optional[List[str]], host: str, port: int) -> None:
    """Load one agent per device and serve them on ``host:port`` until interrupted."""
    import uvicorn

    from agent.agent import Agent
    from agent.serve import create_app
    from agent.serve.limits import uvicorn_config
    from tools.devices import resolve_device

    names = [str(resolve_device(name)) for name in (devices or [settings.device])]
    if len(set(names)) != len(names):
        raise UserInputError(f"each --device once: {', '.join(names)}")
    agents = [Agent(config=settings.updated(device=name)) for name in names]
    app = create_app(agents, options)  # before any model loads
    listener = listen(host, port)  # a busy port, too, is answered before the models load
    try:
        typer.echo(f"loading models on {', '.join(names)} for {', '.join(options.strategies)} ...", err=True)
        app.state.pool.load_models(options.strategies)
        if host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
            typer.echo(f"warning: serving on {host} without --api-key: anyone who reaches it can use it", err=True)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"REX Agent on http://{shown}:{listener.getsockname()[1]}/ (API docs at /docs)", err=True)
        config = uvicorn_config(app, header_timeout=options.header_timeout, keep_alive=options.keep_alive,
                                max_connections=options.max_connections)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        app.state.pool.close()
        listener.close()


def _allowed_hosts(host: str, given: str | None) -> tuple[str, ...]:
    """The Host names answered: ``given``, else the bound address and localhost names (any, for a
    wildcard address, whose clients name it as they like: it warns without a key)."""
    if given:
        return tuple(name.strip() for name in given.split(",") if name.strip())
    if host in ("0.0.0.0", "::", ""):
        return ("*",)
    return tuple(dict.fromkeys((host, "localhost", "127.0.0.1")))


def _checked_api_key(api_key: str | None) -> str | None:
    """The key a request must carry; an empty one (``REX_API_KEY=""``) would switch authentication off."""
    if api_key is not None and not api_key.strip():
        raise UserInputError(
            "the API key (--api-key or REX_API_KEY) is empty; give a key, or unset it to serve without one"
        )
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        raise UserInputError("the API key (--api-key or REX_API_KEY) must be printable ASCII (it travels in an HTTP "
                             "header)")
    return api_key


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one), or a one-line error."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # The protocol must be named: asyncio sets TCP_NODELAY only on connections whose socket
        # says IPPROTO_TCP, and without it every keep-alive response waits 40 ms (Nagle).
        listener = socket.socket(family, kind, protocol)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        raise UserInputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


def _megabytes(value: float, flag: str) -> int:
    """``value`` MB in bytes; a value that is not a finite number is refused in one line."""
    if not math.isfinite(value):
        raise UserInputError(f"{flag} must be a finite number, got {value}")
    return int(value * 2**20)
