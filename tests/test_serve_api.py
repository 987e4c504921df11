"""``POST /locate`` and ``GET /healthz`` on the tiny real checkpoints, and every refusal of the API.

Random weights give meaningless boxes: these tests check status codes, messages, shapes
and that the served answer is the agent's own, never accuracy.
"""


import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent import Agent, Configuration
from agent.serve import ServerOptions, create_app
from tests.helpers import EXPRESSION, ServedDetector, plugin_agent, png, post, without_timings
from tools.mllm import QwenVL





@pytest.fixture(scope="module")
def agent(tiny_mm_grounding_dino, tiny_qwen2_vl):
    return Agent(config=Configuration(strategy="sfa", llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                      mllm=str(tiny_qwen2_vl), device="cpu", max_image_pixels=100_000))


@pytest.fixture
def client(agent):
    with TestClient(create_app(agent, ServerOptions(max_upload_bytes=200_000))) as client:
        yield client






@pytest.mark.parametrize(
    "settings", [{}, {"strategy": "specialist"}, {"strategy": "sfa+crs"}, {"strategy": "crs", "allow_none": True},
                 {"strategy": "mllm", "focus": False}, {"strategy": "crs", "multi": True},
                 {"strategy": "specialist", "multi": "auto"},
                 {"strategy": "crs", "multi": "auto", "allow_none": True, "count_mode": "image"}],
)
def test_locate_answers_what_the_agent_answers(client, agent, settings):
    response = post(client, **settings)
    assert response.status_code == 200, response.text
    served = response.json()
    expected = (agent.with_settings(**settings) if settings else agent).locate(png(), EXPRESSION).to_dict()
    assert without_timings(served) == without_timings(expected)
    assert served["strategy"] == settings.get("strategy", "sfa") and served["image_size"] == [160, 120]
    assert set(served["timings"]) >= {"queue", "load_image", "total", *served["trace"]}
    if served["selection"] is not None:
        assert sum(served["selection"]["probabilities"]) == pytest.approx(1.0)


