"""Orchestration with deterministic plug-in backends: which nodes run, with what inputs.

The plug-ins are allowed fakes: they test the graph, not the models.
"""

import numpy as np
import pytest
from PIL import Image

from agent import Agent, Configuration
from tools import Detections
from tools.errors import ModelOutputError, UserInputError
from tools.mllm import Selection

EXPRESSION = "the long snowboard to the right of the skis"
TARGET = "the long snowboard"
BOX_A, BOX_B, BOX_C = [10, 10, 50, 90], [60, 10, 100, 90], [110, 10, 150, 90]


class FakeDetector:
    """One box for the target alone (Level 1) or two separate ones (Level 2)."""

    def __init__(self, instances=1, scores=(0.9, 0.6, 0.4)):
        self.instances = instances
        self.scores = scores
        self.calls = []

    def detect(self, image, text, focus=None):
        self.calls.append((text, focus))
        if text != EXPRESSION:  # the router's query: the target phrase alone
            return Detections([BOX_A, BOX_B][: self.instances], [0.8] * self.instances)
        return Detections([BOX_A, BOX_B, BOX_C], self.scores)


class FakeMLLM:
    def __init__(self, probabilities=None, grounded=([BOX_C], [0.7])):
        self.probabilities = probabilities
        self.grounded = grounded
        self.ground_calls, self.select_calls = [], []

    def ground(self, image, expression, focus=None):
        self.ground_calls.append((expression, focus))
        return self.grounded

    def select(self, image, expression, candidates, allow_none=False):
        self.select_calls.append((expression, len(candidates), allow_none))
        n = len(candidates) + int(allow_none)
        return list(self.probabilities[:n]) if self.probabilities else [1.0 / n] * n


class FakeExtractor:
    def __init__(self, phrase=TARGET):
        self.phrase = phrase
        self.calls = 0

    def extract(self, expressions):
        self.calls += 1
        return [self.phrase for _ in expressions]


@pytest.fixture
def image():
    return Image.new("RGB", (160, 100), (128, 128, 128))


def make(strategy, detector=None, mllm=None, extractor=None, **settings):
    detector = detector or FakeDetector()
    mllm = mllm or FakeMLLM()
    extractor = extractor or FakeExtractor()
    agent = Agent(strategy, detector=detector, mllm=mllm, extractor=extractor, config=Configuration(), **settings)
    return agent, detector, mllm, extractor


def nodes(result):
    return [step for step in result.trace]


def test_sfa_level_1_takes_the_fast_path_with_target_focus(image):
    agent, detector, mllm, _ = make("sfa")
    result = agent.locate(image, EXPRESSION)
    assert nodes(result) == ["extract_target", "route", "specialist", "finish"]
    assert result.level == 1 and result.path == "specialist"
    assert result.target == TARGET and result.target_span == (0, len(TARGET))
    assert detector.calls == [(TARGET, None), (EXPRESSION, (0, len(TARGET)))]
    assert result.boxes == [BOX_A] and result.scores == [0.9]
    assert mllm.ground_calls == []


def test_sfa_level_2_takes_the_slow_path_with_the_focus_prompt(image):
    agent, detector, mllm, _ = make("sfa", detector=FakeDetector(instances=2))
    result = agent.locate(image, EXPRESSION)
    assert nodes(result) == ["extract_target", "route", "mllm", "finish"]
    assert result.level == 2 and result.path == "mllm"
    assert mllm.ground_calls == [(EXPRESSION, TARGET)]
    assert result.boxes == [BOX_C]


def test_sfa_plus_crs_level_2_selects_among_candidates(image):
    mllm = FakeMLLM(probabilities=[0.1, 0.7, 0.2])
    agent, detector, _, _ = make("sfa+crs", detector=FakeDetector(instances=2), mllm=mllm)
    result = agent.locate(image, EXPRESSION)
    assert nodes(result) == ["extract_target", "route", "crs", "finish"]
    assert result.path == "crs" and result.boxes == [BOX_B] and result.scores == pytest.approx([0.7])
    assert result.selection.letter == "B"


def test_focus_off_sends_neither_span_nor_focus_sentence(image):
    agent, detector, mllm, _ = make("sfa", detector=FakeDetector(instances=2), focus=False)
    agent.locate(image, EXPRESSION)
    assert mllm.ground_calls == [(EXPRESSION, None)]
    agent, detector, _, _ = make("specialist", focus=False)
    result = agent.locate(image, EXPRESSION)
    assert detector.calls == [(EXPRESSION, None)] and nodes(result) == ["specialist", "finish"]


