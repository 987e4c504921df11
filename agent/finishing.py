"""The generalized-REC policy: from the answering path's raw scores to zero, one or several boxes.

Pure functions of recorded scores and a ``FinishPolicy``, so the agent's ``finish`` node and
``agent-cli calibrate`` (which re-scores recorded predictions at other thresholds, without any
model) give the same boxes. How many boxes may come back (``decide_count``):

- ``multi=False``: one (with ``allow_none``, only when it reaches its path's threshold);
  ``multi=True``: every distinct box reaching the threshold;
- ``multi="auto"``: what the count says. From the text (``count_mode="text"``,
  ``tools.extraction.count``): a number the expression states ("the two dogs", "both") gives
  the top n boxes, a plural or "all" thresholding without a cap, a singular one box. From the
  image (``"image"``: the MLLM's count, ``tools.mllm.counting``): 0 no target, 1..5 the top n
  boxes, "more" thresholding. ``"both"``: the image's count, unless the text states a number.

"Top n" takes the path's candidates by its own score (the specialist's distinct boxes, the CRS
options' probabilities or ``p(yes)``; an MLLM's boxes in the order it wrote them), no threshold.

Each answer also says the threshold its boxes passed (``Finished.threshold``; 0 when they were
returned without one): the written scores are aligned to it
(``tools.evaluation.predictions.decision_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from tools import boxes as box_ops
from tools.detections import Detections
from tools.extraction.count import MANY, ExpectedCount
from tools.mllm.counting import MORE, image_count

from .configuration import AUTO, Configuration

# The path answer a prediction records for re-scoring: its distinct boxes, this many at most.
RECORDED_BOXES = 20


@dataclass(frozen=True)
class FinishPolicy:
    """The settings the finishing policy reads (``Configuration``'s fields of the same names)."""

    allow_none: bool = False
    multi: bool | str = False
    specialist_threshold: float = 0.3
    mllm_threshold: float = 0.5
    multi_ratio: float = 0.5
    verify_threshold: float = 0.5
    crs_iou_threshold: float = 0.7
    count_mode: str = "text"
    count_zero_threshold: float | None = None

    @classmethod
    def of(cls, config: Configuration) -> "FinishPolicy":
        return cls(**{item.name: getattr(config, item.name) for item in fields(cls)})


THRESHOLDS = ("specialist_threshold", "mllm_threshold", "multi_ratio", "verify_threshold", "count_zero_threshold")


@dataclass(frozen=True)
class Count:
    """How many boxes an answer may hold: ``top`` exactly the best n (no threshold), else at most
    ``limit`` (``None``: no cap) of those reaching the threshold; ``source`` "text" or "image"."""

    limit: int | None = 1
    top: int | None = None
    source: str = "text"


@dataclass(frozen=True)
class Finished:
    """The final boxes with their raw scores, the score each had to reach (0: returned without one),
    and where the count came from ("text" or "image")."""

    detections: Detections
    threshold: float = 0.0
    count_source: str = "text"


def decide_count(state: dict[str, Any], policy: FinishPolicy) -> Count:
    """How many boxes the query's answer may hold (module docstring), from what it recorded."""
    if policy.multi is True:
        return Count(limit=None)
    if policy.multi != AUTO:
        return Count()
    text: ExpectedCount | None = state.get("expected_count")
    stated = stated_count(text)
    probabilities = state.get("count_probabilities")
    if policy.count_mode == "text" or probabilities is None or (policy.count_mode == "both" and stated):
        if stated:
            return Count(top=stated)
        return Count(limit=None) if text == MANY else Count()
    counted = image_count(probabilities, policy.count_zero_threshold, allow_zero=policy.allow_none)
    if counted == MORE:
        return Count(limit=None, source="image")
    return Count(top=int(counted), source="image")


def stated_count(text: ExpectedCount | None) -> int | None:
    """The number the expression states ("the two dogs", "both": 2); ``None`` for a singular or plural."""
    return text if isinstance(text, int) and text > 1 else None


def finish_boxes(answer: Detections, policy: FinishPolicy, threshold: float, count: Count) -> Finished:
    """A specialist answer (best first) or an MLLM answer (in the order written); either way the
    first box is the answer.

    ``count.top``: its first n distinct boxes. With a limit of one box only the first is kept, and
    with ``allow_none`` only if its score reaches ``threshold`` (an unsure answer is "no target").
    Otherwise every distinct box reaching ``threshold`` is kept, in the answer's order, up to the
    limit (at least the first one unless ``allow_none``).
    """
    if count.top is not None:
        return Finished(_distinct(answer, policy)[:count.top])
    if count.limit == 1:
        if not policy.allow_none:
            return Finished(answer[:1])
        return Finished(answer[:1].above(threshold), threshold)
    kept = _distinct(answer.above(threshold), policy)[:count.limit]
    if len(kept) or policy.allow_none:
        return Finished(kept, threshold)
    return Finished(answer[:1])


def finish_selection(selection, policy: FinishPolicy, count: Count) -> Finished:
    """The chosen candidate(s) of a CRS selection, scored by their option probability.

    "None" winning gives no box; a generated answer naming no option the evaluators' zero box.
    ``count.top``: the n most probable candidates, whatever won. Allowed several, every candidate
    whose probability is at least ``multi_ratio`` times the best option's is kept, best first, up
    to the limit.
    """
    probabilities = selection.probabilities[: len(selection.candidates)]
    if count.top is not None and not selection.unread:
        order = np.argsort(-probabilities, kind="stable")[:count.top]
        return Finished(Detections(selection.candidates.boxes[order], probabilities[order]))
    if selection.index is None or count.limit == 1:
        return Finished(selection.to_detections())
    threshold = policy.multi_ratio * selection.probability
    keep = np.flatnonzero(probabilities >= threshold)
    return Finished(Detections(selection.candidates.boxes[keep], probabilities[keep]).sorted()[:count.limit], threshold)


def finish_verification(candidates: Detections, yes: np.ndarray, policy: FinishPolicy, count: Count) -> Finished:
    """The verified candidates: ``p(yes)`` at or above ``verify_threshold``, best first, up to the
    limit, scored by ``p(yes)`` (``count.top``: the n likeliest, no threshold). None passing means no
    target with ``allow_none``; without it (plain REC wants a box) the most probable candidate answers."""
    verified = Detections(candidates.boxes, yes).sorted()
    if count.top is not None:
        return Finished(verified[:count.top])
    passing = verified.above(policy.verify_threshold)[:count.limit]
    if len(passing) or policy.allow_none:
        return Finished(passing, policy.verify_threshold)
    return Finished(verified[:1])


def finish(state: dict[str, Any], policy: FinishPolicy) -> Finished:
    """The final boxes of a query from what its path recorded (``state`` keys, or a prediction's fields)."""
    count = decide_count(state, policy)
    return replace(_finished(state, policy, count), count_source=count.source)


def _finished(state: dict[str, Any], policy: FinishPolicy, count: Count) -> Finished:
    path = state.get("path")
    if count.top == 0:
        return Finished(Detections.empty())
    if path == "crs" and state.get("verification") is not None:
        return finish_verification(state["candidates"], np.asarray(state["verification"]), policy, count)
    if path == "crs" and state.get("selection") is not None:
        return finish_selection(state["selection"], policy, count)
    if path == "crs":
        return Finished(state["answer"])
    threshold = policy.specialist_threshold if path == "specialist" else policy.mllm_threshold
    return finish_boxes(state["answer"], policy, threshold, count)


def recorded_answer(path: str | None, answer: Detections, policy: FinishPolicy) -> Detections:
    """What a prediction keeps of a path's answer so that ``finish`` gives the same boxes at any
    thresholds: a specialist answer's distinct boxes (NMS commutes with a score threshold), best
    first, ``RECORDED_BOXES`` at most; an MLLM answer as written."""
    if path == "specialist":
        return answer.nms(policy.crs_iou_threshold)[:RECORDED_BOXES]
    return answer


def count_candidates(path: str | None, state: dict[str, Any], policy: FinishPolicy, most: int) -> Detections:
    """The boxes the image count is asked about: the CRS candidates, or the path's ``most`` first
    distinct boxes."""
    if path == "crs" and state.get("candidates") is not None:
        return state["candidates"]
    return _distinct(state.get("answer", Detections.empty()), policy)[:most]


def _distinct(answer: Detections, policy: FinishPolicy) -> Detections:
    """``answer``'s boxes without near-duplicates (NMS at ``crs_iou_threshold``), in its order."""
    if len(answer) < 2:
        return answer
    return answer[np.sort(box_ops.nms(answer.boxes, answer.scores, policy.crs_iou_threshold))]
