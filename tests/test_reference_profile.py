"""``profile="reference"`` against an independent re-implementation of the authors' scripts.

``Scripts`` below is written from ``sleepyshep/FineCops-Ref`` (``SFA/task_routing.py``,
``SFA/inference_QwenVL.py``, ``CRS/region_selection_{pos,neg}.py``) in their own style: plain
Python lists, f-strings and ``round``, and OpenCV's ``NMSBoxes`` loop on ``(x, y, w, h)``
rectangles. The agent runs through its public API with a plug-in detector and the real
OpenAI-compatible backend against a local fake server, so the prompts are compared as sent.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from PIL import Image

from agent import Agent
from tests.fake_openai_server import FakeChatServer, completion, token
from tools.detections import Detections
from tools.mllm.openai_compat import OpenAICompatibleMLLM

EXPRESSION = "next to the red, brick building and before the little tree resides the white truck."
SIZE = (640, 480)


class Scripts:
    """What the released scripts compute, re-implemented from their text."""

    LETTERS = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J"]

    @staticmethod
    def nms_boxes(boxes, scores, score_threshold, nms_threshold):
        # cv2.dnn.NMSBoxes: (x, y, w, h) rectangles, float32 scores strictly above the threshold.
        def overlap(a, b):
            ax, ay, aw, ah = a
            bx, by, bw, bh = b
            w = min(ax + aw, bx + bw) - max(ax, bx)
            h = min(ay + ah, by + bh) - max(ay, by)
            inter = w * h if w > 0 and h > 0 else 0.0
            return float(np.float32(inter / (aw * ah + bw * bh - inter)))

        f32 = [float(np.float32(s)) for s in scores]
        order = sorted((i for i in range(len(boxes)) if f32[i] > float(np.float32(score_threshold))),
                       key=lambda i: -f32[i])
        kept = []
        for i in order:
            if all(overlap(boxes[i], boxes[k]) <= float(np.float32(nms_threshold)) for k in kept):
                kept.append(i)
        return kept

    @classmethod
    def level(cls, boxes, scores):
        return 1 if len(cls.nms_boxes(boxes[:10], scores[:10], 0.2, 0.7)) <= 1 else 2

    @staticmethod
    def convert_qwen_box(bbox, width, height):
        x1, y1, x2, y2 = bbox
        new = [round((x1 / width) * 1000), round((y1 / height) * 1000),
               round((x2 / width) * 1000), round((y2 / height) * 1000)]
        return f"({new[0]},{new[1]}),({new[2]},{new[3]})"

    @classmethod
    def crs(cls, expression, boxes, scores, width, height, top_k=5, none=False):
        prompt = ("Given a referring expression, select the best-matching bounding box from the options below. "
                  f"Referring expression: {expression}\n")
        add_prompt = "\nAnswer with the option's letter from the given choices directly."
        if none:
            add_prompt += " If no suitable option exists, please select the option corresponding to 'None'."
        boxes, scores = boxes[:top_k], scores[:top_k]
        indices = cls.nms_boxes(boxes, scores, 0, 0.7)
        choice_list = [f"{cls.LETTERS[idx]}. {cls.convert_qwen_box(boxes[i], width, height)}"
                       for idx, i in enumerate(indices)]
        if none:
            choice_list.append(f"{cls.LETTERS[len(indices)]}. None")
        return prompt + "\n".join(choice_list) + add_prompt, [boxes[i] for i in indices]

    @staticmethod
    def grounding(expression, subject=None):
        if subject is not None:
            return f"Output the bounding box of {expression} in the image. Please focus on {subject}."
        return f"Output the bounding box of {expression} in the image."


def jittered_answer(rng: random.Random, count: int = 10):
    """Detector boxes in clusters of near-duplicates (where the two NMS methods disagree), best first."""
    boxes = []
    while len(boxes) < count:
        x, y = rng.uniform(0, 500), rng.uniform(0, 380)
        w, h = rng.uniform(20, 140), rng.uniform(20, 100)
        for _ in range(rng.randint(1, 3)):
            jx, jy = rng.uniform(-0.15, 0.15) * w, rng.uniform(-0.15, 0.15) * h
            boxes.append([round(v, 2) for v in (x + jx, y + jy, min(x + jx + w, SIZE[0]), min(y + jy + h, SIZE[1]))])
    scores = sorted((round(rng.uniform(0.05, 0.95), 4) for _ in boxes), reverse=True)
    return boxes[:count], scores[:count]


class ScriptedDetector:
    """Answers each text with a fixed list of boxes; records every call."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def detect(self, image, text, focus=None):
        self.calls.append((text, focus))
        boxes, scores = self.answers.get(text, self.answers["*"])
        return Detections(boxes, scores)


