"""The typed state that flows through the graph, one per query."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import numpy as np
from PIL import Image

from tools.detections import Detections
from tools.extraction.count import ExpectedCount
from tools.mllm.selection import Selection


def merge(left: dict, right: dict) -> dict:
    """Reducer: later nodes add keys to a dict instead of replacing it."""
    return {**left, **right}


class AgentInput(TypedDict, total=False):
    """What ``Agent.locate`` gives the graph (its ``input_schema``); the image is decoded once per query."""

    image: Image.Image
    expression: str
    given_target: Any  # the caller's target (``locate(target=...)``): the extractor is not asked
    mllm_image: Image.Image | None  # what the MLLM sees when it is not ``image``: the pixels as stored


class AgentState(AgentInput, total=False):
    # Target extraction
    target: str | None
    target_span: tuple[int, int] | None
    target_source: str | None  # "model" (an extractor's answer, plug-ins included) or "heuristic"
    target_answer: str | None  # the extractor's own words for the target (``target`` when it has none)
    expected_count: ExpectedCount | None  # how many objects the expression names: 1, n or "many"
    count_source: str | None  # the text's "model" (the extraction call) or "heuristic" (the words), or "image"
    count_probabilities: list[float] | None  # the MLLM's count, one per COUNT_ANSWERS (count_mode image/both)
    # Routing (SFA)
    instance_count: int | None
    level: int | None
    # CRS
    proposals: Detections | None  # the detector's first boxes for the expression, before top-k and NMS
    candidates: Detections | None
    selection: Selection | None
    verification: np.ndarray | None  # crs_mode="verify": p(yes) per candidate
    # The answer of the path taken, before the finishing policy (allow_none / multi)
    path: str | None
    answer: Detections
    # The final answer, and the score its boxes had to reach (0: returned without one)
    detections: Detections
    decision_threshold: float
    # Bookkeeping
    trace: Annotated[list[str], operator.add]
    timings: Annotated[dict[str, float], merge]
    fallbacks: Annotated[list[str], operator.add]
