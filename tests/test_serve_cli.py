"""``agent-cli serve``: mistakes answered in one line before any model loads, and a real run."""

import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from agent.cli import main
from tests.helpers import EXPRESSION, png


@pytest.mark.parametrize(
    "args, message",
    [
        (["--detector", "./no-such-model", "--strategies", "specialist", "--strategy", "specialist"],
         "./no-such-model"),
        (["--device", "cpu", "--device", "cpu"], "each --device once: cpu, cpu"),
        (["--strategies", "sfa,fast"], "strategies must be some of"),
        (["--strategies", "crs"], "the default strategy 'sfa' is not among ['crs']"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--port", "{busy}"], "cannot listen on 127.0.0.1:{busy}"),
        (["--api-key", ""], "the API key (--api-key or REX_API_KEY) is empty"),
        (["--api-key", "   "], "the API key (--api-key or REX_API_KEY) is empty"),
    ],
)
def test_mistakes_exit_2_with_one_line(args, message, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code = main(["serve", *(arg.replace("{busy}", port) for arg in args)])
    last, *before = reversed(capsys.readouterr().err.strip().splitlines())
    assert code == 2 and last.startswith("error: ") and message.replace("{busy}", port) in last
    # Settings are checked before the models load; a missing checkpoint shows while they load.
    assert before == (["loading models on cpu for specialist ..."] if "no-such" in message else [])


def test_serve_runs_until_interrupted(tiny_mm_grounding_dino, tiny_qwen2_vl):
    command = [sys.executable, "-m", "agent.cli", "serve", "--port", "0", "--device", "cpu", "--llm", "heuristic",
               "--detector", str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines.append(server.stderr.readline())
            found = re.search(r"REX Agent on (http://127\.0\.0\.1:\d+)/", lines[-1])
            if found or server.poll() is not None:
                break
        assert found, "".join(lines)
        url = found.group(1)
        while httpx.get(f"{url}/healthz").status_code != 200:  # uvicorn starts right after the line
            time.sleep(0.05)
        files = {"image": ("street.png", png(), "image/png")}
        answer = httpx.post(f"{url}/locate", data={"expression": EXPRESSION, "strategy": "sfa+crs"}, files=files)
        assert answer.status_code == 200 and answer.json()["strategy"] == "sfa+crs"
        assert "loading models on cpu for specialist, mllm, sfa, crs, sfa+crs" in "".join(lines)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down, then the usual 130
        code = server.wait(timeout=30)
        rest = server.stderr.read()
        server.stderr.close()
    assert code == 130 and "Application shutdown complete." in rest


def test_without_the_serve_extra_the_command_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == "error: agent-cli serve needs uvicorn: pip install 'rex-agent[serve]'\n"


def test_the_listening_socket_names_tcp_so_connections_get_nodelay():
    # asyncio sets TCP_NODELAY only on connections of sockets created with IPPROTO_TCP; without
    # it each keep-alive response waited 40 ms for an ACK (measured by benchmarks/serving.py).
    from agent.cli.serve import listen

    with listen("127.0.0.1", 0) as listener:
        assert listener.proto == socket.IPPROTO_TCP and listener.getsockname()[1] > 0


def test_allowed_hosts_default_to_the_bound_address_and_localhost_names():
    from agent.cli.serve import _allowed_hosts

    assert _allowed_hosts("127.0.0.1", None) == ("127.0.0.1", "localhost")
    assert _allowed_hosts("192.0.2.7", None) == ("192.0.2.7", "localhost", "127.0.0.1")
    assert _allowed_hosts("0.0.0.0", None) == ("*",)  # a wildcard bind answers every name (and warns without a key)
    assert _allowed_hosts("127.0.0.1", "rex.example, localhost") == ("rex.example", "localhost")
