"""The HTTP API: ``POST /locate``, ``GET /healthz``, the web page at ``/`` and OpenAPI docs at ``/docs``.

``create_app`` takes agents that are ready (one per device; their models load at
start-up, see ``agent-cli serve``) and the server's limits. Every answer is JSON; errors
are ``{"detail": "one line"}`` with the status that says whose problem it is: 400 a bad
image or URL (or a Host the server does not answer to), 401 a missing or wrong API key,
403 a form posted from a foreign web page, 408 a body slower than the body timeout, 413 an
upload or fetched image over the size limit (or one that would decode past the memory bound),
422 a missing or malformed field (echoed input cut short) or, under the reference profile, an
expression whose target extraction the authors' rule dropped, 502 a remote model server that
failed, 503 every device queue full or the decoded-image memory in use (with ``Retry-After``),
504 no answer within the request timeout. Anything else is a 500
``{"detail": "internal error", "request_id": ...}``: the details go to the server's log
under that id, never to the client.
"""

import asyncio
import hmac
import io
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Annotated, Any, Literal, Optional, Sequence

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tools.errors import ExtractionFailedError, RemoteServiceError, UserInputError
from tools.images import load_image
from tools.text import MAX_EXPRESSION_CHARS, clean_expression

from .. import __version__
from ..agent import Agent
from .fetch import ImageTooLargeError, UrlFetcher
from .limits import BodySizeLimit, JsonTrustedHostMiddleware
from .options import ServerOptions
from .schemas import ERROR_RESPONSES, Health, LocateResult
from .workers import QueueFull, RequestTimeout, WorkerPool

# Bytes an image takes while it is decoded and converted (e.g. greyscale plus its RGB copy).
DECODED_BYTES_PER_PIXEL = 4
DECODE_WORKERS = 2  # images decoded at once; the rest wait their turn
FETCH_WORKERS = 4  # image URLs fetched at once, in a pool of their own
# How much of a rejected field a 422 answer repeats back.
MAX_ECHOED_CHARS = 200
logger = logging.getLogger("rex.serve")


