"""The generalized-REC policy: from the answering path's raw scores to zero, one or several boxes.

Pure functions of recorded scores and a ``FinishPolicy``, so the agent's ``finish`` node and
``agent-cli calibrate`` (which re-scores recorded predictions at other thresholds, without any
model) give the same boxes. How many boxes may come back is ``box_limit``: one without
``multi``, no limit with ``multi=True``, and with ``multi="auto"`` as many as the expression
says (``tools.extraction.count``: "the two dogs" two, "all dogs" no limit, "the dog" one).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from tools import boxes as box_ops
from tools.detections import Detections
from tools.extraction.count import ExpectedCount, box_limit, is_multiple

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

    @classmethod
    def of(cls, config: Configuration) -> "FinishPolicy":
        return cls(**{item.name: getattr(config, item.name) for item in fields(cls)})

    def limit(self, expected_count: ExpectedCount | None) -> int | None:
        """How many boxes may come back: 1, a number, or ``None`` (no limit)."""
        if self.multi is True:
            return None
        if self.multi == AUTO and is_multiple(expected_count):
            return box_limit(expected_count)
        return 1


THRESHOLDS = ("specialist_threshold", "mllm_threshold", "multi_ratio", "verify_threshold")


def finish_boxes(answer: Detections, policy: FinishPolicy, threshold: float, limit: int | None) -> Detections:
    """A specialist answer (best first) or an MLLM answer (in the order written); either way the
    first box is the answer.

    With a limit of one box only the first is kept, and with ``allow_none`` only if its score
    reaches ``threshold`` (an unsure answer is "no target"). Otherwise every distinct box reaching
    ``threshold`` is kept, in the answer's order, up to ``limit`` (at least the first one unless
    ``allow_none``).
    """
    if limit == 1:
        first = answer[:1]
        return first.above(threshold) if policy.allow_none else first
    confident = answer.above(threshold)
    kept = confident[np.sort(box_ops.nms(confident.boxes, confident.scores, policy.crs_iou_threshold))][:limit]
    return kept if len(kept) or policy.allow_none else answer[:1]


def finish_selection(selection, policy: FinishPolicy, limit: int | None) -> Detections:
    """The chosen candidate(s) of a CRS selection, scored by their option probability.

    "None" winning gives no box; a generated answer naming no option the evaluators' zero box.
    Allowed several, every candidate whose probability is at least ``multi_ratio`` times the best
    option's is kept, best first, up to ``limit``.
    """
    if selection.index is None or limit == 1:
        return selection.to_detections()
    probabilities = selection.probabilities[: len(selection.candidates)]
    keep = np.flatnonzero(probabilities >= policy.multi_ratio * selection.probability)
    return Detections(selection.candidates.boxes[keep], probabilities[keep]).sorted()[:limit]


def finish_verification(candidates: Detections, yes: np.ndarray, policy: FinishPolicy,
                        limit: int | None) -> Detections:
    """The verified candidates: ``p(yes)`` at or above ``verify_threshold``, best first, up to ``limit``,
    scored by ``p(yes)``. None passing means no target with ``allow_none``; without it (plain REC
    wants a box) the most probable candidate answers."""
    verified = Detections(candidates.boxes, yes).sorted()
    passing = verified.above(policy.verify_threshold)[:limit]
    return passing if len(passing) or policy.allow_none else verified[:1]


def finish(state: dict[str, Any], policy: FinishPolicy) -> Detections:
    """The final boxes of a query from what its path recorded (``state`` keys, or a prediction's fields)."""
    limit = policy.limit(state.get("expected_count"))
    path = state.get("path")
    if path == "crs" and state.get("verification") is not None:
        return finish_verification(state["candidates"], np.asarray(state["verification"]), policy, limit)
    if path == "crs" and state.get("selection") is not None:
        return finish_selection(state["selection"], policy, limit)
    if path == "crs":
        return state["answer"]
    threshold = policy.specialist_threshold if path == "specialist" else policy.mllm_threshold
    return finish_boxes(state["answer"], policy, threshold, limit)


def recorded_answer(path: str | None, answer: Detections, policy: FinishPolicy) -> Detections:
    """What a prediction keeps of a path's answer so that ``finish`` gives the same boxes at any
    thresholds: a specialist answer's distinct boxes (NMS commutes with a score threshold), best
    first, ``RECORDED_BOXES`` at most; an MLLM answer as written."""
    if path == "specialist":
        return answer.nms(policy.crs_iou_threshold)[:RECORDED_BOXES]
    return answer
