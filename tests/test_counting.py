"""Counting as GREx teaches: the MLLM's count of the targets over the candidates (0..5, "more"),
the decisions it drives, and its token ids on the real Qwen2 vocabulary and a tiny Qwen2-VL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent import Agent
from agent.finishing import FinishPolicy, decide_count, finish
from tests.fake_openai_server import FakeChatServer, completion, token
from tools import Detections
from tools.errors import ModelOutputError, UserInputError
from tools.mllm.counting import COUNT_ANSWERS, MORE, count_token_ids, image_count
from tools.mllm.openai_compat import OpenAICompatibleMLLM
from tools.mllm.selection import Selection

BOXES = [[10, 10, 40, 90], [50, 10, 80, 90], [90, 10, 120, 90], [130, 10, 150, 90]]


def counted(n, confidence: float = 0.8) -> list[float]:
    """Probabilities over COUNT_ANSWERS with ``confidence`` on answer ``n`` (an index or "more")."""
    index = COUNT_ANSWERS.index(MORE) if n == MORE else n
    probabilities = np.full(len(COUNT_ANSWERS), (1 - confidence) / (len(COUNT_ANSWERS) - 1))
    probabilities[index] = confidence
    return probabilities.tolist()


class Counter:
    """A plug-in MLLM: grounds three boxes, picks options, verifies and counts as told."""

    def __init__(self, count=None, options=(0.1, 0.5, 0.2, 0.15, 0.05), yes=(0.9, 0.2, 0.8, 0.6)):
        self.count_answer, self.options, self.yes, self.asked = count, options, yes, []

    def ground(self, image, expression, focus=None):
        return Detections(BOXES[:3], [0.9, 0.4, 0.3])

    def select(self, image, expression, candidates, allow_none=False):
        return list(self.options[: len(candidates) + allow_none])

    def verify(self, image, expression, candidates):
        return list(self.yes[: len(candidates)])

    def count(self, image, expression, candidates):
        self.asked.append(len(candidates))
        return self.count_answer


class Boxes:
    def __init__(self, scores=(0.9, 0.35, 0.2, 0.1)):
        self.scores = scores

    def detect(self, image, text, focus=None):
        return Detections(BOXES, self.scores)


@pytest.fixture
def image():
    return Image.new("RGB", (160, 100), (128, 128, 128))


def run(image, count, expression="the dogs", strategy="specialist", **settings):
    settings = {"multi": "auto", "count_mode": "image", "allow_none": True, "focus": False, **settings}
    mllm = Counter(count)
    result = Agent(strategy, detector=Boxes(), mllm=mllm, extractor="heuristic", **settings).locate(image, expression)
    return result, mllm


# Each case: the count the MLLM answers, the expression, the settings, the boxes expected.
DECISIONS = [
    (counted(0), "the dogs", {}, []),  # 0 most probable: no target
    (counted(0), "the dogs", {"allow_none": False}, BOXES[:1]),  # plain REC: 0 is not an answer
    (counted(1), "the dogs", {}, BOXES[:1]),
    (counted(2), "the dogs", {}, BOXES[:2]),  # the top two, the second below the 0.3 threshold
    (counted(3), "the dog", {}, BOXES[:3]),  # no threshold: 0.2 is kept too
    (counted(5), "the dogs", {}, BOXES[:4]),  # no more than there are
    (counted(MORE), "the dogs", {}, BOXES[:2]),  # "more": the threshold (0.3) decides, no cap
    (counted(1), "the two dogs", {"count_mode": "both"}, BOXES[:2]),  # a stated number wins
    (counted(3), "the dog", {"count_mode": "both"}, BOXES[:3]),  # no number stated: the image's
    (counted(0), "all dogs", {"count_mode": "both"}, []),  # a plural states no number
    (counted(0), "the two dogs", {"count_mode": "text"}, BOXES[:2]),  # text: the stated number, top n
    (counted(0), "all dogs", {"count_mode": "text"}, BOXES[:2]),  # text plural: thresholding
    (counted(0), "the dog", {"count_mode": "text"}, BOXES[:1]),  # text singular: one, thresholded
    ([0.35, 0.45, 0.2, 0, 0, 0, 0], "the dogs", {"count_zero_threshold": 0.3}, []),  # p(0) reaches 0.3
    ([0.45, 0.15, 0.4, 0, 0, 0, 0], "the dogs", {"count_zero_threshold": 0.5}, BOXES[:2]),  # not 0: then 2
    ([0.1, 0.45, 0.45, 0, 0, 0, 0], "the dogs", {}, BOXES[:1]),  # a tie: the smaller count
    (2, "the dogs", {}, BOXES[:2]),  # a plug-in may answer a plain count
    ("more", "the dogs", {}, BOXES[:2]),
    (7, "the dogs", {}, BOXES[:2]),  # beyond 5 is "more"
    (counted(2), "the dogs", {"multi": False}, BOXES[:1]),  # the count is read with multi=auto only
    (counted(2), "the dogs", {"multi": True}, BOXES[:2]),
]


@pytest.mark.parametrize(("count", "expression", "settings", "expected"), DECISIONS)
def test_the_count_decides_how_many_boxes(image, count, expression, settings, expected):
    result, mllm = run(image, count, expression, **settings)
    assert result.boxes == expected
    mode = settings.get("count_mode", "image")
    asked = settings.get("multi", "auto") == "auto" and mode != "text" and not (mode == "both" and "two" in expression)
    assert bool(mllm.asked) == asked
    assert ("count_targets" in result.trace) == (settings.get("multi", "auto") == "auto" and mode != "text")
    if asked:
        assert len(result.count_probabilities) == len(COUNT_ANSWERS)


@pytest.mark.parametrize(("strategy", "settings", "count", "expected"), [
    ("crs", {}, counted(2), [BOXES[1], BOXES[2]]),  # the two likeliest options, whatever won
    ("crs", {}, counted(0), []),
    ("crs", {}, counted(MORE), [BOXES[1]]),  # multi_ratio 0.5 x 0.5: only 0.5 itself
    ("crs", {"crs_mode": "verify"}, counted(3), [BOXES[0], BOXES[2], BOXES[3]]),  # by p(yes)
    ("crs", {"crs_mode": "verify"}, counted(MORE), [BOXES[0], BOXES[2], BOXES[3]]),  # p(yes) >= 0.5
    ("mllm", {}, counted(2), BOXES[:2]),  # the first two written, below mllm_threshold or not
])
def test_every_path_takes_the_top_n_of_its_own_scores(image, strategy, settings, count, expected):
    result, mllm = run(image, count, strategy=strategy, **settings)
    assert result.boxes == expected and result.count_source == "image"


def test_the_count_is_asked_about_the_paths_candidates_and_recorded(image):
    result, mllm = run(image, counted(2), strategy="crs")
    assert mllm.asked == [len(result.candidates)]
    specialist, mllm = run(image, counted(2))
    assert mllm.asked == [4] and specialist.count_source == "image"
    state = {"path": "specialist", "answer": Detections(BOXES, [0.9, 0.35, 0.2, 0.1]), "expected_count": MANY_,
             "count_probabilities": specialist.count_probabilities}
    policy = FinishPolicy(allow_none=True, multi="auto", count_mode="image")
    assert finish(state, policy).detections.boxes.tolist() == specialist.boxes  # a function of the record
    assert decide_count(state, policy).top == 2


MANY_ = "many"


def test_a_count_the_plug_in_cannot_give_falls_back_to_the_text(image):
    result, _ = run(image, [0.5, 0.5], "the two dogs")
    assert result.boxes == BOXES[:2] and result.count_probabilities is None
    assert any("count was unusable" in note for note in result.fallbacks)
    class Uncounting:
        def ground(self, image, expression, focus=None):
            return [], []

        def select(self, image, expression, candidates, allow_none=False):
            return [1.0] + [0.0] * (len(candidates) - 1 + allow_none)

    with pytest.raises(UserInputError, match="count_mode image needs an MLLM with count"):
        Agent("specialist", detector=Boxes(), mllm=Uncounting(), extractor="heuristic", multi="auto",
              count_mode="image").locate(image, "the dogs")


def test_image_count_rules():
    assert image_count(counted(0)) == 0 and image_count(counted(0), allow_zero=False) in range(1, 6)
    assert image_count(counted(MORE)) == MORE
    assert image_count([0.3, 0.7, 0, 0, 0, 0, 0], 0.3) == 0 and image_count([0.3, 0.7, 0, 0, 0, 0, 0], 0.31) == 1
    with pytest.raises(UserInputError, match="count_mode"):
        Agent(count_mode="many")
    with pytest.raises(UserInputError, match="count_zero_threshold"):
        Agent(count_zero_threshold=1.5)
    assert Agent("specialist", multi="auto", count_mode="image").config.uses_mllm


def test_count_ids_on_the_real_qwen2_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    from tests.real_vocab import unpack_qwen2_vl_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(unpack_qwen2_vl_tokenizer(tmp_path))
    ids = count_token_ids(tokenizer)
    # Qwen2 writes each digit as a token of its own ("0" = 15, ..., "5" = 20), a space before it apart.
    assert [spellings for spellings in ids[:6]] == [[15 + digit] for digit in range(6)]
    assert sorted(tokenizer.decode([i]) for i in ids[-1]) == sorted(["more", " more", "More", " More"])


def test_a_tiny_qwen_counts_in_one_forward_pass_never_generating(tiny_qwen2_vl, street_image, monkeypatch):
    from tools.mllm import QwenVL

    qwen = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    monkeypatch.setattr(qwen.model, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated")))
    passes = []
    handle = qwen.model.register_forward_hook(lambda *args: passes.append(1))
    try:
        batch = qwen.count_batch([street_image, street_image], ["the red box", "two boxes"],
                                 [Detections(BOXES[:2], [0.9, 0.8]), Detections.empty()])
    finally:
        handle.remove()
    assert len(passes) == 1 and [len(p) for p in batch] == [7, 7]
    assert all(np.isclose(p.sum(), 1) for p in batch)
    np.testing.assert_allclose(qwen.count(street_image, "the red box", Detections(BOXES[:2], [0.9, 0.8])), batch[0],
                               atol=1e-5)


def test_a_served_model_counts_from_its_top_log_probabilities(image):
    replies = [completion("2", [token("2", -0.2, [("2", -0.2), (" 3", -2.0), ("more", -3.0), ("dogs", -4.0)])]),
               completion("I see 3 of them."), completion("I cannot tell.")]
    with FakeChatServer(lambda body, attempt: replies.pop(0)) as server:
        mllm = OpenAICompatibleMLLM("qwen2-vl", base_url=server.base_url, api_key="sk")
        candidates = Detections(BOXES[:2], [0.9, 0.8])
        first = mllm.count(image, "the dogs", candidates)
        second = mllm.count(image, "the dogs", candidates)  # no log-probabilities: the number the text names
        with pytest.raises(ModelOutputError, match="names no count"):
            mllm.count(image, "the dogs", candidates)
        sent, question = server.requests[0], server.user_texts()[0]
    mass = np.exp([-0.2, -2.0, -3.0])
    np.testing.assert_allclose(first[[2, 3, 6]], mass / mass.sum())
    assert second.tolist() == counted(3, 1.0)
    assert sent["max_tokens"] == 1 and "How many objects" in question
    assert "Candidate boxes:\n- (62,100),(250,900)\n- (312,100),(500,900)\n" in question  # Qwen2-VL's box language


def test_selection_top_n_skips_none_and_unread_answers():
    candidates = Detections(BOXES[:3], [0.9, 0.8, 0.7])
    selection = Selection(candidates, ("A", "B", "C", "D"), [0.1, 0.3, 0.2, 0.4], allow_none=True)
    state = {"path": "crs", "candidates": candidates, "selection": selection, "expected_count": 2}
    policy = FinishPolicy(allow_none=True, multi="auto")
    assert finish(state, policy).detections.boxes.tolist() == [BOXES[1], BOXES[2]]  # "None" (0.4) is no candidate


def test_no_count_pass_when_the_text_states_a_number_in_both_mode_or_nothing_was_found(image):
    result, mllm = run(image, counted(0), "the two dogs", count_mode="both")
    assert mllm.asked == [] and result.boxes == BOXES[:2] and result.count_probabilities is None

    class Nothing(Boxes):
        def detect(self, image, text, focus=None):
            return Detections.empty()

    counter = Counter(counted(3))
    Agent("specialist", detector=Nothing(), mllm=counter, extractor="heuristic", multi="auto", count_mode="image",
          allow_none=True).locate(image, "the dogs")
    assert counter.asked == []


@pytest.mark.parametrize(("reply", "index"), [("2", 2), ("There are two.", 2), ("none", 0), ("5+", 6), ("12", 6),
                                             ("more than five", 6), ("zero", 0)])
def test_a_count_named_in_a_reply_is_read(reply, index):
    from tools.mllm.counting import count_from_text

    assert int(np.argmax(count_from_text(reply))) == index
