"""OpenAICompatibleMLLM and its retrying client, against a real local HTTP server."""

from __future__ import annotations

import base64
import io
import math
import re
import socket
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.fake_openai_server import FakeChatServer, FakeReply, completion, error, token
from tools.detections import Detections
from tools.errors import ModelOutputError, RemoteServiceError
from tools.mllm.base import MLLM
from tools.mllm.openai_compat import (
    MARK_COLOURS,
    ChatCompletionsClient,
    RetryPolicy,
    OpenAICompatibleMLLM,
    option_probabilities,
    parse_option_letter,
)

SECRET = "sk-test-secret-0123456789"
CANDIDATES = Detections([[10, 40, 40, 100], [70, 40, 100, 100], [120, 40, 150, 100]], [0.9, 0.8, 0.7])


def serve(*replies: FakeReply) -> FakeChatServer:
    """A server answering ``replies`` in order, repeating the last one."""
    return FakeChatServer(lambda body, attempt: replies[min(attempt, len(replies)) - 1])


def mllm_for(server: FakeChatServer, **settings) -> OpenAICompatibleMLLM:
    return OpenAICompatibleMLLM("qwen2-vl-7b", base_url=server.base_url, api_key=SECRET, **settings)


def sent_image(body: dict) -> tuple[str, Image.Image]:
    """The MIME type and decoded image of the data URL in a request body."""
    part = next(p for p in body["messages"][0]["content"] if p["type"] == "image_url")
    match = re.fullmatch(r"data:(image/\w+);base64,(.+)", part["image_url"]["url"])
    assert match, "the image must travel as a base64 data URL"
    return match.group(1), Image.open(io.BytesIO(base64.b64decode(match.group(2)))).convert("RGB")


def test_implements_the_mllm_protocol():
    assert isinstance(OpenAICompatibleMLLM("m", base_url="http://127.0.0.1:9/v1"), MLLM)


def test_select_sends_one_token_logprob_request_and_reads_probabilities(street_image):
    top = [("B", -0.3), (" B", -3.0), ("A", -2.0), ("The", -4.5)]
    with serve(completion("B", [token("B", -0.3, top)])) as server:
        selection = mllm_for(server).select(street_image, "the green box", CANDIDATES)
    body = server.requests[0]
    assert body["model"] == "qwen2-vl-7b"
    assert (body["max_tokens"], body["logprobs"], body["top_logprobs"], body["temperature"]) == (1, True, 20, 0)
    mime, image = sent_image(body)
    assert mime == "image/png" and image.size == street_image.size
    assert np.array_equal(np.asarray(image), np.asarray(street_image)), "PNG must be lossless"
    prompt = server.user_texts()[0]
    assert "Referring expression: the green box" in prompt and "A. (62,333),(250,833)" in prompt
    a, b, leftover = math.exp(-2.0), math.exp(-0.3) + math.exp(-3.0), 1 - sum(math.exp(lp) for _, lp in top)
    c = min(leftover, math.exp(-4.5))  # C is missing: capped by the smallest listed probability
    assert selection.probabilities == pytest.approx(np.array([a, b, c]) / (a + b + c))
    assert selection.probabilities.sum() == pytest.approx(1.0)
    assert selection.letter == "B" and selection.index == 1


def test_select_with_none_option(street_image):
    top = [("D", -0.1), ("A", -2.5)]
    with serve(completion("D", [token("D", -0.1, top)])) as server:
        selection = mllm_for(server).select(street_image, "a purple cow", CANDIDATES, allow_none=True)
    assert "D. None" in server.user_texts()[0]
    assert selection.index is None and selection.none_probability > 0.9


def test_select_without_logprobs_falls_back_to_the_reply_text(street_image):
    with serve(completion("C")) as server:
        selection = mllm_for(server).select(street_image, "the white box", CANDIDATES)
    assert selection.probabilities.tolist() == [0.0, 0.0, 1.0]


def test_select_reply_without_any_option_is_a_model_output_error(street_image):
    with serve(completion("I cannot tell")) as server:
        with pytest.raises(ModelOutputError, match="none of the options ABC"):
            mllm_for(server).select(street_image, "the white box", CANDIDATES)