@pytest.mark.parametrize(
    "strategy, focus, expected",
    [
        ("specialist", True, ["extract_target", "specialist", "finish"]),
        ("mllm", True, ["extract_target", "mllm", "finish"]),
        ("mllm", False, ["mllm", "finish"]),
        ("crs", True, ["extract_target", "crs", "finish"]),
        ("crs", False, ["crs", "finish"]),
    ],
)
def test_plain_strategies_visit_their_own_nodes(image, strategy, focus, expected):
    agent, _, _, extractor = make(strategy, focus=focus)
    result = agent.locate(image, EXPRESSION)
    assert nodes(result) == expected
    assert result.level is None and result.path == expected[-2]
    assert extractor.calls == (1 if focus else 0)


def test_crs_candidates_are_top_k_then_nms_in_score_order(image):
    # Five boxes, two of them near-duplicates of the best: top-3 then NMS leaves two.
    boxes = [[0, 0, 40, 40], [1, 1, 40, 40], [100, 0, 140, 40], [50, 50, 90, 90], [0, 50, 30, 90]]

    class Many(FakeDetector):
        def detect(self, image, text, focus=None):
            return Detections(boxes, [0.9, 0.85, 0.8, 0.3, 0.2])

    agent, _, mllm, _ = make("crs", detector=Many(), crs_top_k=3, focus=False)
    result = agent.locate(image, EXPRESSION)
    assert result.selection.candidates.boxes.tolist() == [boxes[0], boxes[2]]
    assert mllm.select_calls == [(EXPRESSION, 2, False)]


def test_allow_none_gives_an_empty_result_when_none_wins(image):
    mllm = FakeMLLM(probabilities=[0.1, 0.1, 0.1, 0.7])
    agent, _, _, _ = make("crs", mllm=mllm, allow_none=True)
    result = agent.locate(image, EXPRESSION)
    assert result.boxes == [] and result.scores == [] and not result.found
    assert mllm.select_calls == [(EXPRESSION, 3, True)]
    assert result.selection.letter == "D" and result.selection.none_probability == pytest.approx(0.7)


def test_allow_none_on_the_specialist_path_uses_the_threshold(image):
    agent, _, _, _ = make("specialist", detector=FakeDetector(scores=(0.25, 0.2, 0.1)), allow_none=True)
    assert agent.locate(image, EXPRESSION).boxes == []
    agent, _, _, _ = make("specialist", detector=FakeDetector(scores=(0.25, 0.2, 0.1)), allow_none=False)
    assert agent.locate(image, EXPRESSION).boxes == [BOX_A]


def test_multi_keeps_several_boxes(image):
    agent, _, _, _ = make("specialist", detector=FakeDetector(scores=(0.9, 0.6, 0.1)), multi=True)
    assert agent.locate(image, EXPRESSION).boxes == [BOX_A, BOX_B]
    mllm = FakeMLLM(probabilities=[0.45, 0.1, 0.45])
    agent, _, _, _ = make("crs", mllm=mllm, multi=True)
    result = agent.locate(image, EXPRESSION)
    assert sorted(result.boxes) == sorted([BOX_A, BOX_C]) and len(result.scores) == 2


def test_the_detector_runs_once_per_distinct_text(image):
    # The extracted target is the whole expression: router and fast path share one call.
    detector = FakeDetector(scores=(0.9, 0.1, 0.05))  # one confident instance: Level 1
    agent, _, _, _ = make("sfa", detector=detector, extractor=FakeExtractor(EXPRESSION), focus=False)
    result = agent.locate(image, EXPRESSION)
    assert detector.calls == [(EXPRESSION, None)]
    assert result.path == "specialist"


def test_unusable_mllm_answer_falls_back_to_the_specialist(image):
    agent, _, _, _ = make("sfa", detector=FakeDetector(instances=2), mllm=FakeMLLM(grounded=([], [])))
    result = agent.locate(image, EXPRESSION)
    assert result.boxes == [BOX_A]
    assert any("specialist's top box" in note for note in result.fallbacks)


def test_unreadable_crs_answer_falls_back_to_the_top_candidate(image):
    class Mute(FakeMLLM):
        def select(self, image, expression, candidates, allow_none=False):
            raise ModelOutputError("the reply names no option: 'I think so'")

    agent, _, _, _ = make("crs", mllm=Mute())
    result = agent.locate(image, EXPRESSION)
    assert result.boxes == [BOX_A] and result.selection is None
    assert any("CRS answer was unusable" in note for note in result.fallbacks)