def test_healthz_tells_a_client_what_it_may_ask(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["strategies"] == ["specialist", "mllm", "sfa", "crs", "sfa+crs"]
    assert health["defaults"] == {"strategy": "sfa", "focus": True, "allow_none": False, "multi": False,
                                  "count_mode": "text"}
    assert (health["image_urls"], health["api_key_required"], health["max_upload_bytes"]) == (False, False, 200_000)
    post(client)
    assert client.get("/healthz").json()["devices"] == [{"device": "cpu", "running": 0, "waiting": 0, "served": 1,
                                                         "running_for_s": None, "stuck": False}]


def test_openapi_and_the_page_are_served(client):
    spec = client.get("/openapi.json").json()
    form = spec["components"]["schemas"]["Body_locate_locate_post"]
    assert form["required"] == ["expression"]
    assert set(form["properties"]) == {"expression", "image", "image_url", "strategy", "focus", "allow_none", "multi",
                                       "count_mode"}
    assert {"200", "400", "413", "422", "503"} <= set(spec["paths"]["/locate"]["post"]["responses"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="locate-form"' in page.text


def test_an_oversize_upload_is_413_whether_declared_or_streamed(client):
    response = post(client, image=b"\0" * 300_000)
    assert response.status_code == 413
    assert response.json() == {"detail": "the request is over the upload limit of 200,000 bytes"}
    body = b"".join([b"--b\r\nContent-Disposition: form-data; name=\"expression\"\r\n\r\na dog\r\n",
                     b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n",
                     b"\0" * 300_000, b"\r\n--b--\r\n"])

    def chunks():  # no Content-Length: the limit must count what arrives
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    streamed = client.post("/locate", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "upload limit of 200,000 bytes" in streamed.json()["detail"]


@pytest.mark.parametrize(
    "image, reason",
    [
        (b"GIF89a but not really", "image data: not an image file PIL can read"),
        (png()[:80], "image data: corrupt or truncated image"),
        (b"", "image data: empty file"),
        (png((400, 300)), "400x300 is 120,000 pixels, over the limit of 100,000"),
    ],
)
def test_a_bad_image_is_400_with_the_reason(client, image, reason):
    response = post(client, image=image)
    assert response.status_code == 400 and reason in response.json()["detail"]


def test_missing_or_malformed_fields(client):
    missing = post(client, expression=None)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "expression"]
    blank = post(client, expression="  \t ")
    assert blank.status_code == 400 and "expression is empty" in blank.json()["detail"]
    assert post(client, image=False).json() == {"detail": "send either an image file or an image_url"}
    both = post(client, image_url="https://example.org/a.png")
    assert both.status_code == 400 and both.json()["detail"] == "send either an image file or an image_url"
    unknown = post(client, strategy="fast")
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "strategy"]
    assert post(client, focus="maybe").status_code == 422


def test_image_urls_are_off_unless_enabled(client):
    response = post(client, image=False, image_url="https://example.org/a.png")
    assert response.status_code == 400 and "--allow-image-urls" in response.json()["detail"]


def test_only_the_served_strategies_may_be_asked_for(agent):
    with TestClient(create_app(agent, ServerOptions(strategies=("sfa", "crs")))) as client:
        assert post(client, strategy="mllm").status_code == 422
        assert post(client, strategy="crs").status_code == 200
        assert client.get("/healthz").json()["strategies"] == ["sfa", "crs"]
    with pytest.raises(ValueError, match="default strategy 'sfa' is not among"):
        create_app(agent, ServerOptions(strategies=("crs",)))
    with pytest.raises(ValueError, match="strategies must be some of"):
        ServerOptions(strategies=("fast",))


def test_each_model_loads_once_for_every_strategy(tiny_mm_grounding_dino, tiny_qwen2_vl, monkeypatch):
    from tools.detectors import GroundingDinoDetector

    loads = []
    for cls in (GroundingDinoDetector, QwenVL):
        original = cls.from_pretrained.__func__
        monkeypatch.setattr(cls, "from_pretrained", classmethod(
            lambda cls, *args, _original=original, **kwargs: loads.append(cls.__name__) or _original(cls, *args, **kwargs)
        ))
    agent = Agent(config=Configuration(detector=str(tiny_mm_grounding_dino), mllm=str(tiny_qwen2_vl), device="cpu"))
    app = create_app(agent)
    app.state.pool.load_models()
    assert sorted(loads) == ["GroundingDinoDetector", "QwenVL"]
    with TestClient(app) as client:
        for strategy in ("specialist", "mllm", "sfa", "crs", "sfa+crs", "crs"):
            assert post(client, strategy=strategy, focus=strategy != "mllm").status_code == 200
    assert sorted(loads) == ["GroundingDinoDetector", "QwenVL"]








def test_api_key_is_required_when_set_and_health_stays_open():
    with TestClient(create_app(plugin_agent(), ServerOptions(api_key="s3cret"))) as client:
        refused = post(client)
        assert refused.status_code == 401 and "API key" in refused.json()["detail"]
        assert post_with(client, {"X-API-Key": "wrong"}).status_code == 401
        assert post_with(client, {"X-API-Key": "s3cret"}).status_code == 200
        assert post_with(client, {"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/healthz").json()["api_key_required"] is True
        assert client.get("/").status_code == 200


def post_with(client, headers):
    files = {"image": ("street.png", png(), "image/png")}
    return client.post("/locate", data={"expression": EXPRESSION}, files=files, headers=headers)


def test_model_server_failure_is_502_and_a_crash_is_a_json_500():
    with TestClient(create_app(plugin_agent())) as client:
        failed = post(client, strategy="mllm")
        assert failed.status_code == 502 and "the model server failed: http://gpu-box" in failed.json()["detail"]
    secret = "CUDA error: an illegal memory access in /root/.cache/huggingface/token"
    for failure in (RuntimeError(secret), KeyboardInterrupt(secret), SystemExit(secret)):
        crashing = plugin_agent(detector=ServedDetector(failure=failure))
        with TestClient(create_app(crashing), raise_server_exceptions=False) as client:
            crashed = post(client)
            assert crashed.status_code == 500, type(failure)
            body = crashed.json()
            # The client learns an id to quote; the details stay in the server's log.
            assert set(body) == {"detail", "request_id"} and body["detail"] == "internal error"
            assert crashed.headers["X-Request-ID"] == body["request_id"] and secret not in crashed.text
            assert post(client, image=b"junk").status_code == 400  # the server goes on


# ---------------------------------------------------------------- hostile clients (loopback only, bounded)

import http.client  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from agent.serve import BackgroundServer  # noqa: E402


class Hanging(ServedDetector):
    """A model call that hangs until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def detect(self, image, text, focus=None):
        self.release.wait(10)
        return super().detect(image, text, focus)


def multipart(fields: dict, image: bytes) -> tuple[bytes, str]:
    boundary = "rexboundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
                 "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_500_keeps_the_keep_alive_connection_for_the_next_request():
    crashing = plugin_agent(detector=ServedDetector(failure=RuntimeError("boom")))
    with BackgroundServer(create_app(crashing)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
        body, kind = multipart({"expression": EXPRESSION}, png())
        for _ in range(2):  # the same connection twice
            connection.request("POST", "/locate", body, {"Content-Type": kind})
            answer = connection.getresponse()
            assert answer.status == 500 and json_of(answer)["detail"] == "internal error"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()


def json_of(response) -> dict:
    import json

    return json.loads(response.read())


def test_a_hanging_model_call_is_504_and_healthz_reports_the_stuck_device():
    hanging = Hanging()
    with TestClient(create_app(plugin_agent(detector=hanging), ServerOptions(request_timeout=0.3))) as client:
        start = time.monotonic()
        answer = post(client)
        assert answer.status_code == 504 and "no answer within 0.3 s" in answer.json()["detail"]
        assert time.monotonic() - start < 3
        time.sleep(0.4)
        health = client.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "stuck"
        assert health.json()["devices"][0]["stuck"] is True
        hanging.release.set()
        for _ in range(50):  # the call returns; the device recovers
            if client.get("/healthz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/healthz").json()["status"] == "ok"


def test_a_full_server_refuses_before_decoding_and_bounds_decoded_bytes(monkeypatch):
    decoded = []
    import agent.serve.intake as intake

    monkeypatch.setattr(intake, "load_image", lambda *a, **k: decoded.append(1) or Image.new("RGB", (8, 8)))
    hanging = Hanging()
    options = ServerOptions(max_queue=0, max_decoded_bytes=200_000)
    with TestClient(create_app(plugin_agent(detector=hanging), options)) as client:
        first = threading.Thread(target=post, args=(client,))
        first.start()
        for _ in range(100):
            if client.get("/healthz").json()["devices"][0]["running"]:
                break
            time.sleep(0.02)
        busy = post(client)
        assert busy.status_code == 503 and decoded == [1]  # refused before its image was decoded
        hanging.release.set()
        first.join(10)
        too_big = post(client, image=png((400, 300)))  # 400 x 300 x 4 bytes > 200,000
        assert too_big.status_code == 413 and "decodes to" in too_big.json()["detail"]


def test_slow_headers_and_slow_bodies_are_cut_off():
    options = ServerOptions(header_timeout=0.5, body_timeout=0.5)
    with BackgroundServer(create_app(plugin_agent(), options)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"POST /locate HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
            start = time.monotonic()
            assert slow.recv(1024) == b"" and time.monotonic() - start < 3  # closed by the server
        with socket.create_connection(("127.0.0.1", port), timeout=5) as trickle:
            trickle.sendall(b"POST /locate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                            b"boundary=x\r\nContent-Length: 1000\r\n\r\n--x\r\n")
            answer = b""
            while b"did not arrive" not in answer and (chunk := trickle.recv(4096)):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in answer


def test_connections_beyond_the_limit_are_refused():
    with BackgroundServer(create_app(plugin_agent(), ServerOptions(max_connections=2))) as server:
        port = int(server.url.rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            time.sleep(0.2)
            third = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            third.request("GET", "/healthz")
            assert third.getresponse().status == 503
            third.close()
        finally:
            for connection in held:
                connection.close()


def test_foreign_hosts_and_origins_are_refused_and_echoes_are_short():
    options = ServerOptions(allowed_hosts=("localhost",), cors_origins=("https://tools.example",))
    with TestClient(create_app(plugin_agent(), options), base_url="http://localhost") as client:
        assert post(client).status_code == 200
        rebound = client.get("/healthz", headers={"Host": "attacker.example"})  # DNS rebinding
        assert rebound.status_code == 400 and "Host header" in rebound.json()["detail"]  # JSON, as every error
        foreign = client.post("/locate", data={"expression": EXPRESSION}, files={"image": ("a.png", png())},
                              headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
        allowed = client.post("/locate", data={"expression": EXPRESSION}, files={"image": ("a.png", png())},
                              headers={"Origin": "https://tools.example"})
        assert allowed.status_code == 200
        same = client.post("/locate", data={"expression": EXPRESSION}, files={"image": ("a.png", png())},
                           headers={"Origin": "http://localhost"})
        assert same.status_code == 200
        long = post(client, expression="x" * 900_000)
        assert long.status_code == 422 and len(long.text) < 2_000 and "900,000 characters" in long.text
