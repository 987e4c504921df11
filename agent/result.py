"""``Result``: what ``Agent.locate`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tools.detections import Detections
from tools.mllm.selection import Selection

from .state import AgentState


@dataclass(frozen=True, eq=False)
class Result:
    """The boxes an expression refers to, and how the agent found them.

    ``boxes`` are ``[x1, y1, x2, y2]`` pixels of the input image, best first; empty when
    the agent concluded the target is absent. ``level`` is the SFA difficulty level (1
    or 2; ``None`` when the strategy does not route); ``path`` is the path that answered
    ("specialist", "mllm" or "crs"). ``trace`` lists the nodes visited, ``timings``
    their wall time in seconds, ``fallbacks`` every documented fallback taken.

    What the final boxes were chosen from is kept too, so that ``agent-cli calibrate`` can
    choose them again at other thresholds: ``expected_count`` (the text's: 1, n or "many"),
    ``count_probabilities`` (the MLLM's count over the candidates, with ``count_mode`` image or
    both), ``count_source`` (the text's "model" or "heuristic", or "image" when the image's count
    decided), the CRS ``candidates`` with their ``selection`` or ``verification`` (``p(yes)``
    per candidate), the detector's ``proposals`` the candidates were taken from (its first ten
    boxes, before top-k and NMS: what the authors' positive CRS evaluator maps letters onto), and
    ``path_answer``, the answering path's scored boxes before the finishing policy
    (``finishing.recorded_answer``). ``scores`` are the path's own; ``decision_threshold`` is the
    score the boxes had to reach (0 when returned without one), to which predictions files align
    the scores they write (``tools.evaluation.predictions.decision_scores``).
    """

    expression: str
    image_size: tuple[int, int]
    strategy: str
    detections: Detections
    level: int | None = None
    path: str | None = None
    target: str | None = None
    target_span: tuple[int, int] | None = None
    target_source: str | None = None
    selection: Selection | None = None
    expected_count: int | str | None = None
    count_source: str | None = None
    count_probabilities: list[float] | None = None
    decision_threshold: float = 0.0
    candidates: Detections | None = None
    proposals: Detections | None = None
    verification: list[float] | None = None
    path_answer: Detections | None = None
    trace: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)

    @property
    def boxes(self) -> list[list[float]]:
        return self.detections.boxes.tolist()

    @property
    def scores(self) -> list[float]:
        return self.detections.scores.tolist()

    @property
    def found(self) -> bool:
        return len(self.detections) > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no image, no model objects): every field in order, the
        ``detections`` as ``boxes`` and ``scores``. The server's ``LocateResult`` is this."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "detections":
                data.update(boxes=self.boxes, scores=self.scores)
            else:
                data[item.name] = _plain(value)
        return data


# The fields a query's final state hands to its Result under the same names (the others the
# agent fills: the image size, the strategy, the answer before finishing, the total time).
FROM_STATE = tuple(item.name for item in fields(Result)
                   if item.name in AgentState.__annotations__ and item.name != "timings")


def _plain(value: Any) -> Any:
    if isinstance(value, Detections):
        return {"boxes": value.boxes.tolist(), "scores": value.scores.tolist()}
    if isinstance(value, Selection):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return list(value)
    return dict(value) if isinstance(value, dict) else value
