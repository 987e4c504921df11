"""``profile="reference"`` reads a CRS answer as the authors' scripts and evaluators do.

The local path runs on a tiny Qwen2-VL carrying the real Qwen2-VL vocabulary (so "A" is id 32,
as the scripts hard-code) and a repetition penalty in its generation config (as
Qwen2-VL-7B-Instruct's has), steered by a forward hook on ``lm_head``; the served path through
the real OpenAI client to a local fake server. The parses are checked against
``tests/reference_scripts.py``, written from the evaluators' text.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from agent import Agent
from agent.evaluation.run import prediction
from tests import reference_scripts as scripts
from tests.fake_openai_server import FakeChatServer, completion, token
from tests.real_vocab import unpack_qwen2_vl_tokenizer
from tests.helpers import scripted_answer
from tests.tiny.qwen_vl import build_tiny_qwen2_vl
from tools.datasets import Sample
from tools.detections import Detections
from tools.evaluation.finecops import raw_letter_answer
from tools.mllm import QwenVL
from tools.mllm.crs import crs_prompt
from tools.mllm.decoding import first_step_scores
from tools.mllm.openai_compat import OpenAICompatibleMLLM
from tools.mllm.reading import negative_script_letter, positive_script_letter
from tools.mllm.selection import selection_from_dict

EXPRESSION = "the second cup from the left"
CANDIDATES = Detections([[10, 40, 40, 100], [70, 40, 100, 100], [120, 40, 150, 100], [0, 0, 80, 60],
                         [80, 60, 160, 120]], [0.9, 0.8, 0.7, 0.6, 0.5])


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """A tiny Qwen2-VL on the real vocabulary, with a repetition penalty of 1.05."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen2_vl_real_vocab")
    tokenizer = AutoTokenizer.from_pretrained(unpack_qwen2_vl_tokenizer(folder / "tokenizer"))
    path = build_tiny_qwen2_vl(folder / "model", tokenizer=tokenizer, repetition_penalty=1.05)
    return QwenVL.from_pretrained(str(path), device="cpu")


@pytest.fixture
def image():
    return Image.new("RGB", (160, 120), (90, 120, 160))


