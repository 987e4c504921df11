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

import hmac
import logging
import uuid
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal, Optional, Sequence

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, Security, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from tools.errors import ExtractionFailedError, RemoteServiceError, UserInputError
from tools.text import MAX_EXPRESSION_CHARS, clean_expression

from .. import __version__
from ..agent import Agent
from .fetch import ImageTooLargeError
from .intake import ImageIntake
from .limits import BodySizeLimit, JsonTrustedHostMiddleware
from .options import ServerOptions
from .schemas import ERROR_RESPONSES, Health, LocateResult
from .workers import QueueFull, RequestTimeout, WorkerPool

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
    intake = ImageIntake(options, min(defaults.max_image_pixels, options.max_image_pixels))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()
        intake.close()

    app = FastAPI(title="REX Agent", version=__version__, lifespan=lifespan,
                  summary="Find the object(s) a referring expression points at in an image.")
    app.state.pool = pool
    app.state.options = options
    _add_middleware(app, options)
    _add_error_handlers(app)
    _add_page_and_health(app, pool, options)
    _add_locate(app, pool, options, intake)
    return app


def _add_middleware(app: FastAPI, options: ServerOptions) -> None:
    app.add_middleware(BodySizeLimit, max_bytes=options.max_upload_bytes, body_timeout=options.body_timeout)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["X-API-Key", "Authorization"])
    if options.allowed_hosts is not None:
        app.add_middleware(JsonTrustedHostMiddleware, allowed_hosts=list(options.allowed_hosts))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        return _internal_error(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(_trimmed(error.errors()))}, 422)


def _add_page_and_health(app: FastAPI, pool: WorkerPool, options: ServerOptions) -> None:
    defaults = pool.workers[0].agent.config

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


def _add_locate(app: FastAPI, pool: WorkerPool, options: ServerOptions, intake: ImageIntake) -> None:
    guard = [Depends(_api_key_check(options.api_key))] if options.api_key else []
    StrategyName = Literal[tuple(options.strategies)]  # type: ignore[valid-type]
    MultiMode = Literal["false", "true", "auto"]  # Configuration reads these spellings
    CountMode = Literal["text", "image", "both"]

    @app.post("/locate", response_model=LocateResult, responses=ERROR_RESPONSES, dependencies=guard,
              summary="Locate what an expression refers to in an image")
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
        try:
            expression = clean_expression(expression)
            pool.check_room()  # a full server spends nothing on the image
            async with intake.picture(image, image_url) as picture:
                result = await pool.locate(picture, expression, settings)
        except Exception as error:  # noqa: BLE001 - answered here, so the connection stays open
            answer = _http_error(error)
            if answer is None:
                return _internal_error(error)
            raise answer from None
        return result.to_dict()


def _http_error(error: Exception) -> HTTPException | None:
    """The answer to a query's failure that is the client's or a service's, not ours (``None``)."""
    if isinstance(error, ImageTooLargeError):
        return HTTPException(413, str(error))
    if isinstance(error, RequestTimeout):
        return HTTPException(504, f"timed out: {error}")
    if isinstance(error, UserInputError):
        return HTTPException(400, str(error))
    if isinstance(error, ExtractionFailedError):  # the reference profile's documented outcome
        return HTTPException(422, str(error))
    if isinstance(error, QueueFull):
        return HTTPException(503, f"busy: {error}; retry later", headers={"Retry-After": "1"})
    if isinstance(error, RemoteServiceError):
        return HTTPException(502, f"the model server failed: {error}")
    return None


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
