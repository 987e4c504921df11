"""``Result``: what ``Agent.locate`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tools.detections import Detections
from tools.mllm.selection import Selection


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
        """JSON-serialisable summary (no image, no model objects)."""
        return {
            "expression": self.expression,
            "image_size": list(self.image_size),
            "strategy": self.strategy,
            "boxes": self.boxes,
            "scores": self.scores,
            "level": self.level,
            "path": self.path,
            "target": self.target,
            "target_span": None if self.target_span is None else list(self.target_span),
            "target_source": self.target_source,
            "selection": None if self.selection is None else self.selection.to_dict(),
            "expected_count": self.expected_count,
            "count_source": self.count_source,
            "count_probabilities": self.count_probabilities,
            "decision_threshold": self.decision_threshold,
            "candidates": None if self.candidates is None else _boxes(self.candidates),
            "proposals": None if self.proposals is None else _boxes(self.proposals),
            "verification": self.verification,
            "path_answer": None if self.path_answer is None else _boxes(self.path_answer),
            "trace": list(self.trace),
            "timings": dict(self.timings),
            "fallbacks": list(self.fallbacks),
        }


def _boxes(detections: Detections) -> dict[str, list]:
    return {"boxes": detections.boxes.tolist(), "scores": detections.scores.tolist()}
