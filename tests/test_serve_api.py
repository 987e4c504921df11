"""``POST /locate`` and ``GET /healthz`` on the tiny real checkpoints, and every refusal of the API.

Random weights give meaningless boxes: these tests check status codes, messages, shapes
and that the served answer is the agent's own, never accuracy.
"""

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent import Agent, Configuration
from agent.serve import ServerOptions, create_app
from tools.errors import RemoteServiceError
from tools.mllm import QwenVL

EXPRESSION = "the red car to the left of the green car"


def png(size=(160, 120)) -> bytes:
    image = Image.new("RGB", size, (90, 120, 160))
    image.paste((200, 30, 30), (10, 40, 40, 100))
    image.paste((30, 200, 30), (70, 40, 100, 100))
    encoded = io.BytesIO()
    image.save(encoded, "PNG")
    return encoded.getvalue()


@pytest.fixture(scope="module")
def agent(tiny_mm_grounding_dino, tiny_qwen2_vl):
    return Agent(config=Configuration(strategy="sfa", llm="heuristic", detector=str(tiny_mm_grounding_dino),
                                      mllm=str(tiny_qwen2_vl), device="cpu", max_image_pixels=100_000))  # fmt: skip


@pytest.fixture
def client(agent):
    with TestClient(create_app(agent, ServerOptions(max_upload_bytes=200_000))) as client:
        yield client


def post(client, image=None, expression=EXPRESSION, **fields):
    data = {name: str(value).lower() if isinstance(value, bool) else value for name, value in fields.items()}
    if expression is not None:
        data["expression"] = expression
    files = {"image": ("street.png", png() if image is None else image, "image/png")} if image is not False else None
    return client.post("/locate", data=data, files=files)


def without_timings(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "timings"}


@pytest.mark.parametrize(
    "settings", [{}, {"strategy": "specialist"}, {"strategy": "sfa+crs"}, {"strategy": "crs", "allow_none": True},
                 {"strategy": "mllm", "focus": False}, {"strategy": "crs", "multi": True}],
)  # fmt: skip
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
    assert health["defaults"] == {"strategy": "sfa", "focus": True, "allow_none": False, "multi": False}
    assert (health["image_urls"], health["api_key_required"], health["max_upload_bytes"]) == (False, False, 200_000)
    post(client)
    assert client.get("/healthz").json()["devices"] == [{"device": "cpu", "running": 0, "waiting": 0, "served": 1}]


def test_openapi_and_the_page_are_served(client):
    spec = client.get("/openapi.json").json()
    form = spec["components"]["schemas"]["Body_locate_locate_post"]
    assert form["required"] == ["expression"]
    assert set(form["properties"]) == {"expression", "image", "image_url", "strategy", "focus", "allow_none", "multi"}
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
                     b"\0" * 300_000, b"\r\n--b--\r\n"])  # fmt: skip

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
        ))  # fmt: skip
    agent = Agent(config=Configuration(detector=str(tiny_mm_grounding_dino), mllm=str(tiny_qwen2_vl), device="cpu"))
    app = create_app(agent)
    app.state.pool.load_models()
    assert sorted(loads) == ["GroundingDinoDetector", "QwenVL"]
    with TestClient(app) as client:
        for strategy in ("specialist", "mllm", "sfa", "crs", "sfa+crs", "crs"):
            assert post(client, strategy=strategy, focus=strategy != "mllm").status_code == 200
    assert sorted(loads) == ["GroundingDinoDetector", "QwenVL"]


class Detector:
    def __init__(self, failure=None):
        self.failure = failure

    def detect(self, image, text, focus=None):
        if self.failure:
            raise self.failure
        return [[10, 20, 60, 90], [70, 20, 120, 90]], [0.9, 0.4]


class MLLM:
    def ground(self, image, expression, focus=None):
        raise RemoteServiceError("http://gpu-box:8000/v1: 503 Service Unavailable after 3 retries")

    def select(self, image, expression, candidates, allow_none=False):
        return [0.6, 0.4] + ([0.0] if allow_none else [])


def plugin_agent(**kwargs) -> Agent:
    return Agent("crs", detector=kwargs.pop("detector", Detector()), mllm=MLLM(), extractor="heuristic",
                 config=Configuration(), **kwargs)  # fmt: skip


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
    crashing = plugin_agent(detector=Detector(failure=RuntimeError("CUDA error: an illegal memory access")))
    with TestClient(create_app(crashing), raise_server_exceptions=False) as client:
        crashed = post(client)
        assert crashed.status_code == 500
        assert crashed.json() == {"detail": "internal error: RuntimeError: CUDA error: an illegal memory access"}
        assert post(client, image=b"junk").status_code == 400  # the server goes on
