"""Generalized REC: the expected count, multi="auto", per-candidate verification and option-order
debiasing, through the agent with deterministic plug-ins (they test the orchestration, not models)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent import Agent, Configuration
from agent.finishing import Count, FinishPolicy, finish, finish_verification
from tools import Detections
from tools.errors import UserInputError
from tools.extraction import ExtractedTarget
from tools.extraction.count import MANY
from tools.mllm.selection import Selection, average_orders, cyclic_orders

BOXES = [[10, 10, 40, 90], [50, 10, 80, 90], [90, 10, 120, 90], [130, 10, 150, 90]]


class FourBoxes:
    """Four separate boxes, best first."""

    def __init__(self, scores=(0.9, 0.8, 0.7, 0.1)):
        self.scores = scores

    def detect(self, image, text, focus=None):
        return Detections(BOXES, self.scores)


class Verifier:
    """Yes-probabilities per candidate box (by its x1), and the calls received."""

    def __init__(self, yes):
        self.yes = yes
        self.calls = []

    def ground(self, image, expression, focus=None):
        return Detections(BOXES[:3], [0.9, 0.8, 0.7])

    def select(self, image, expression, candidates, allow_none=False):
        count = len(candidates) + int(allow_none)
        return [1 / count] * count

    def verify(self, image, expression, candidates):
        self.calls.append(len(candidates))
        return [self.yes[int(box[0])] for box in candidates.boxes]


class CountingExtractor:
    """Extracts "dogs" with the count the LLM would have said."""

    def __init__(self, count):
        self.count = count

    def extract_spans(self, expressions):
        return [ExtractedTarget(e[: e.index("dogs") + 4], (0, e.index("dogs") + 4), "model", None, self.count)
                for e in expressions]


@pytest.fixture
def image():
    return Image.new("RGB", (160, 100), (128, 128, 128))


@pytest.mark.parametrize(("expression", "expected"), [("the dog on the left", 1), ("the two dogs", 2),
                                                       ("all dogs", MANY), ("the cat and the dog", 2)])
def test_multi_auto_returns_as_many_boxes_as_the_expression_says(image, expression, expected):
    agent = Agent("specialist", detector=FourBoxes(), extractor="heuristic", multi="auto", focus=False)
    result = agent.locate(image, expression)
    assert result.expected_count == expected and result.count_source == "heuristic"
    # Boxes reaching specialist_threshold (0.3): three; the count caps them.
    assert len(result.boxes) == {1: 1, 2: 2, MANY: 3}[expected]


def test_the_extraction_models_count_wins_over_the_words(image):
    agent = Agent("specialist", detector=FourBoxes(), extractor=CountingExtractor(2), multi="auto")
    result = agent.locate(image, "all dogs")
    assert result.expected_count == 2 and result.count_source == "model" and len(result.boxes) == 2


def test_multi_false_and_true_are_unchanged(image):
    for multi, count in ((False, 1), (True, 3)):
        agent = Agent("specialist", detector=FourBoxes(), extractor="heuristic", multi=multi, focus=False)
        assert len(agent.locate(image, "the two dogs").boxes) == count


def test_multi_auto_caps_crs_choices_too(image):
    class Even(Verifier):
        def select(self, image, expression, candidates, allow_none=False):
            return [0.3, 0.3, 0.3, 0.1][: len(candidates)]

    agent = Agent("crs", detector=FourBoxes(), mllm=Even({}), extractor="heuristic", multi="auto", focus=False)
    assert len(agent.locate(image, "the two dogs").boxes) == 2
    assert len(agent.locate(image, "the dog").boxes) == 1


def test_verification_keeps_what_passes_up_to_the_count(image):
    yes = {10: 0.9, 50: 0.2, 90: 0.8, 130: 0.6}
    mllm = Verifier(yes)
    agent = Agent("crs", detector=FourBoxes(scores=(0.9, 0.8, 0.7, 0.6)), mllm=mllm, extractor="heuristic",
                  crs_mode="verify", multi="auto", allow_none=True, focus=False)
    result = agent.locate(image, "all dogs")
    assert result.boxes == [BOXES[0], BOXES[2], BOXES[3]] and result.scores == [0.9, 0.8, 0.6]
    assert result.verification == [0.9, 0.2, 0.8, 0.6] and mllm.calls == [4]
    assert len(agent.locate(image, "the two dogs").boxes) == 2
    assert agent.locate(image, "the dog").boxes == [BOXES[0]]


def test_verification_with_nothing_passing_means_no_target_only_when_allowed(image):
    mllm = Verifier({10: 0.1, 50: 0.3, 90: 0.2, 130: 0.05})
    common = dict(detector=FourBoxes(scores=(0.9, 0.8, 0.7, 0.6)), mllm=mllm, extractor="heuristic",
                  crs_mode="verify", focus=False)
    assert Agent("crs", allow_none=True, **common).locate(image, "the dog").boxes == []
    assert Agent("crs", allow_none=False, **common).locate(image, "the dog").boxes == [BOXES[1]]


def test_verification_needs_a_verifying_mllm(image):
    class Chooser:
        def ground(self, image, expression, focus=None):
            return Detections.empty()

        def select(self, image, expression, candidates, allow_none=False):
            return [1.0] + [0.0] * (len(candidates) - 1)

    # Refused when plugged in, before any query: the settings need what the plug-in lacks.
    with pytest.raises(UserInputError, match="Chooser has no verify.* or verify_batch.*which strategy 'crs' needs"):
        Agent("crs", detector=FourBoxes(), mllm=Chooser(), extractor="heuristic", crs_mode="verify")
    with pytest.raises(UserInputError, match="Chooser has no verify"):
        Agent("crs", detector=FourBoxes(), mllm=Chooser(), extractor="heuristic").with_settings(crs_mode="verify")


def test_settings_are_checked():
    with pytest.raises(UserInputError, match="crs_mode"):
        Configuration(crs_mode="vote")
    with pytest.raises(UserInputError, match="crs_permutations"):
        Configuration(crs_permutations=0)
    with pytest.raises(UserInputError, match="verify_threshold"):
        Configuration(verify_threshold=1.5)
    assert Configuration(multi="auto").needs_count and Configuration(multi="auto").uses_extractor
    assert not Configuration(strategy="crs", focus=False).needs_count


# ------------------------------------------------------------------ option-order debiasing


class LetterBiased:
    """Prefers the letter A regardless of content, plus a real preference for box x1 == 50."""

    def __init__(self):
        self.batches = []

    def ground(self, image, expression, focus=None):
        return Detections.empty()

    def select_batch(self, images, expressions, candidates, allow_none):
        self.batches.append(len(candidates))
        return [self._probabilities(boxes, allow_none) for boxes in candidates]

    def select(self, image, expression, candidates, allow_none=False):
        return self._probabilities(candidates, allow_none)

    @staticmethod
    def _probabilities(candidates, allow_none):
        weights = np.array([2.0 if int(box[0]) == 50 else 1.0 for box in candidates.boxes])
        weights[0] += 2.5  # letter A
        weights = np.append(weights, 0.5) if allow_none else weights
        return list(weights / weights.sum())


def test_permutations_average_k_orders_in_one_batched_call(image):
    mllm = LetterBiased()
    common = dict(detector=FourBoxes(scores=(0.9, 0.8, 0.7, 0.6)), mllm=mllm, extractor="heuristic", focus=False)
    biased = Agent("crs", **common).locate(image, "the dog")
    assert biased.boxes == [BOXES[0]]  # letter A wins
    debiased = Agent("crs", crs_permutations=4, **common).locate(image, "the dog")
    assert debiased.boxes == [BOXES[1]] and mllm.batches[-1] == 4  # one call of four orders
    assert debiased.selection.orders == 4 and debiased.selection.disagreement == pytest.approx(0.75)


def test_averaged_probabilities_equal_k_separate_calls():
    candidates = Detections(BOXES, [0.9, 0.8, 0.7, 0.6])
    orders = cyclic_orders(4, 3)
    assert [order.tolist() for order in orders] == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1]]
    separate = [Selection(candidates[order], tuple("ABCDE"), LetterBiased._probabilities(candidates[order], True),
                          True) for order in orders]
    averaged = average_orders(candidates, separate, orders)
    by_hand = np.zeros(5)
    for selection, order in zip(separate, orders):
        for position, candidate in enumerate(order):
            by_hand[candidate] += selection.probabilities[position] / 3
        by_hand[4] += selection.probabilities[4] / 3
    np.testing.assert_allclose(averaged.probabilities, by_hand)
    assert averaged.letters[-1] == "E" and averaged.allow_none  # "None" stays last


def test_finish_is_a_function_of_the_recorded_scores():
    policy = FinishPolicy(allow_none=True, multi="auto", verify_threshold=0.5)
    candidates = Detections(BOXES, [0.9, 0.8, 0.7, 0.6])
    state = {"path": "crs", "candidates": candidates, "verification": [0.9, 0.2, 0.8, 0.6], "expected_count": 2}
    assert finish(state, policy).detections.boxes.tolist() == [BOXES[0], BOXES[2]]
    passing = finish_verification(candidates, np.array([0.9, 0.2, 0.8, 0.6]), policy, Count(limit=None))
    assert len(passing.detections) == 3 and passing.threshold == 0.5


def test_permutations_on_a_tiny_qwen_equal_k_separate_select_calls(tiny_qwen2_vl, street_image):
    from tools.mllm import QwenVL

    qwen = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    detector = FourBoxes(scores=(0.9, 0.8, 0.7, 0.6))
    agent = Agent("crs", detector=detector, mllm=qwen, extractor="heuristic", focus=False, crs_permutations=3,
                  allow_none=True)
    result = agent.locate(street_image, "the red box")
    candidates = result.selection.candidates
    expected = np.zeros(len(candidates) + 1)
    for order in cyclic_orders(len(candidates), 3):
        alone = qwen.select(street_image, "the red box", candidates[order], allow_none=True)
        expected[order] += alone.probabilities[:-1] / 3
        expected[-1] += alone.probabilities[-1] / 3
    np.testing.assert_allclose(result.selection.probabilities, expected, atol=1e-4)
    assert result.selection.orders == 3 and 0 <= result.selection.disagreement <= 1


def test_the_command_line_reaches_every_part(tiny_mm_grounding_dino, tiny_qwen2_vl, street_image, tmp_path, capsys):
    import json

    from agent.cli import main

    picture = tmp_path / "street.png"
    street_image.save(picture)
    base = ["locate", str(picture), "the two boxes", "--detector", str(tiny_mm_grounding_dino), "--mllm",
            str(tiny_qwen2_vl), "--llm", "heuristic", "--device", "cpu", "--json"]
    assert main([*base, "--strategy", "specialist", "--multi", "auto"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["expected_count"] == 2 and len(result["boxes"]) <= 2
    assert main([*base, "--strategy", "crs", "--crs-mode", "verify", "--allow-none", "--verify-threshold", "0.0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["verification"]) == len(result["candidates"]["boxes"]) > 0
    assert len(result["boxes"]) == 1 and all(0 <= p <= 1 for p in result["verification"])  # multi false: one box
    assert main([*base, "--strategy", "crs", "--crs-permutations", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["selection"]["orders"] == 3
    assert main([*base, "--multi", "perhaps"]) == 2
    assert "multi='perhaps': choose false, true or auto" in capsys.readouterr().err
