"""The HTTP API: ``POST /locate``, ``GET /healthz``, the web page at ``/`` and OpenAPI docs at ``/docs``.

``create_app`` takes agents that are ready (one per device; their models load at
start-up, see ``agent-cli serve``) and the server's limits. Every answer is JSON; errors
are ``{"detail": "one line"}`` with the status that says whose problem it is: 400 a bad
image or URL, 401 a missing or wrong API key, 413 an upload or fetched image over the
size limit, 422 a missing or malformed field, 502 a remote model server that failed,
503 every device queue full (with ``Retry-After``).
"""

import asyncio
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal, Optional, Sequence

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tools.errors import RemoteServiceError, UserInputError
from tools.images import load_image

from .. import __version__
from ..agent import Agent, clean_expression
from ..configuration import STRATEGIES
from .fetch import ImageTooLargeError, UrlFetcher
from .limits import BodySizeLimit
from .schemas import ERROR_RESPONSES, Health, LocateResult
from .workers import QueueFull, WorkerPool

MAX_EXPRESSION_CHARS = 2000


@dataclass(frozen=True)
class ServerOptions:
    """The server's limits and switches (``agent-cli serve`` flags of the same names)."""

    strategies: tuple[str, ...] = STRATEGIES  # what a request may ask for
    max_upload_bytes: int = 20 * 2**20  # the whole request body, and a fetched image
    max_queue: int = 32  # waiting queries per device before 503
    api_key: Optional[str] = None  # required in X-API-Key or "Authorization: Bearer" when set
    image_urls: bool = False  # fetch image_url (public addresses only)
    url_timeout: float = 10.0  # seconds for a whole fetch

    def __post_init__(self) -> None:
        unknown = [name for name in self.strategies if name not in STRATEGIES]
        if unknown or not self.strategies:
            raise UserInputError(f"strategies must be some of {', '.join(STRATEGIES)}, got {list(self.strategies)}")
        if self.max_upload_bytes < 1 or self.max_queue < 0 or self.url_timeout <= 0:
            raise UserInputError("max_upload_bytes and url_timeout must be positive, max_queue not negative")


def create_app(agents: Agent | Sequence[Agent], options: ServerOptions = ServerOptions()) -> FastAPI:
    """The API over ``agents`` (one per device, all with the same models and settings)."""
    pool = WorkerPool.of([agents] if isinstance(agents, Agent) else list(agents), options.max_queue)
    defaults = pool.workers[0].agent.config
    if defaults.strategy not in options.strategies:
        raise UserInputError(f"the default strategy {defaults.strategy!r} is not among {list(options.strategies)}")
    fetcher = UrlFetcher(options.max_upload_bytes, options.url_timeout) if options.image_urls else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()

    app = FastAPI(
        title="REX Agent",
        version=__version__,
        summary="Find the object(s) a referring expression points at in an image.",
        lifespan=lifespan,
    )
    app.state.pool = pool
    guard = [Depends(_api_key_check(options.api_key))] if options.api_key else []
    StrategyName = Literal[tuple(options.strategies)]  # type: ignore[valid-type]

    app.add_middleware(BodySizeLimit, max_bytes=options.max_upload_bytes)

    # The server logs the traceback as well; the client gets one JSON line, as for every error.
    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"internal error: {type(error).__name__}: {error}"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/healthz", response_model=Health, summary="Liveness, settings a client needs, queue lengths")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "strategies": list(options.strategies),
            "defaults": {name: getattr(defaults, name) for name in ("strategy", "focus", "allow_none", "multi")},
            "image_urls": options.image_urls,
            "api_key_required": options.api_key is not None,
            "max_upload_bytes": options.max_upload_bytes,
            "devices": pool.status(),
        }

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
        multi: Annotated[bool, Form(description="Several targets may be returned.")] = None,
    ) -> dict[str, Any]:
        settings = {name: value for name, value in
                    dict(strategy=strategy, focus=focus, allow_none=allow_none, multi=multi).items()
                    if value is not None}  # fmt: skip
        try:
            expression = clean_expression(expression)
            data = await _image_bytes(image, image_url, fetcher)
            # Decoding runs beside the event loop, not on a device queue.
            picture = await asyncio.to_thread(load_image, data, defaults.max_image_pixels)
            result = await pool.locate(picture, expression, settings)
        except ImageTooLargeError as error:
            raise HTTPException(413, str(error)) from None
        except UserInputError as error:
            raise HTTPException(400, str(error)) from None
        except QueueFull as error:
            raise HTTPException(503, f"busy: {error}; retry later", headers={"Retry-After": "1"}) from None
        except RemoteServiceError as error:
            raise HTTPException(502, f"the model server failed: {error}") from None
        return result.to_dict()

    return app


async def _image_bytes(image: UploadFile | None, image_url: str | None, fetcher: UrlFetcher | None) -> bytes:
    """The encoded image of a request: the uploaded file, or the fetched ``image_url``."""
    if (image is None) == (not image_url):
        raise UserInputError("send either an image file or an image_url")
    if image is not None:
        return await image.read()
    if fetcher is None:
        raise UserInputError("this server does not fetch image URLs (start it with --allow-image-urls); upload the file")
    return await asyncio.to_thread(fetcher.fetch, image_url)


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
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    return check
