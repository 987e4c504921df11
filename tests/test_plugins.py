"""Plug-ins are checked against their kind's Protocols when they are plugged in (issue 27)."""

from __future__ import annotations

import pytest

from agent import Agent
from agent.configuration import Configuration
from tools.detections import Detections
from tools.detectors.base import DetectorExtras
from tools.errors import UserInputError
from tools.extraction.base import ExtractorExtras
from tools.mllm.base import MLLMExtras
from tools.protocols import protocol_methods


class Detector:
    def detect(self, image, text, focus=None):
        return Detections([[0, 0, 5, 5]], [0.9])


class Grounder:
    def ground(self, image, expression, focus=None):
        return [[0, 0, 5, 5]], [0.9]

    def select(self, image, expression, candidates, allow_none=False):
        return [1.0] + [0.0] * (len(candidates) - 1 + allow_none)


def agent(strategy="sfa", **plugins):
    return Agent(strategy, config=Configuration(), **{"extractor": "heuristic", **plugins})


def test_every_optional_method_is_declared_in_its_kinds_protocol():
    assert set(protocol_methods(DetectorExtras)) == {"detect_many", "detect_batch"}
    assert set(protocol_methods(MLLMExtras)) == {"ground_batch", "select_batch", "verify", "verify_batch", "count",
                                                 "count_batch"}
    assert set(protocol_methods(ExtractorExtras)) == {"extract_spans"}
    assert all("thread_safe" in extras.__annotations__ for extras in (DetectorExtras, MLLMExtras, ExtractorExtras))


def test_a_plug_in_without_what_the_strategy_needs_is_one_line_when_plugged_in():
    with pytest.raises(UserInputError, match=r"the detector plug-in object has no detect\(image, text, focus=...\) "
                                             r"method, which strategy 'sfa' needs \(tools.detectors.base.Detector\)"):
        agent(detector=object(), mllm=Grounder())
    class Selector:
        def select(self, image, expression, candidates, allow_none=False):
            return [1.0]

    agent("crs", detector=Detector(), mllm=Selector())  # CRS asks select only
    with pytest.raises(UserInputError, match=r"Selector has no ground\(image, expression, focus=...\) method"):
        agent("sfa", detector=Detector(), mllm=Selector())
    with pytest.raises(UserInputError, match="has no extract.* or extract_spans"):
        agent(detector=Detector(), mllm=Grounder(), extractor=object())


@pytest.mark.parametrize("method, fragment", [
    ("def detect(self, image): ...", r"detect cannot be called as detect\(image, text, focus=...\)"),
    ("detect = 3", "detect is not a method"),
    ("def detect_batch(self, images): ...", r"detect_batch cannot be called as detect_batch\(images, texts, focuses\)"),
])
def test_a_mistyped_method_is_named_before_any_query(method, fragment):
    namespace: dict = {}
    exec(f"class Mistyped(Detector):\n    {method}", {"Detector": Detector}, namespace)
    with pytest.raises(UserInputError, match=fragment):
        agent("specialist", detector=namespace["Mistyped"]())


def test_methods_taking_more_keywords_or_var_args_are_accepted():
    class Flexible:
        def detect(self, image, text, focus=None, *, resize="transformers"):
            return [[0, 0, 5, 5]], [0.9]

        def detect_many(self, *args, **kwargs):
            return [self.detect(None, None)] * len(args[1])

    class Spans:
        def extract_spans(self, expressions):
            from tools.extraction import heuristic_extraction

            return [heuristic_extraction(expression) for expression in expressions]

    from PIL import Image

    result = agent("specialist", detector=Flexible(), extractor=Spans()).locate(Image.new("RGB", (9, 9)), "the cup")
    assert result.boxes == [[0, 0, 5, 5]]


def test_the_servers_response_model_is_the_result():
    """``Result`` is the one declaration of the result: the server's ``LocateResult`` has exactly its
    ``to_dict()`` keys, in order, and reads a fully filled result back unchanged."""
    import numpy as np

    from agent.result import Result
    from agent.serve.schemas import LocateResult
    from tools.mllm.selection import Selection

    boxes = Detections([[0, 0, 5, 5], [1, 1, 6, 6]], [0.9, 0.2])
    result = Result("the cup", (9, 9), "crs", boxes[:1], level=2, path="crs", target="cup", target_span=(4, 7),
                    target_source="model", selection=Selection(boxes, ["A", "B", "C"], np.array([0.7, 0.2, 0.1]), True),
                    expected_count=1, count_source="model", count_probabilities=[0.1] * 7, decision_threshold=0.5,
                    candidates=boxes, proposals=boxes, verification=[0.9, 0.1], path_answer=boxes,
                    trace=["crs", "finish"], timings={"crs": 0.1}, fallbacks=["x"])
    data = result.to_dict()
    assert list(LocateResult.model_fields) == list(data)
    assert LocateResult.model_validate(data).model_dump(mode="json") == json_roundtrip(data)


def json_roundtrip(data):
    import json

    return json.loads(json.dumps(data))


def test_a_thread_safe_that_is_no_bool_is_refused():
    class Odd(Detector):
        thread_safe = "yes"

    with pytest.raises(UserInputError, match="thread_safe must be True or False"):
        agent("specialist", detector=Odd())