def test_select_top_list_without_letters_uses_the_reply_text(street_image):
    with serve(completion("A", [token("A", -1.0, [("The", -0.5), ("I", -1.5)])])) as server:
        selection = mllm_for(server).select(street_image, "the red box", CANDIDATES)
    assert selection.letter == "A" and selection.probability == 1.0


def test_select_with_fewer_than_two_options_sends_nothing(street_image):
    with serve(completion("A")) as server:
        single = mllm_for(server).select(street_image, "the red box", CANDIDATES[:1])
        empty = mllm_for(server).select(street_image, "the red box", Detections.empty())
    assert server.requests == []
    assert single.letter == "A" and single.probability == 1.0 and empty.index is None


def test_marks_mode_draws_lettered_boxes_and_asks_with_letters_only(street_image):
    with serve(completion("B", [token("B", -0.1, [("B", -0.1)])])) as server:
        mllm_for(server, marks=True).select(street_image, "the green box", CANDIDATES, allow_none=True)
    prompt = server.user_texts()[0]
    assert not re.search(r"\(\d+,\d+\)", prompt), "marks mode must not send coordinates"
    assert [line for line in prompt.splitlines() if re.match(r"^[A-D]\b", line)] == ["A", "B", "C", "D. None"]
    _, image = sent_image(server.requests[0])
    for box, colour in zip(CANDIDATES.boxes.astype(int), MARK_COLOURS):
        x1, y1, x2, y2 = box
        assert image.getpixel((x2, (y1 + y2) // 2)) == colour, "right edge carries the mark colour"
    assert image.getpixel((80, 115)) == street_image.getpixel((80, 115)), "pixels away from boxes are untouched"


def test_jpeg_images_are_sent_as_jpeg_data_urls(street_image):
    with serve(completion("A")) as server:
        mllm_for(server, image_format="jpeg").select(street_image, "the red box", CANDIDATES)
    assert sent_image(server.requests[0])[0] == "image/jpeg"


def test_option_probabilities_rules():
    letters = ["A", "B", "C"]
    # Every letter listed: plain renormalisation; BPE space markers count as spaces.
    probabilities = option_probabilities([("ĠA", math.log(0.2)), ("B", math.log(0.6)), ("▁C", math.log(0.2))], letters)
    assert probabilities == pytest.approx([0.2, 0.6, 0.2])
    # The list holds all the mass: a missing option gets nothing.
    assert option_probabilities([("A", 0.0)], letters) == pytest.approx([1.0, 0.0, 0.0])
    # Leftover mass shared by the missing options when below the smallest listed probability.
    probabilities = option_probabilities([("A", math.log(0.5)), ("x", math.log(0.4))], letters)
    assert probabilities == pytest.approx(np.array([0.5, 0.05, 0.05]) / 0.6)
    assert option_probabilities([("The", -0.1)], letters) is None


@pytest.mark.parametrize(
    ("reply", "allow_none", "expected"),
    [("B", False, "B"), (" C.", False, "C"), ("Answer: A", False, "A"), ("None", True, "D"), ("none of them", True, "D")],
)
def test_parse_option_letter(reply, allow_none, expected):
    letters = ["A", "B", "C", "D"] if allow_none else ["A", "B", "C"]
    assert parse_option_letter(reply, letters, allow_none) == expected


def test_ground_sends_the_family_prompt_and_scores_by_token_probability():
    image = Image.new("RGB", (200, 100))
    pieces = ["<|box_start|>", "(", "100", ",", "200", "),(", "500", ",", "800", ")", "<|box_end|>"]
    probs = [0.99, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.99]
    tokens = [token(piece, math.log(p)) for piece, p in zip(pieces, probs)]
    with serve(completion("(100,200),(500,800)", tokens)) as server:
        found = mllm_for(server).ground(image, "the man in red", focus="the man")
    body = server.requests[0]
    assert body["logprobs"] is True and body["max_tokens"] == 128 and "top_logprobs" not in body
    assert server.user_texts()[0] == "Output the bounding box of the man in red in the image. Please focus on the man."
    assert found.boxes.tolist() == [[20.0, 20.0, 100.0, 80.0]]
    assert found.scores[0] == pytest.approx(np.mean(probs[1:10]))  # the coordinate tokens only
    assert found.labels == ["the man in red"]


def test_ground_without_logprobs_scores_one_and_other_families_parse():
    image = Image.new("RGB", (280, 280))  # smart_resize keeps 280x280, so input pixels = image pixels
    answer = '```json\n[{"bbox_2d": [28, 56, 140, 280], "label": "cat"}]\n```'
    with serve(completion(answer)) as server:
        found = mllm_for(server, family="qwen2.5-vl").ground(image, "the cat")
    assert server.user_texts()[0].startswith("Locate the cat")
    assert found.boxes.tolist() == [[28.0, 56.0, 140.0, 280.0]] and found.scores.tolist() == [1.0]


def test_internvl_family_reads_ref_box_answers_and_writes_its_options():
    image = Image.new("RGB", (200, 100))
    answer = "<ref>the cat</ref><box>[[100, 200, 500, 800]]</box>"
    with serve(completion(answer)) as server:
        found = mllm_for(server, family="internvl").ground(image, "the cat")
    assert server.user_texts()[0] == (
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>the cat</ref>")
    assert found.boxes.tolist() == [[20.0, 20.0, 100.0, 80.0]] and found.labels == ["the cat"]
    candidates = Detections(np.array([[20.0, 20.0, 100.0, 80.0]]), np.array([0.9]))
    with serve(completion("A")) as server:
        mllm_for(server, family="internvl").select(image, "the cat", candidates, allow_none=True)
    assert "A. [[100, 200, 500, 800]]" in server.user_texts()[0]


@pytest.mark.parametrize(("model", "family"), [("OpenGVLab/InternVL2_5-8B", "internvl"),
                                               ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
                                               ("gpt-4o", "qwen2_vl")])
def test_served_models_get_the_family_their_name_says(model, family):
    from agent.backends import load_mllm
    from agent.configuration import Configuration

    assert load_mllm(Configuration(mllm=f"openai:{model}")).family.name == family


def test_ground_unparseable_answer_is_a_model_output_error():
    with serve(completion("I see no such thing.")) as server:
        with pytest.raises(ModelOutputError):
            mllm_for(server).ground(Image.new("RGB", (64, 64)), "the unicorn")


def fast_client(server: FakeChatServer, **settings) -> ChatCompletionsClient:
    settings = {"timeout": 2.0, "backoff": 0.01, "max_backoff": 0.05, "total_timeout": 5.0, **settings}
    return ChatCompletionsClient(server.base_url, SECRET, retry=RetryPolicy(**settings))


def ask(client: ChatCompletionsClient):
    return client.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)


def test_429_and_500_are_retried_until_success():
    with serve(error(429, "slow down"), error(500, "oops"), completion("fine")) as server:
        client = fast_client(server)
        response = ask(client)
    assert response.choices[0].message.content == "fine"
    assert len(server.requests) == 3 and client.last_attempts == 3


def test_retries_stop_at_max_retries():
    with serve(error(503, "down")) as server:
        with pytest.raises(RemoteServiceError, match="HTTP 503 on each of 3 attempts"):
            ask(fast_client(server, max_retries=2))
    assert len(server.requests) == 3


def test_bad_request_fails_at_once_with_one_clear_line_and_no_key():
    with serve(error(400, f"bad image for key {SECRET}\nsee docs")) as server:
        mllm = mllm_for(server)
        with pytest.raises(RemoteServiceError) as raised:
            mllm.select(Image.new("RGB", (50, 50)), "x", CANDIDATES)
    message = str(raised.value)
    assert len(server.requests) == 1, "a 4xx must not be retried"
    assert "HTTP 400" in message and "bad image" in message and "\n" not in message
    assert SECRET not in message and SECRET not in repr(mllm) and SECRET not in repr(mllm.client)


def test_unauthorized_names_the_likely_cause():
    with serve(error(401, "invalid key")) as server:
        with pytest.raises(RemoteServiceError, match=r"HTTP 401 \(check the API key\)"):
            ask(fast_client(server))


def test_slow_server_times_out_within_the_total_bound():
    with serve(FakeReply(delay=5.0)) as server:
        started = time.monotonic()
        with pytest.raises(RemoteServiceError, match="timed out"):
            ask(fast_client(server, timeout=0.2, total_timeout=0.6, max_retries=10))
        elapsed = time.monotonic() - started
    # The server would answer after 5 s; the 0.6 s bound (plus slack for a busy machine) wins.
    assert elapsed < 2.0 and len(server.requests) >= 2


def test_refused_connection_is_retried_then_reported():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ChatCompletionsClient(f"http://127.0.0.1:{port}/v1", SECRET,
                                   retry=RetryPolicy(backoff=0.01, max_retries=2, timeout=1.0))
    with pytest.raises(RemoteServiceError, match="connection failed on each of 3 attempts"):
        ask(client)


def test_settings_default_to_the_openai_environment_variables(monkeypatch):
    with serve(completion("ok")) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        client = ChatCompletionsClient()
        ask(client)
    assert client.base_url == server.base_url
    assert server.headers[0]["authorization"] == f"Bearer {SECRET}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", " B", "C", "ĠD", "x", "The"]), st.floats(-30, 0)), max_size=20))
