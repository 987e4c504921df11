"""``profile="reference"``: target extraction and the focus span, against the authors' scripts.

The scripts are re-implemented from their text in ``tests/reference_scripts.py``; the served
extraction goes through the real OpenAI client to a local fake server that keeps every request.
"""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from agent import Agent
from tests import reference_scripts as scripts
from tests.fake_openai_server import FakeChatServer, completion
from tools.detections import Detections
from tools.errors import ExtractionFailedError, UserInputError
from tools.extraction.reference import (ReferenceExtractor, ReplyLog, as_saved, find_positive, read_reply,
                                        reference_messages)

WORDS = ("the", "red", "cup", "Man", "woman", "next", "to", "dog", "Straße", "İstanbul", "café", "tree.", "a", "B")
EXPRESSIONS = ("the woman standing next to the man", "a red cup on the table", "the dog left of the café",
               "next to the red, brick building and before the little tree resides the white truck.",
               "Zwei Männer vor der Straße", "this tree can be found on the left side of the white building.")


def hostile_reply(rng: random.Random, keys: list[str], other_keys: list[str]) -> str:
    """A reply an LLM might give (or a hostile server might send) for a batch keyed by ``keys``."""
    good = {key: rng.choice(["the man", "a cup", "this tree.", "Dog", "café"]) for key in keys}
    kind = rng.randrange(16)
    if kind == 0:
        return json.dumps(good)
    if kind == 1:
        return repr(good)  # a python literal, single quotes
    if kind == 2:
        return "Sure! Here is the answer:\n" + json.dumps(good)
    if kind == 3:
        return json.dumps(good) + "\nHope this helps."  # trailing prose: literal_eval fails
    if kind == 4:
        return json.dumps(good)[: rng.randrange(1, 30)]  # truncated
    if kind == 5:
        return repr(list(good.items()))  # a list of pairs: dict.update takes it
    if kind == 6:
        return "{" + ", ".join(f"{int(key)}: {value!r}" for key, value in good.items()) + "}"  # int keys
    if kind == 7:
        return json.dumps({key: rng.randrange(5) for key in keys})  # not phrases
    if kind == 8:
        return json.dumps(dict(list(good.items())[: rng.randrange(len(good) + 1)]))  # some keys missing
    if kind == 9:
        return json.dumps({key: "the man" for key in other_keys[:3]})  # another batch's ids
    if kind == 10:
        return rng.choice(["", "I cannot tell.", "{}", "null", "[1, 2, 3]"])
    if kind == 11:
        return "I think {this} refers to: " + json.dumps(good)  # the first "{" is not the dict's
    if kind == 12:
        return repr([(key, value) for key, value in good.items()] + [5])  # update fails half way
    if kind == 13:
        return "{'ab', 'cd'}"  # a set of two-letter strings: update reads each as a pair
    if kind == 14:
        return json.dumps({**good, keys[0]: None})  # one answer null
    return json.dumps({**good, keys[-1]: "  "})  # one answer blank


def test_messages_are_the_scripts_byte_for_byte_and_no_temperature_is_sent():
    batch = {"100": EXPRESSIONS[0], "101": "the caf\u00e9 \u201csign\u201d", "102": EXPRESSIONS[3]}
    with FakeChatServer(lambda body, attempt: completion('{"100": "the man"}')) as server:
        extractor = ReferenceExtractor.served("gpt-3.5-turbo", base_url=server.base_url, api_key="sk-local")
        extractor.extract_by_id(list(batch.items()))
        sent = server.requests[0]
    expected = []
    scripts.batch_extract(batch, lambda messages: expected.append(messages) or "{}")
    assert sent["messages"] == expected[0] == reference_messages(batch)
    assert sent["messages"][-1]["content"] == json.dumps(batch)  # ASCII-escaped, default separators
    assert "\\u00e9" in sent["messages"][-1]["content"]
    assert sent["messages"][2]["content"].endswith('"3": "this tree."}')
    # The API's defaults, as the script called it: no temperature, no token limit.
    assert sent["model"] == "gpt-3.5-turbo" and "temperature" not in sent and "max_tokens" not in sent


class ScriptedReplies:
    """``gpt(messages)``: a hostile reply per batch, the same one each time the batch is asked."""

    def __init__(self, rng: random.Random, keys: list[str]):
        self.rng, self.keys, self.replies = rng, keys, {}

    def __call__(self, messages) -> str:
        batch = tuple(json.loads(messages[-1]["content"]))
        if batch not in self.replies:
            self.replies[batch] = hostile_reply(self.rng, list(batch), self.keys)
        return self.replies[batch]


