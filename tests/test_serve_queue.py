"""Concurrent requests over real HTTP: all answered, one at a time per device, 503 when the queue is full."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from agent import Agent, Configuration
from agent.serve import ServerOptions, create_app
from agent.serve import BackgroundServer
from tests.helpers import EXPRESSION, png


def locate(url: str, **fields) -> httpx.Response:
    files = {"image": ("street.png", png(), "image/png")}
    return httpx.post(f"{url}/locate", data={"expression": EXPRESSION, **fields}, files=files, timeout=120)


def test_concurrent_requests_on_the_tiny_models_are_all_answered(tiny_mm_grounding_dino, tiny_qwen2_vl):
    agent = Agent(config=Configuration(strategy="sfa+crs", llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                       mllm=str(tiny_qwen2_vl), device="cpu"))
    strategies = ["specialist", "mllm", "sfa", "crs", "sfa+crs"] * 2
    with BackgroundServer(create_app(agent)) as server, ThreadPoolExecutor(len(strategies)) as clients:
        responses = list(clients.map(lambda strategy: locate(server.url, strategy=strategy), strategies))
        health = httpx.get(f"{server.url}/healthz").json()
    assert [response.status_code for response in responses] == [200] * len(strategies)
    assert [response.json()["strategy"] for response in responses] == strategies
    assert health["devices"] == [{"device": "cpu", "running": 0, "waiting": 0, "served": len(strategies),
                                  "running_for_s": None, "stuck": False}]
    # Queued behind each other: the last one in waited at least as long as another one ran.
    timings = [response.json()["timings"] for response in responses]
    assert max(timing["queue"] for timing in timings) >= min(timing["total"] for timing in timings)


class SlowDetector:
    """Takes ``seconds`` per call and records how many calls overlap, across all instances."""

    lock = threading.Lock()

    def __init__(self, seconds: float, tally: dict) -> None:
        self.seconds, self.tally = seconds, tally

    def detect(self, image, text, focus=None):
        with self.lock:
            self.tally["now"] += 1
            self.tally["most"] = max(self.tally["most"], self.tally["now"])
        time.sleep(self.seconds)
        with self.lock:
            self.tally["now"] -= 1
        return [[10, 20, 60, 90]], [0.9]


def slow_agents(count: int, seconds: float, tally: dict) -> list[Agent]:
    return [Agent("specialist", detector=SlowDetector(seconds, tally), extractor="heuristic",
                  config=Configuration(device=f"cuda:{index}")) for index in range(count)]


@pytest.mark.parametrize("devices", [1, 2])
def test_each_device_runs_one_query_at_a_time(devices):
    tally = {"now": 0, "most": 0}
    app = create_app(slow_agents(devices, 0.05, tally))
    with BackgroundServer(app) as server, ThreadPoolExecutor(8) as clients:
        codes = [response.status_code for response in clients.map(lambda _: locate(server.url), range(8))]
        health = httpx.get(f"{server.url}/healthz").json()
    assert codes == [200] * 8
    assert tally["most"] == devices  # never two at once on one device; every device used
    assert [device["device"] for device in health["devices"]] == [f"cuda:{i}" for i in range(devices)]
    assert sum(device["served"] for device in health["devices"]) == 8
    assert all(device["served"] > 0 for device in health["devices"])


def wait_for(url: str, count: str, seconds: float = 10) -> None:
    """Until /healthz shows a query ``count`` ("running" or "waiting") on the first device."""
    deadline = time.monotonic() + seconds
    while httpx.get(f"{url}/healthz").json()["devices"][0][count] == 0:
        assert time.monotonic() < deadline, f"no query {count} after {seconds} s"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after():
    tally = {"now": 0, "most": 0}
    app = create_app(slow_agents(1, 1.0, tally), ServerOptions(max_queue=1))
    with BackgroundServer(app) as server, ThreadPoolExecutor(3) as clients:
        running = clients.submit(locate, server.url)
        wait_for(server.url, "running")
        waiting = clients.submit(locate, server.url)
        wait_for(server.url, "waiting")
        refused = locate(server.url)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "hold 1 waiting queries; retry later" in refused.json()["detail"]
        assert running.result().status_code == waiting.result().status_code == 200