def answer_ids(model: QwenVL, text: str) -> list[int]:
    return [*model.tokenizer.encode(text, add_special_tokens=False), model.tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_a_bare_letter_then_end_is_read_with_the_scripts_log_probabilities(qwen, image):
    assert qwen.tokenizer.encode("A", add_special_tokens=False) == [32]  # the scripts' hard-coded id
    script = answer_ids(qwen, "A")
    with scripted_answer(qwen, script, margin=30.0) as returned:
        selection = qwen.select(image, EXPRESSION, CANDIDATES[:4], allow_none=True, reading="generated")
    assert selection.text == "A" and selection.read_letter == "A" and selection.index == 0
    assert len(returned) == 2  # the letter, then <|im_end|>: one decode step after the prefill
    raw = returned[0][0].double()
    # The scripts' answer_prob_norm: the first token under log_softmax of the *processed* scores;
    # the repetition penalty lowers "A", which the options already hold.
    question, _ = crs_prompt(EXPRESSION, CANDIDATES[:4], image.size, True)
    inputs, _ = qwen._encode([qwen._conversation(image, question)])
    processed = first_step_scores(qwen.model.generation_config, inputs["input_ids"], raw[None])[0]
    assert processed[32] < raw[32]
    assert selection.first_token_logprob == pytest.approx(torch.log_softmax(processed, -1)[32].item(), abs=1e-4)
    assert selection.answer_logprob == selection.first_token_logprob
    # The letter probabilities beside it are the one-forward reading's (raw logits).
    with scripted_answer(qwen, script, margin=30.0):
        letter = qwen.select(image, EXPRESSION, CANDIDATES[:4], allow_none=True)
    np.testing.assert_allclose(selection.probabilities, letter.probabilities, atol=1e-5)


@pytest.mark.parametrize(("text", "allow_none", "letter", "index", "unread"), [
    ("The answer is B.", False, "B", 1, False),
    ("The answer is B.", True, "B", 1, False),
    ("b, a dog", False, "A", 0, False),  # upper-cased, the LAST standalone A-D
    ("b, a dog", True, None, None, True),  # case as written, the FIRST standalone A-F: none
    ("E", False, "E", 4, False),  # one character is the option itself
    ("The answer is E.", False, None, None, True),  # the positive evaluator reads A-D only
])
def test_generated_answers_are_parsed_as_the_matching_evaluator_parses_them(qwen, image, text, allow_none, letter,
                                                                            index, unread):
    candidates = CANDIDATES if not allow_none else CANDIDATES[:4]
    with scripted_answer(qwen, answer_ids(qwen, text), margin=30.0):
        selection = qwen.select(image, EXPRESSION, candidates, allow_none=allow_none, reading="generated")
    assert selection.text == text and selection.read_letter == letter
    assert selection.index == index and selection.unread == unread
    if unread:  # the evaluators' zero box
        assert selection.to_detections().boxes.tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_a_letter_beyond_d_at_top_5_is_the_positive_evaluators_zero_box(qwen, image, tmp_path):
    proposals = Detections(CANDIDATES.boxes.tolist() + [[5, 5, 20, 20]] * 5, [0.9, 0.8, 0.7, 0.6, 0.5] + [0.1] * 5)
    detector = Scripted(proposals)
    agent = Agent(strategy="crs", profile="reference", detector=detector, mllm=qwen)
    with scripted_answer(qwen, answer_ids(qwen, "E"), margin=30.0):
        result = agent.locate(image, EXPRESSION)
    assert result.selection.read_letter == "E" and result.boxes == [CANDIDATES.boxes[4].tolist()]
    image.save(tmp_path / "image.png")
    sample = Sample(1, tmp_path / "image.png", EXPRESSION, [[120, 40, 150, 100]], level=1)
    recorded = prediction(sample, result)
    assert recorded.fields["proposals"]["boxes"] == proposals.boxes.tolist()
    # evaluation_CRS_pos.py maps only A-D, onto the raw detector boxes: E is a zero box.
    assert raw_letter_answer(recorded).boxes.tolist() == [scripts.positive_box("E", proposals.boxes.tolist())]


def test_one_option_is_still_asked_and_greedy_generation_is_the_answer(qwen, image, monkeypatch):
    calls = []
    original = qwen.model.generate
    monkeypatch.setattr(qwen.model, "generate", lambda *a, **k: calls.append(k["max_new_tokens"]) or original(*a, **k))
    with scripted_answer(qwen, answer_ids(qwen, "B"), margin=30.0):
        selection = qwen.select(image, EXPRESSION, CANDIDATES[:1], reading="generated")
    assert calls == [128] and selection.read_letter == "B" and selection.unread
    monkeypatch.undo()
    batch = qwen.select_batch([image, image], [EXPRESSION, "the cup"], [CANDIDATES[:3], CANDIDATES[:2]],
                              reading="generated")
    singles = [qwen.select(image, text, boxes, reading="generated")
               for text, boxes in ((EXPRESSION, CANDIDATES[:3]), ("the cup", CANDIDATES[:2]))]
    for together, alone in zip(batch, singles):
        assert together.text == alone.text
        np.testing.assert_allclose(together.probabilities, alone.probabilities, atol=1e-4)


class Scripted:
    def __init__(self, detections):
        self.detections = detections

    def detect(self, image, text, focus=None):
        return self.detections


def test_the_recorded_selection_round_trips_with_its_text(qwen, image):
    with scripted_answer(qwen, answer_ids(qwen, "The answer is C."), margin=30.0):
        result = Agent(strategy="crs", profile="reference", allow_none=True, detector=Scripted(CANDIDATES),
                       mllm=qwen).locate(image, EXPRESSION)
    record = result.to_dict()["selection"]
    assert record["text"] == "The answer is C." and record["read_letter"] == "C"
    again = selection_from_dict(record, result.selection.candidates)
    assert again.index == result.selection.index == 2 and again.text == record["text"]
    assert math.isclose(again.answer_logprob, result.selection.answer_logprob)


def test_served_crs_generates_and_reads_the_reply_text(image):
    reply = completion("The answer is C.", [token("The", -0.7, [("The", -0.7), ("C", -1.2), ("A", -2.0)]),
                                            token(" answer", -0.01), token(" is", -0.01), token(" C", -0.1)])
    with FakeChatServer(lambda body, attempt: reply) as server:
        mllm = OpenAICompatibleMLLM("qwen2-vl-7b", base_url=server.base_url, api_key="sk")
        result = Agent(strategy="crs", profile="reference", detector=Scripted(CANDIDATES), mllm=mllm).locate(
            image, EXPRESSION)
        default = Agent(strategy="crs", focus=False, detector=Scripted(CANDIDATES), mllm=mllm).locate(image, EXPRESSION)
        sent = server.requests
    assert sent[0]["max_tokens"] == 128 and sent[1]["max_tokens"] == 1
    assert result.selection.text == "The answer is C." and result.selection.index == 2
    assert result.selection.answer_logprob == pytest.approx(-0.7)  # the first token's, as the scripts record
    assert default.selection.index == 2 and default.selection.text is None  # letters only: C over A


WORDS = ["A", "a", "B.", "b", "The", "answer", "is", "E", "e", "None", "D", "d.", ",", ".", "option", "F", "(C)",
         "A.", "AB", "c", "ß", "Ä"]


def test_the_parses_are_the_evaluators_on_random_answer_texts():
    rng = random.Random(5)
    for _ in range(3000):
        text = rng.choice(["", " "]) + rng.choice(["", " "]).join(
            rng.choice(WORDS) for _ in range(rng.randint(0, 5)))
        expected = text.upper() if len(text.upper()) == 1 else scripts.extract_option(text.upper())
        assert positive_script_letter(text) == expected, text
        gt = {letter: [i, i, i + 1, i + 1] for i, letter in enumerate("ABCD")} | {"E": "None"}
        try:
            script = scripts.negative_option(text, gt)
        except KeyError:
            script = KeyError
        letter = negative_script_letter(text)
        ours = gt[letter] if letter in gt else KeyError
        assert ours == script, text


def test_raw_letters_map_onto_the_detector_boxes_as_the_positive_evaluator_does():
    rng = random.Random(9)
    for _ in range(500):
        boxes = [[rng.randint(0, 50), rng.randint(0, 50), rng.randint(60, 160), rng.randint(60, 120)]
                 for _ in range(rng.randint(0, 10))]
        text = rng.choice(["A", "B", "C", "D", "E", "b", "The answer is D.", "a dog", "", "F"])
        record = {"id": 1, "boxes": [[0, 0, 1, 1]], "scores": [0.5], "path": "crs",
                  "selection": {"text": text, "read_letter": positive_script_letter(text), "letter": "A"},
                  "proposals": {"boxes": boxes, "scores": [0.5] * len(boxes)}}
        from tools.evaluation import Prediction

        mapped = raw_letter_answer(Prediction.from_record(record))
        assert mapped.boxes.tolist() == [[float(v) for v in scripts.positive_box(text, boxes)]]
        assert mapped.scores.tolist() == [0.0]