def test_option_probabilities_sum_to_one_or_defer_to_the_text(top):
    probabilities = option_probabilities(top, ["A", "B", "C", "D"])
    if probabilities is None:
        assert not any(token.strip("Ġ ") in "ABCD" for token, _ in top)
    else:
        assert probabilities.sum() == pytest.approx(1.0) and (probabilities >= 0).all()


def test_verify_asks_one_yes_no_token_per_candidate(street_image):
    top = [("Yes", -0.2), (" yes", -3.0), ("No", -2.0), ("The", -4.0)]
    with serve(completion("Yes", [token("Yes", -0.2, top)])) as server:
        yes = mllm_for(server).verify(street_image, "the green box", CANDIDATES)
    assert len(server.requests) == 3 and all(body["max_tokens"] == 1 for body in server.requests)
    questions = sorted(server.user_texts())
    assert all("Referring expression: the green box" in q and q.endswith("Answer with yes or no.") for q in questions)
    assert any("Bounding box: (62,333),(250,833)" in q for q in questions)  # Qwen2-VL's box language
    expected = (math.exp(-0.2) + math.exp(-3.0)) / (math.exp(-0.2) + math.exp(-3.0) + math.exp(-2.0))
    assert yes.tolist() == pytest.approx([expected] * 3)


def test_verify_without_logprobs_reads_the_reply_and_fails_alone(street_image):
    with serve(completion("no.")) as server:
        assert mllm_for(server).verify(street_image, "the cat", CANDIDATES[:2]).tolist() == [0.0, 0.0]
    with serve(completion("maybe")) as server:
        with pytest.raises(ModelOutputError, match="neither yes nor no"):
            mllm_for(server).verify(street_image, "the cat", CANDIDATES[:1])
    from tools.batching import PartialBatchError

    def answer(body, attempt):
        return completion("I cannot say" if "the cat" in str(body) else "yes")

    with FakeChatServer(answer) as server:
        with pytest.raises(PartialBatchError) as caught:
            mllm_for(server).verify_batch([street_image] * 2, ["the cat", "the dog"], [CANDIDATES[:1]] * 2)
    first, second = caught.value.results
    assert isinstance(first, ModelOutputError) and second.tolist() == [1.0]


def test_verify_encodes_each_image_once_for_all_its_candidates(street_image, monkeypatch):
    import tools.mllm.openai_compat as openai_compat

    encoded = []
    original = openai_compat.image_data_url
    monkeypatch.setattr(openai_compat, "image_data_url", lambda image, *args: encoded.append(image) or original(image, *args))
    top = [("Yes", -0.2), ("No", -2.0)]
    with serve(completion("Yes", [token("Yes", -0.2, top)])) as server:
        mllm_for(server).verify_batch([street_image, street_image.resize((80, 60))], ["the box", "the sky"],
                                      [CANDIDATES, CANDIDATES[:2]])
    assert len(server.requests) == 5 and len(encoded) == 2
