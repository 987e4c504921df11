"""The retrying transport to an OpenAI-compatible chat-completions server (vLLM, SGLang, LM
Studio, OpenAI), shared by the served MLLM (``tools.mllm.openai_compat``) and the served target
extractors (``tools.extraction``), with the official ``openai`` client underneath."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import RemoteServiceError, UserInputError

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers (vLLM, SGLang, LM Studio) accept any key, but the client insists on one.
PLACEHOLDER_API_KEY = "EMPTY"
# Transient statuses worth another try; every other 4xx is the caller's mistake.
RETRYABLE_STATUS = frozenset({408, 429})
STATUS_HINTS = {401: "check the API key", 403: "check the API key", 404: "check the model name and base URL"}


@dataclass(frozen=True)
class RetryPolicy:
    """How patiently a remote server is asked: every OpenAI-compatible backend takes one.

    Timeouts, connection errors, HTTP 408/429 and 5xx are retried up to ``max_retries``
    times, waiting ``backoff * 2**n`` seconds (at most ``max_backoff``, or the server's
    ``Retry-After``), each request bounded by ``timeout`` seconds and the whole call, retries
    included, by ``total_timeout``.
    """

    timeout: float = 60.0
    max_retries: int = 4
    total_timeout: float = 300.0
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.total_timeout <= 0 or self.max_retries < 0:
            raise UserInputError("timeout and total_timeout must be positive and max_retries >= 0")


class ChatCompletionsClient:
    """``chat.completions.create`` retried as ``retry`` (a ``RetryPolicy``) says.

    Other 4xx answers than 408/429 fail at once. Either way a ``RemoteServiceError`` with one
    line of explanation is raised; the API key never appears in messages or ``repr``.
    ``last_attempts`` counts the requests the latest call made.
    ``base_url``/``api_key`` default to ``OPENAI_BASE_URL``/``OPENAI_API_KEY``.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 retry: RetryPolicy | None = None) -> None:
        import openai  # a quarter second: paid by the OpenAI backends only

        self.retry = retry or RetryPolicy()
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._secret = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
        # Retries are ours (bounded in total time), so the client's own are off.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self._secret, max_retries=0,
                                     timeout=self.retry.timeout)
        self.last_attempts = 0

    def create(self, **request: Any) -> Any:
        """One chat completion (the ``openai`` response object); ``request`` as for ``openai``."""
        import openai

        retry = self.retry
        started = time.monotonic()
        deadline = started + retry.total_timeout
        self.last_attempts = 0
        while True:
            self.last_attempts += 1
            remaining = deadline - time.monotonic()
            try:
                response = self._client.chat.completions.create(**request, timeout=min(retry.timeout, remaining))
            except openai.APIStatusError as error:
                if error.status_code not in RETRYABLE_STATUS and error.status_code < 500:
                    raise RemoteServiceError(self._refusal(error)) from None
                failure, retry_after = f"HTTP {error.status_code}", _retry_after(error)
            except openai.APIConnectionError as error:
                failure = "timed out" if isinstance(error, openai.APITimeoutError) else "connection failed"
                retry_after = None
            except (openai.APIError, ValueError, TypeError, RecursionError) as error:  # a body that is no answer
                raise RemoteServiceError(f"{self.base_url} answered something that is not a chat completion "
                                         f"({type(error).__name__})") from None
            else:
                return self._checked(response)
            delay = min(retry.max_backoff, max(retry.backoff * 2 ** (self.last_attempts - 1), retry_after or 0))
            if self.last_attempts > retry.max_retries or time.monotonic() + delay >= deadline:
                raise RemoteServiceError(
                    f"{self.base_url}: {failure} on each of {self.last_attempts} attempts "
                    f"({time.monotonic() - started:.1f}s, bound {retry.total_timeout:g}s)"
                ) from None
            time.sleep(delay)

    def _checked(self, response: Any) -> Any:
        """``response`` when it is a chat completion with a first choice whose content is text (or none)."""
        choices = getattr(response, "choices", None)
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
        if message is None or not isinstance(getattr(message, "content", None), (str, type(None))):
            raise RemoteServiceError(f"{self.base_url} answered a chat completion without a text choice")
        return response

    def _refusal(self, error: openai.APIStatusError) -> str:
        body = error.body
        detail = body.get("message", body) if isinstance(body, dict) else body or error.message
        detail = self._redact(" ".join(str(detail).split()))[:300]
        hint = f" ({STATUS_HINTS[error.status_code]})" if error.status_code in STATUS_HINTS else ""
        return f"{self.base_url} refused the request with HTTP {error.status_code}{hint}: {detail}"

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret != PLACEHOLDER_API_KEY else text

    def __repr__(self) -> str:
        settings = f"timeout={self.retry.timeout:g}, max_retries={self.retry.max_retries}"
        return f"ChatCompletionsClient(base_url={self.base_url!r}, {settings})"


def _retry_after(error: openai.APIStatusError) -> float | None:
    try:
        return float(error.response.headers.get("retry-after", ""))
    except ValueError:
        return None