def test_the_batch_dropping_rule_is_the_scripts_on_hostile_replies():
    rng = random.Random(11)
    for trial in range(40):
        count = rng.randint(1, 30)
        data = {str(100 + i): rng.choice(EXPRESSIONS) for i in range(count)}  # duplicates included
        gpt = ScriptedReplies(rng, list(data))
        expected = scripts.batch_extract(data, gpt)
        targets = ReferenceExtractor(gpt).extract_by_id(list(data.items()))
        answered = {key for key, value in expected.items() if isinstance(value, str) and value.strip()}
        assert {key for key, target in targets.items() if target.source == "model"} == answered & set(data), trial
        for key in answered & set(data):
            assert targets[key].answer == expected[key]
            start, end = targets[key].span
            script_span = scripts.find_positive(data[key], expected[key])
            assert (script_span is None and (start, end) == (0, len(data[key]))) or [start, end] == script_span


def test_read_reply_keeps_what_update_inserted_before_failing():
    assert read_reply("[('1', 'a'), ('2', 'b'), 5]") == {"1": "a", "2": "b"}
    assert as_saved(read_reply("Answer: {1: 'the cup', 2.5: 'x', False: 'y', None: 'z', (1, 2): 'w'}")) == {
        "1": "the cup", "2.5": "x", "false": "y", "null": "z"}
    assert read_reply('{"1": "a"} trailing words') is None
    assert read_reply("") is None


def test_a_run_asks_each_batch_once_and_resumes_from_its_reply_log(tmp_path):
    calls = []

    def gpt(messages):
        batch = json.loads(messages[-1]["content"])
        calls.append(list(batch))
        return json.dumps({key: "the man" for key in batch}) if "104" not in batch else "not a dict"

    items = [(str(100 + i), EXPRESSIONS[0]) for i in range(11)]
    log = tmp_path / "replies.json"
    first = ReferenceExtractor(gpt).extract_by_id(items, needed={"100", "108"}, log=ReplyLog(log))
    assert calls == [[str(100 + i) for i in range(8)], ["108", "109", "110"]]
    assert first["100"].source == "failed" and first["108"].span == (27, 34)  # the batch of 104 is dropped
    again = ReferenceExtractor(gpt).extract_by_id(items, log=ReplyLog(log))
    assert len(calls) == 2 and {key: t.source for key, t in again.items()} == {key: t.source for key, t in first.items()}
    log.write_text("[]")
    with pytest.raises(UserInputError, match="reply log"):
        ReplyLog(log)


@pytest.mark.parametrize("seed", range(3))
def test_find_positive_is_the_scripts_on_random_expressions(seed):
    rng = random.Random(seed)
    for _ in range(300):
        expression = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))
        subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
        if rng.random() < 0.5:  # a piece of the expression, in another case
            start = rng.randrange(len(expression))
            subject = expression[start:start + rng.randint(1, 12)].swapcase()
        expected = scripts.find_positive(expression, subject)
        assert find_positive(expression, subject) == (None if expected is None else tuple(expected))


class Recorder:
    """A detector that records the focus span of every call."""

    def __init__(self):
        self.calls = []

    def detect(self, image, text, focus=None):
        self.calls.append((text, focus))
        return Detections([[0, 0, 50, 50]], [0.9])


class Phrase:
    def __init__(self, phrase):
        self.phrase = phrase

    def extract(self, expressions):
        return [self.phrase for _ in expressions]


def test_the_focus_span_is_the_first_substring_even_inside_another_word():
    image = Image.new("RGB", (64, 48))
    expression = "the woman standing next to the man"
    for profile, span in (("reference", (6, 9)), ("default", (31, 34))):
        detector = Recorder()
        result = Agent(strategy="specialist", profile=profile, detector=detector, extractor=Phrase("man")).locate(
            image, expression)
        assert result.target_span == span and detector.calls == [(expression, span)], profile


def test_a_target_missing_from_the_expression_focuses_on_the_whole_caption():
    detector = Recorder()
    agent = Agent(strategy="specialist", profile="reference", detector=detector, extractor=Phrase("the lady"))
    result = agent.locate(Image.new("RGB", (64, 48)), "the woman next to the man")
    assert result.target_span == (0, 25) and detector.calls == [("the woman next to the man", (0, 25))]
    assert any("not a substring" in note and "whole caption" in note for note in result.fallbacks)


def test_a_dropped_extraction_is_an_error_in_locate_not_a_heuristic_answer():
    def gpt(messages):
        return "Sorry, I can't do that."

    extractor = ReferenceExtractor(gpt)
    agent = Agent(strategy="specialist", profile="reference", detector=Recorder(), extractor=extractor)
    with pytest.raises(ExtractionFailedError, match="drops its batch"):
        agent.locate(Image.new("RGB", (64, 48)), "the red cup")
    # Without ids, a call's expressions are keyed "1".."n" in batches of 8.
    seen = []
    ReferenceExtractor(lambda m: seen.append(json.loads(m[-1]["content"])) or "{}").extract_spans(
        [f"cup {i}" for i in range(10)])
    assert [list(batch) for batch in seen] == [[str(i) for i in range(1, 9)], ["1", "2"]]