def create_app(agents: Agent | Sequence[Agent], options: ServerOptions = ServerOptions()) -> FastAPI:
    """The API over ``agents`` (one per device, all with the same models and settings)."""
    pool = WorkerPool.of([agents] if isinstance(agents, Agent) else list(agents), options.max_queue,
                         options.request_timeout, options.batch_wait_ms / 1000)
    defaults = pool.workers[0].agent.config
    if defaults.strategy not in options.strategies:
        raise UserInputError(f"the default strategy {defaults.strategy!r} is not among {list(options.strategies)}")
    fetcher = UrlFetcher(options.max_upload_bytes, options.url_timeout) if options.image_urls else None
    max_pixels = min(defaults.max_image_pixels, options.max_image_pixels)
    fetches = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="rex-fetch")
    decodes = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="rex-decode")
    budget = DecodedBytes(options.max_decoded_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()
        fetches.shutdown(wait=False, cancel_futures=True)
        decodes.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="REX Agent",
        version=__version__,
        summary="Find the object(s) a referring expression points at in an image.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    app.state.options = options
    guard = [Depends(_api_key_check(options.api_key))] if options.api_key else []
    StrategyName = Literal[tuple(options.strategies)]  # type: ignore[valid-type]
    MultiMode = Literal["false", "true", "auto"]  # Configuration reads these spellings
    CountMode = Literal["text", "image", "both"]

    app.add_middleware(BodySizeLimit, max_bytes=options.max_upload_bytes, body_timeout=options.body_timeout)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization"])
    if options.allowed_hosts is not None:
        app.add_middleware(JsonTrustedHostMiddleware, allowed_hosts=list(options.allowed_hosts))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _internal_error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(_trimmed(error.errors()))}, 422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/healthz", response_model=Health, summary="Liveness, settings a client needs, queue lengths",
             responses={503: {"model": Health, "description": "A device is stuck on a query past the timeout."}})
    async def healthz() -> Any:
        stuck = pool.stuck
        health = {
            "status": "stuck" if stuck else "ok",
            "version": __version__,
            "strategies": list(options.strategies),
            "defaults": {name: getattr(defaults, name)
                         for name in ("strategy", "focus", "allow_none", "multi", "count_mode")},
            "image_urls": options.image_urls,
            "api_key_required": options.api_key is not None,
            "max_upload_bytes": options.max_upload_bytes,
            "devices": pool.status(),
        }
        return JSONResponse(health, 503) if stuck else health

    @app.post(
        "/locate",
        response_model=LocateResult,
        responses=ERROR_RESPONSES,
        dependencies=guard,
        summary="Locate what an expression refers to in an image",
    )
    async def locate(
        expression: Annotated[
            str, Form(min_length=1, max_length=MAX_EXPRESSION_CHARS, description="The referring expression.")
        ],
        # The optional fields are typed without Optional[...]: a form part is either sent or left
        # out (there is no null to send), and the schema then says plainly what a part holds.
        image: Annotated[UploadFile, File(description="The image file (PNG, JPEG, WebP, ...).")] = None,
        image_url: Annotated[
            str, Form(max_length=2048, description="An http(s) image URL, instead of a file, when enabled.")
        ] = None,
        strategy: Annotated[StrategyName, Form(description="Default: the server's strategy.")] = None,
        focus: Annotated[bool, Form(description="Target-focus matching and prompt.")] = None,
        allow_none: Annotated[bool, Form(description="The target may be absent.")] = None,
        multi: Annotated[MultiMode, Form(description="How many targets may be returned: false (one), true "
                                                     "(several), auto (as many as the expression says).")] = None,
        count_mode: Annotated[CountMode, Form(description="multi auto: how many targets, from the text, the image "
                                                          "(the MLLM counts) or both.")] = None,
        request: Request = None,
    ) -> dict[str, Any]:
        _refuse_foreign_origin(request, options.cors_origins)
        settings = {name: value for name, value in
                    dict(strategy=strategy, focus=focus, allow_none=allow_none, multi=multi,
                         count_mode=count_mode).items()
                    if value is not None}
        loop = asyncio.get_running_loop()
        try:
            expression = clean_expression(expression)
            pool.check_room()  # a full server spends nothing on the image
            data = await _image_bytes(image, image_url, fetcher, fetches, options.url_timeout)
            with budget.reserve(_decoded_size(data)):
                # Decoding runs beside the event loop, not on a device queue.
                picture = await loop.run_in_executor(decodes, load_image, data, max_pixels)
                result = await pool.locate(picture, expression, settings)
        except ImageTooLargeError as error:
            raise HTTPException(413, str(error)) from None
        except RequestTimeout as error:
            raise HTTPException(504, f"timed out: {error}") from None
        except UserInputError as error:
            raise HTTPException(400, str(error)) from None
        except ExtractionFailedError as error:  # the reference profile's documented outcome
            raise HTTPException(422, str(error)) from None
        except QueueFull as error:
            raise HTTPException(503, f"busy: {error}; retry later", headers={"Retry-After": "1"}) from None
        except RemoteServiceError as error:
            raise HTTPException(502, f"the model server failed: {error}") from None
        except Exception as error:  # noqa: BLE001 - answered here, so the connection stays open
            return _internal_error(error)
        return result.to_dict()

    return app


def _internal_error(error: BaseException) -> JSONResponse:
    """A 500 that tells the client only an id; the log gets the details under it."""
    request_id = uuid.uuid4().hex[:16]
    logger.error("request %s failed: %s: %s", request_id, type(error).__name__, error,
                 exc_info=(type(error), error, error.__traceback__))
    return JSONResponse({"detail": "internal error", "request_id": request_id}, 500,
                        headers={"X-Request-ID": request_id})


def _trimmed(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors with the rejected input cut to ``MAX_ECHOED_CHARS`` (a client sent it; no
    need to send a megabyte back)."""
    trimmed = []
    for error in errors:
        error = dict(error)
        value = error.get("input")
        if isinstance(value, (str, bytes)) and len(value) > MAX_ECHOED_CHARS:
            error["input"] = f"{value[:MAX_ECHOED_CHARS]!s}... ({len(value):,} characters)"
        trimmed.append(error)
    return trimmed


def _refuse_foreign_origin(request: Request, allowed: Sequence[str]) -> None:
    """A browser posting from another site's page (a form aimed at a local, keyless server) names
    that site in ``Origin``: refuse it unless it is this server or one of ``allowed``."""
    origin = request.headers.get("origin")
    if origin is None:  # not sent by a browser on another site's page
        return
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin.rstrip("/") in (own, *allowed) or "*" in allowed:
        return
    raise HTTPException(403, f"requests from {origin[:100]!r} are refused (start the server with --cors-origin)")


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
    from PIL import Image

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


def _api_key_check(expected: str):
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's API key.")
    bearer = HTTPBearer(auto_error=False, description="The server's API key as a bearer token.")

    async def check(
        key: Annotated[Optional[str], Security(header)] = None,
        token: Annotated[Optional[HTTPAuthorizationCredentials], Security(bearer)] = None,
    ) -> None:
        given = key if key is not None else (token.credentials if token is not None else None)
        # compare_digest takes as long for every wrong key, so timing tells nothing.
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "missing or wrong API key (X-API-Key header or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check