def test_unparseable_grounding_falls_back_to_the_specialist(image):
    class Garbled(FakeMLLM):
        def ground(self, image, expression, focus=None):
            raise ModelOutputError("no box in '(12, 3'")

    agent, _, _, _ = make("sfa", detector=FakeDetector(instances=2), mllm=Garbled())
    result = agent.locate(image, EXPRESSION)
    assert result.boxes == [BOX_A] and len(result.fallbacks) == 2
    agent, _, _, _ = make("mllm", mllm=Garbled(), focus=False)
    result = agent.locate(image, EXPRESSION)
    assert result.boxes == [] and "unusable" in result.fallbacks[0]


def test_control_characters_become_spaces_keeping_spans(image):
    agent, detector, _, _ = make("specialist")
    result = agent.locate(image, "the long\tsnowboard\x00 to the right of the skis")
    assert result.expression == "the long\tsnowboard  to the right of the skis".replace("\t", " ")
    assert detector.calls[0][1] == (0, len(TARGET))


def test_unalignable_target_falls_back_to_the_heuristic(image):
    agent, _, _, _ = make("specialist", extractor=FakeExtractor("a purple giraffe"))
    result = agent.locate(image, EXPRESSION)
    assert result.target_source == "heuristic" and result.target in EXPRESSION
    assert any("heuristic" in note for note in result.fallbacks)


def test_to_dict_is_json_ready_with_timings_and_trace(image):
    import json

    agent, _, _, _ = make("sfa+crs", detector=FakeDetector(instances=2))
    data = json.loads(json.dumps(agent.locate(image, EXPRESSION).to_dict()))
    assert data["trace"] == ["extract_target", "route", "crs", "finish"]
    assert set(data["timings"]) >= {"load_image", "extract_target", "route", "crs", "finish", "total"}
    assert data["level"] == 2 and data["path"] == "crs" and len(data["boxes"]) == 1


def test_plug_ins_may_return_rich_types(image):
    class RichMLLM(FakeMLLM):
        def select(self, image, expression, candidates, allow_none=False):
            return Selection(candidates, list("ABC"), [0.2, 0.2, 0.6])

    agent, _, _, _ = make("crs", mllm=RichMLLM())
    assert agent.locate(image, EXPRESSION).boxes == [BOX_C]


def test_locate_batch_and_input_checks(image):
    agent, detector, _, _ = make("specialist", focus=False)
    results = agent.locate_batch([image, np.zeros((20, 30, 3), np.uint8)], [EXPRESSION, EXPRESSION])
    assert [r.image_size for r in results] == [(160, 100), (30, 20)]
    with pytest.raises(UserInputError, match="empty"):
        agent.locate(image, "  ")
    with pytest.raises(ValueError, match="2 images but 1 expressions"):
        agent.locate_batch([image, image], [EXPRESSION])


def test_models_a_strategy_does_not_use_are_never_loaded(image):
    agent = Agent("specialist", focus=True, detector=FakeDetector(), config=Configuration())
    result = agent.locate(image, EXPRESSION)
    assert result.target_source == "heuristic"  # llm="auto" without an MLLM: the model-free parser
    assert agent.backends.loaded == {"detector", "extractor"}


def test_sfa_plus_crs_detects_target_and_expression_in_one_batched_call(image):
    class Batching(FakeDetector):
        def __init__(self):
            super().__init__(instances=2)
            self.batches = []

        def detect_many(self, image, texts, focuses):
            self.batches.append(list(zip(texts, focuses)))
            return [self.detect(image, text, focus) for text, focus in zip(texts, focuses)]

    detector = Batching()
    agent, _, _, _ = make("sfa+crs", detector=detector)
    result = agent.locate(image, EXPRESSION)
    assert detector.batches == [[(TARGET, None), (EXPRESSION, (0, len(TARGET)))]]
    assert len(detector.calls) == 2 and result.path == "crs"
    # SFA needs the full expression only on Level 1, so it does not batch.
    detector = Batching()
    make("sfa", detector=detector)[0].locate(image, EXPRESSION)
    assert detector.batches == [] and detector.calls == [(TARGET, None)]