class Extractor:
    def __init__(self, answer):
        self.answer, self.calls = answer, 0

    def extract(self, expressions):
        self.calls += 1
        return [self.answer for _ in expressions]


def letter_reply(letter: str, logprob: float = -0.05):
    top = [(letter, logprob), ("Z", -4.0), ("F", -6.5)]
    return completion(letter, [token(letter, logprob, top)])


@pytest.fixture
def image():
    return Image.new("RGB", SIZE, (90, 120, 160))


@pytest.mark.parametrize("allow_none", [False, True])
def test_crs_candidates_order_and_prompt_are_the_scripts_byte_for_byte(image, allow_none):
    rng = random.Random(7 + allow_none)
    with FakeChatServer(lambda body, attempt: letter_reply("A")) as server:
        mllm = OpenAICompatibleMLLM("qwen2-vl-7b", base_url=server.base_url)
        for _ in range(12):
            boxes, scores = jittered_answer(rng)
            detector = ScriptedDetector({"*": (boxes, scores)})
            extractor = Extractor("the white truck")
            agent = Agent(strategy="crs", profile="reference", allow_none=allow_none, detector=detector, mllm=mllm,
                          extractor=extractor)
            result = agent.locate(image, EXPRESSION)
            prompt, kept = Scripts.crs(EXPRESSION, boxes, scores, *SIZE, none=allow_none)
            assert server.user_texts()[-1] == prompt
            assert result.selection.candidates.boxes.tolist() == kept
            # The scripts' CRS extracts no target and detects the plain expression.
            assert extractor.calls == 0 and detector.calls == [(EXPRESSION, None)]
            assert result.detections.boxes.tolist() == [kept[0]]


def router_answer(rng: random.Random):
    """One or two objects seen as 1-3 jittered boxes above the router's 0.2, then weak boxes."""
    boxes = []
    for _ in range(rng.choice([1, 1, 2])):
        cluster, _ = jittered_answer(rng, count=1)
        x1, y1, x2, y2 = cluster[0]
        for _ in range(rng.randint(1, 3)):
            dx, dy = rng.uniform(-0.1, 0.1) * (x2 - x1), rng.uniform(-0.1, 0.1) * (y2 - y1)
            boxes.append([round(x1 + dx, 2), round(y1 + dy, 2), round(x2 + dx, 2), round(y2 + dy, 2)])
    strong = sorted((round(rng.uniform(0.25, 0.9), 4) for _ in boxes), reverse=True)
    weak, weak_scores = jittered_answer(rng, count=10 - len(boxes))
    return boxes + weak, strong + [round(0.19 * s, 4) for s in weak_scores]


def test_routing_level_is_the_scripts_on_jittered_near_duplicates(image):
    rng = random.Random(3)
    levels = {"reference": [], "default": []}
    for _ in range(60):
        router = router_answer(rng)
        detector = ScriptedDetector({"the white truck": router, "*": jittered_answer(rng)})
        for profile in levels:
            agent = Agent(strategy="sfa", profile=profile, detector=detector, mllm=_Grounder(),
                          extractor=Extractor("the white truck"))
            levels[profile].append(agent.locate(image, EXPRESSION).level)
        assert levels["reference"][-1] == Scripts.level(*router)
    assert set(levels["reference"]) == {1, 2}
    assert levels["reference"] != levels["default"]  # the clusters are where the two NMS methods part


class _Grounder:
    def __init__(self, boxes=((10, 20, 110, 220),), scores=(0.6,)):
        self.boxes, self.scores, self.focuses = boxes, scores, []

    def ground(self, image, expression, focus=None):
        self.focuses.append(focus)
        return Detections(self.boxes, self.scores)

    def select(self, image, expression, candidates, allow_none=False):
        return [1.0] + [0.0] * (len(candidates) + allow_none - 1)