def test_the_served_extractor_follows_the_temperature_setting(monkeypatch):
    bodies = []
    with FakeChatServer(lambda body, attempt: bodies.append(body) or completion('{"1": "the cup"}')) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        for settings, sent in (({"profile": "reference"}, None), ({"profile": "reference", "llm_temperature": 0.7}, 0.7),
                               ({}, 0), ({"llm_temperature": "default"}, None)):
            bodies.clear()
            agent = Agent(strategy="specialist", llm="openai:gpt-3.5-turbo", detector=Recorder(), **settings)
            agent.backends.extractor.extract_spans(["the cup"])
            assert bodies[0].get("temperature", None) == sent and ("temperature" in bodies[0]) == (sent is not None)
            assert isinstance(agent.backends.extractor, ReferenceExtractor) == (settings.get("profile") == "reference")
    with pytest.raises(UserInputError, match="llm_temperature"):
        Agent(llm_temperature="hot")


def test_a_local_mllm_is_asked_the_same_messages_through_its_chat_template(tiny_qwen2_vl):
    from tests.helpers import encode, scripted_answer, special
    from tools.mllm import QwenVL

    qwen = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    rendered = qwen.processor.apply_chat_template(reference_messages({"1": "the cup on the left"}), tokenize=False,
                                                  add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               + scripts.INSTRUCT + scripts.SAMPLE + "<|im_end|>\n<|im_start|>assistant\n"
                               + scripts.RESPONSE + "<|im_end|>\n<|im_start|>user\n" + '{"1": "the cup on the left"}')
    with scripted_answer(qwen, [*encode(qwen, '{"1": "the cup"}'), special(qwen, "<|im_end|>")]):
        target = ReferenceExtractor.local(qwen).extract_spans(["the cup on the left"])[0]
    assert (target.source, target.answer, target.span) == ("model", "the cup", (0, 7))


@pytest.mark.parametrize("replies", [
    ["{1: 'thing'}", "{True: 'the thing'}"],
    ["{True: 'thing'}", "{1: 'the thing'}"],
    ["{1: 'a'}", "{'1': 'zzz'}", "{1: 'thing'}"],
    ["{1.0: 'a', '1': 'b'}", "[(1, 'c')]"],
])
def test_answers_of_several_replies_merge_as_the_scripts_results_dict(replies):
    data = {str(i): EXPRESSIONS[0] for i in range(1, 8 * len(replies) + 1)}
    answer = iter(replies)

    def gpt(messages):
        return next(answer)

    expected = scripts.batch_extract(data, gpt)
    answer = iter(replies)
    targets = ReferenceExtractor(gpt).extract_by_id(list(data.items()))
    assert {key: t.answer for key, t in targets.items() if t.source == "model"} == {
        key: value for key, value in expected.items() if key in data and isinstance(value, str)}


def test_a_failed_extraction_is_asked_again_later_and_a_reply_log_of_another_model_is_not_reused(tmp_path):
    replies = iter(["no dict", '{"1": "the cup"}'])
    extractor = ReferenceExtractor(lambda messages: next(replies))
    assert extractor.extract_spans(["the cup"])[0].source == "failed"
    assert extractor.extract_spans(["the cup"])[0].answer == "the cup"  # not cached as a failure
    calls = []

    def gpt(messages):
        calls.append(1)
        return '{"1": "the cup"}'

    log = tmp_path / "replies.json"
    ReferenceExtractor(gpt, asker="model-a").extract_by_id([("1", "the cup")], log=ReplyLog(log, "model-a"))
    ReferenceExtractor(gpt, asker="model-a").extract_by_id([("1", "the cup")], log=ReplyLog(log, "model-a"))
    assert len(calls) == 1
    ReferenceExtractor(gpt, asker="model-b").extract_by_id([("1", "the cup")], log=ReplyLog(log, "model-b"))
    assert len(calls) == 2 and json.loads(log.read_text())["asker"] == "model-b"


def test_a_dropped_extraction_is_a_422_from_the_server():
    from fastapi.testclient import TestClient

    from agent.serve import create_app
    from tests.helpers import post

    agent = Agent(strategy="specialist", profile="reference", detector=Recorder(),
                  extractor=ReferenceExtractor(lambda messages: "I cannot help with that."))
    with TestClient(create_app(agent)) as client:
        answer = post(client)
    assert answer.status_code == 422 and "drops its batch" in answer.json()["detail"]