def test_locate_batch_decodes_each_image_file_once(tmp_path, image, monkeypatch):
    import agent.agent as agent_module

    path = tmp_path / "scene.png"
    image.save(path)
    decoded = []
    real_load = agent_module.load_image

    def counting_load(source, **options):
        if not isinstance(source, Image.Image):
            decoded.append(str(source))
        return real_load(source, **options)

    monkeypatch.setattr(agent_module, "load_image", counting_load)
    agent, _, _, _ = make("specialist", focus=False)
    results = agent.locate_batch([path, path, str(path)], ["a", "b", "c"])
    assert decoded == [str(path)] and len(results) == 3


def test_prefetched_targets_are_asked_in_batches_then_served_from_the_cache(image):
    import json as json_module

    from tools.extraction import LocalChatExtractor

    class Generator:
        prompts = 0

        def generate_text(self, prompt, max_new_tokens=512):
            Generator.prompts += 1
            asked = json_module.loads(prompt.rsplit("Expressions: ", 1)[1].splitlines()[0])
            return json_module.dumps({key: "the dog" for key in asked})

    expressions = [f"the dog number {i}" for i in range(10)]
    agent = Agent("specialist", detector=FakeDetector(), extractor=LocalChatExtractor(Generator()),
                  config=Configuration())
    agent.prefetch_targets(expressions + ["  "])  # a blank one is left for locate to report
    assert Generator.prompts == 2  # 8 + 2 expressions
    result = agent.locate(image, expressions[3])
    assert Generator.prompts == 2 and result.target == "the dog" and result.fallbacks == []


def test_with_settings_shares_the_models_and_keeps_the_model_settings(image):
    base = Agent("specialist", detector=FakeDetector(instances=2), mllm=FakeMLLM(), extractor=FakeExtractor(),
                 config=Configuration())
    variant = base.with_settings(strategy="sfa+crs", allow_none=True)
    assert (variant.config.strategy, variant.config.allow_none) == ("sfa+crs", True)
    assert (base.config.strategy, base.config.allow_none) == ("specialist", False)
    assert variant.backends.detector is base.backends.detector and variant.backends.mllm is base.backends.mllm
    assert variant.locate(image, EXPRESSION).path == "crs" and base.locate(image, EXPRESSION).path == "specialist"
    with pytest.raises(UserInputError, match="cannot change detector, device"):
        base.with_settings(device="cuda", detector="other", strategy="crs")
    with pytest.raises(UserInputError, match="unknown strategy"):
        base.with_settings(strategy="fast")


def test_variants_load_each_model_once_and_only_when_needed(image, monkeypatch):
    from agent import backends as backends_module

    loads = []
    monkeypatch.setattr(backends_module, "load_mllm", lambda config: loads.append(config.strategy) or FakeMLLM())
    base = Agent("specialist", detector=FakeDetector(instances=2), config=Configuration(llm="heuristic"))
    base.locate(image, EXPRESSION)
    assert base.backends.loaded == {"detector", "extractor"} and loads == []
    for strategy in ("crs", "mllm", "sfa"):
        base.with_settings(strategy=strategy).locate(image, EXPRESSION)
    assert loads == ["crs"] and base.backends.loaded == {"detector", "extractor", "mllm"}


def test_a_low_option_mass_is_noted_in_the_fallbacks(image):
    class Unsure(FakeMLLM):
        def select(self, image, expression, candidates, allow_none=False):
            n = len(candidates) + int(allow_none)
            return Selection(candidates, [chr(65 + i) for i in range(n)], [1 / n] * n, allow_none, option_mass=0.2)

    result = Agent(strategy="crs", focus=False, detector=FakeDetector(), mllm=Unsure()).locate(image, EXPRESSION)
    assert any("only 20% of the MLLM's next-token probability" in note for note in result.fallbacks)
    assert result.found  # the choice among the letters still stands
    sure = Agent(strategy="crs", focus=False, detector=FakeDetector(), mllm=FakeMLLM()).locate(image, EXPRESSION)
    assert not sure.fallbacks


def test_the_detector_keeps_float32_unless_detector_dtype_says_otherwise(tiny_mm_grounding_dino):
    import torch

    agent = Agent(strategy="specialist", focus=False, detector=str(tiny_mm_grounding_dino), dtype="bf16")
    assert next(agent.backends.detector.model.parameters()).dtype == torch.float32
    half = agent.config.updated(detector_dtype="bf16")
    detector = Agent(config=half).backends.detector
    assert next(detector.model.parameters()).dtype == torch.bfloat16