def two_instances():
    return [[0, 0, 50, 50], [300, 300, 400, 400]], [0.9, 0.8]


@pytest.mark.parametrize("answer", ["the white truck", "The White Truck", "white truck."])
def test_level_2_grounding_prompt_is_the_scripts_with_the_extractors_words(image, answer):
    reply = completion("<|box_start|>(100,200),(300,400)<|box_end|>")
    with FakeChatServer(lambda body, attempt: reply) as server:
        mllm = OpenAICompatibleMLLM("qwen2-vl-7b", base_url=server.base_url)
        detector = ScriptedDetector({answer: two_instances(), "*": two_instances()})
        result = Agent(strategy="sfa", profile="reference", detector=detector, mllm=mllm,
                       extractor=Extractor(answer)).locate(image, EXPRESSION)
        assert result.level == 2 and result.path == "mllm"
        assert server.user_texts()[-1] == Scripts.grounding(EXPRESSION, answer)
        # Routing detected the extractor's own words, as task_routing.py does.
        assert detector.calls[0] == (answer, None)
        assert result.boxes == [[64.0, 96.0, 192.0, 192.0]]


def test_the_first_box_written_is_the_answer(image):
    grounder = _Grounder(boxes=((0, 0, 10, 10), (100, 100, 300, 300)), scores=(0.2, 0.9))
    for profile in ("default", "reference"):
        result = Agent(strategy="mllm", profile=profile, mllm=grounder, extractor=Extractor("the white truck"))
        assert result.locate(image, EXPRESSION).boxes == [[0.0, 0.0, 10.0, 10.0]]
    several = Agent(strategy="mllm", multi=True, mllm=grounder, extractor="heuristic", mllm_threshold=0.1)
    assert several.locate(image, EXPRESSION).boxes == [[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 300.0, 300.0]]


def test_an_unusable_grounding_answer_is_a_miss_in_the_reference(image):
    detector = ScriptedDetector({"*": two_instances()})
    grounder = _Grounder(boxes=(), scores=())
    default = Agent(strategy="sfa", detector=detector, mllm=grounder, extractor=Extractor("the white truck"))
    assert default.locate(image, EXPRESSION).boxes == [[0.0, 0.0, 50.0, 50.0]]  # the specialist's top box
    reference = default.with_settings(profile="reference")
    result = reference.locate(image, EXPRESSION)
    assert result.boxes == [] and not result.fallbacks


def test_sfa_keeps_focus_and_crs_drops_it_in_sfa_plus_crs(image):
    target = "the white truck"
    span = (EXPRESSION.index(target), EXPRESSION.index(target) + len(target))
    for answer, level, expected in ((([[0, 0, 50, 50]], [0.9]), 1, [(EXPRESSION, span)]),
                                    (two_instances(), 2, [(EXPRESSION, None)])):
        detector = ScriptedDetector({target: answer, "*": two_instances()})
        agent = Agent(strategy="sfa+crs", profile="reference", detector=detector, mllm=_Grounder(),
                      extractor=Extractor(target))
        result = agent.locate(image, EXPRESSION)
        assert result.level == level
        asked = [call for call in detector.calls if call[0] == EXPRESSION]
        assert set(expected) <= set(asked)
        if level == 1:
            assert result.path == "specialist"


def test_selection_records_the_scripts_log_probabilities(image):
    with FakeChatServer(lambda body, attempt: letter_reply("B", -0.3)) as server:
        mllm = OpenAICompatibleMLLM("qwen2-vl-7b", base_url=server.base_url)
        detector = ScriptedDetector({"*": two_instances()})
        result = Agent(strategy="crs", profile="reference", allow_none=True, detector=detector,
                       mllm=mllm).locate(image, EXPRESSION)
    selection = result.selection
    assert selection.letters == ("A", "B", "C") and selection.letter == "B"
    assert selection.answer_logprob == pytest.approx(-0.3)
    assert math.isnan(selection.none_logprob)  # "C" was not among the top tokens
    assert selection.option_mass == pytest.approx(math.exp(-0.3))
    assert selection.to_dict()["letter_logprobs"] == [None, -0.3, None]
