"""Scale-out: the server's slow path and CRS answered by an OpenAI-compatible model server (vLLM's API).

The model server is faked at the HTTP layer (tests/fake_openai_server.py): the real
``openai`` client, the real backend and the tiny real detector run; only the remote
model's replies are scripted.
"""

import math

import pytest
from fastapi.testclient import TestClient

from agent import Agent, Configuration
from agent.serve import create_app
from tests.fake_openai_server import FakeChatServer, completion, token
from tests.helpers import EXPRESSION, post


def model_server() -> FakeChatServer:
    """Answers CRS questions (one-token requests) with "B" and grounding requests with a box."""

    def respond(body, attempt):
        if body.get("max_tokens") == 1:
            return completion("B", [token("B", math.log(0.8), [("B", math.log(0.8)), ("A", math.log(0.15))])])
        return completion("(100,200),(500,800)", [token("(100,200),(500,800)", math.log(0.9))])

    return FakeChatServer(respond)


@pytest.fixture
def served(tiny_mm_grounding_dino, monkeypatch):
    with model_server() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        agent = Agent(config=Configuration(strategy="crs", mllm="openai:Qwen/Qwen2-VL-7B-Instruct", llm="heuristic",
                                           detector=str(tiny_mm_grounding_dino), device="cpu"))
        app = create_app(agent)
        app.state.pool.load_models()
        with TestClient(app) as client:
            yield client, server


def test_crs_selects_through_the_model_server(served):
    client, server = served
    response = post(client, strategy="crs", focus=False)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["path"] == "crs" and result["selection"]["letter"] == "B"
    assert sum(result["selection"]["probabilities"]) == pytest.approx(1.0)
    crs_request = server.requests[-1]
    assert crs_request["model"] == "Qwen/Qwen2-VL-7B-Instruct" and crs_request["max_tokens"] == 1
    assert f"Referring expression: {EXPRESSION}" in server.user_texts()[-1]


def test_the_slow_path_grounds_through_the_model_server(served):
    client, server = served
    response = post(client, strategy="mllm", focus=True)
    assert response.status_code == 200, response.text
    result = response.json()
    # Qwen2-VL's 0..1000 box on the 160x120 image.
    assert result["path"] == "mllm" and result["boxes"] == [[16.0, 24.0, 80.0, 96.0]]
    assert server.user_texts()[-1] == (f"Output the bounding box of {EXPRESSION} in the image. "
                                       "Please focus on the red car.")
