"""A real HTTP server on 127.0.0.1 that speaks just enough of ``/v1/chat/completions``.

Tests drive the real ``openai`` client against it, so request encoding, status codes,
timeouts and retries go through the genuine HTTP stack. ``respond(body, attempt)``
decides each answer; every JSON body received is kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class FakeReply:
    status: int = 200
    payload: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to provoke client timeouts)
    headers: dict[str, str] = field(default_factory=dict)


def completion(content: str | None, tokens: list[dict[str, Any]] | None = None) -> FakeReply:
    """A chat.completion answer; ``tokens`` are logprobs ``content`` entries (None: no logprobs)."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": "stop",
        "message": {"role": "assistant", "content": content},
        "logprobs": None if tokens is None else {"content": tokens},
    }
    return FakeReply(payload={"id": "fake", "object": "chat.completion", "created": 0, "model": "fake",
                              "choices": [choice]})


def token(text: str, logprob: float, top: list[tuple[str, float]] = ()) -> dict[str, Any]:
    """One logprobs entry: the chosen token and its top alternatives."""
    return {"token": text, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> FakeReply:
    return FakeReply(status, {"error": {"message": message, "type": "invalid_request_error"}}, headers=headers or {})


class FakeChatServer:
    """Context manager: ``with FakeChatServer(respond) as server: ... server.base_url``."""

    def __init__(self, respond: Callable[[dict[str, Any], int], FakeReply]) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        # A short poll interval keeps shutdown (which waits for one poll) quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def user_texts(self) -> list[str]:
        """The text part of the user message of every request received."""
        texts = []
        for body in self.requests:
            content = body["messages"][-1]["content"]
            texts.append(content if isinstance(content, str) else next(p["text"] for p in content if p["type"] == "text"))
        return texts

    def __enter__(self) -> "FakeChatServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()  # releases handlers still sleeping out a delay
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.headers.append({name.lower(): value for name, value in self.headers.items()})
                reply = server.respond(body, len(server.requests))
                if reply.delay and server._stopping.wait(reply.delay):
                    return
                data = json.dumps(reply.payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (timeout tests)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
