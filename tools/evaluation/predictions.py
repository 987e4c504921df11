"""Predictions files: JSON Lines, one object per sample, appended durably.

A line is ``{"id": <sample id>, "boxes": [[x1, y1, x2, y2], ...], "scores": [...], ...}``
with pixel ``xyxy`` boxes and one score per box; any other field (``level``, ``path``,
``target``, ``timings``, ``confidence``, ...) is kept in :attr:`Prediction.fields`.
``confidence`` has a meaning to the FineCops-Ref metrics: the sample-level confidence
of an answer *without* boxes (e.g. ``1 - P(None)`` of a CRS rejection).

The ``scores`` REX writes are **decision-aligned** (``decision_scores``): every box it returned
scores above ``EVALUATOR_FLOOR`` (0.7, the score the released gRefCOCO evaluator keeps a box
at), 0.700001 at the threshold the box had to pass (float32-safe) and 1 at certainty, so that
evaluator, run at its defaults, keeps exactly the boxes REX returned. The path's own scores (detector
probability, option probability, ``p(yes)``, token probability) are the ``raw_scores`` field,
which the FineCops-Ref metrics, their exports and calibration read (:attr:`Prediction.raw_scores`).

:class:`PredictionWriter` flushes and fsyncs every line, so a crash loses at most the
line being written; :func:`read_predictions` ignores such a torn last line with a
warning, and the writer cuts it off before appending, so a run can resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..detections import Detections
from ..files import JsonLinesAppender, read_json_lines
from ..errors import UserInputError
from ..numbers import is_finite_number

RESERVED_FIELDS = ("id", "boxes", "scores")
RAW_SCORES = "raw_scores"
# The box score the released gRefCOCO evaluator keeps a box at (MDETR's ``thresh_score``).
EVALUATOR_FLOOR = 0.7
# The lowest score REX writes: just above the floor, so that it stays above it in float32 too
# (the evaluator compares torch tensors, float32 by default: 0.7 itself would round below).
WRITTEN_FLOOR = EVALUATOR_FLOOR + 1e-6
@dataclass(frozen=True, eq=False)
class Prediction:
    """The boxes a method answered for one sample, plus free-form ``fields``; no box means "no target"."""

    id: int | str
    detections: Detections
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def boxes(self) -> np.ndarray:
        return self.detections.boxes

    @property
    def scores(self) -> np.ndarray:
        return self.detections.scores

    @property
    def raw_scores(self) -> np.ndarray:
        """The path's own score of each box (the ``raw_scores`` field), or ``scores`` for a line without it."""
        raw = self.fields.get(RAW_SCORES)
        return self.scores if raw is None else np.asarray(raw, dtype=np.float64)

    @property
    def raw_detections(self) -> Detections:
        """The boxes scored by ``raw_scores``."""
        return Detections(self.boxes, self.raw_scores)

    @classmethod
    def decided(cls, sample_id: int | str, detections: Detections, threshold: float, fields: dict[str, Any]
                ) -> "Prediction":
        """The prediction of boxes a decision returned with their raw scores, past ``threshold``: scores
        written decision-aligned (``decision_scores``), the raw ones in ``raw_scores``."""
        fields = {**fields, RAW_SCORES: detections.scores.tolist(), "decision_threshold": float(threshold)}
        return cls(sample_id, Detections(detections.boxes, decision_scores(detections.scores, threshold)), fields)

    @classmethod
    def from_record(cls, record: Any, where: str = "prediction") -> "Prediction":
        """Check and convert one parsed JSON line; problems name ``where`` and the field."""
        if not isinstance(record, dict):
            raise UserInputError(f"{where}: expected a JSON object, got {type(record).__name__}")
        sample_id = record.get("id")
        if isinstance(sample_id, bool) or not isinstance(sample_id, (int, str)) or sample_id == "":
            raise UserInputError(f"{where}: field 'id' must be an integer or a non-empty string, got {sample_id!r:.60}")
        boxes, scores = record.get("boxes"), record.get("scores")
        if not isinstance(boxes, list) or not all(_is_numbers(box, 4) for box in boxes):
            raise UserInputError(f"{where}: field 'boxes' must be a list of [x1, y1, x2, y2] finite numbers")
        if not _is_numbers(scores, len(boxes)):
            raise UserInputError(f"{where}: field 'scores' must be {len(boxes)} finite numbers, one per box")
        inverted = next((i for i, box in enumerate(boxes) if box[2] < box[0] or box[3] < box[1]), None)
        if inverted is not None:  # GIoU would score [10, 10, 0, 0] a perfect match of [0, 0, 10, 10]
            raise UserInputError(f"{where}: field 'boxes': box {inverted} {boxes[inverted]} has x2 < x1 or y2 < y1 "
                                 "(boxes are [x1, y1, x2, y2])")
        raw = record.get(RAW_SCORES)
        if raw is not None and not _is_numbers(raw, len(boxes)):
            raise UserInputError(f"{where}: field '{RAW_SCORES}' must be {len(boxes)} finite numbers, one per box")
        for name in ("confidence", "answer_logprob", "none_logprob"):  # what the FineCops-Ref scores read
            value = record.get(name)
            if value is not None and not _is_numbers([value], 1):
                raise UserInputError(f"{where}: field '{name}' must be a finite number, got {value!r:.60}")
        fields = {name: value for name, value in record.items() if name not in RESERVED_FIELDS}
        return cls(sample_id, Detections(np.array(boxes, dtype=np.float64).reshape(-1, 4), scores), fields)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "boxes": self.boxes.tolist(), "scores": self.scores.tolist(), **self.fields}


def read_predictions(path: str | Path) -> list[Prediction]:
    """All predictions of a JSON Lines file, in file order.

    Blank lines are skipped. A last line that does not end in a newline and does not
    parse is a write interrupted by a crash: it is ignored with a warning. Any other
    bad line, or an id given twice, is a ``UserInputError`` naming the line.
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path}: is a directory, expected a JSON Lines predictions file")
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    predictions: list[Prediction] = []
    first_seen: dict[str, str] = {}
    for where, record in read_json_lines(path):
        prediction = Prediction.from_record(record, where)
        key = str(prediction.id)
        if key in first_seen:
            raise UserInputError(f"{where}: id {prediction.id!r} already has a prediction on {first_seen[key]}")
        first_seen[key] = where.rpartition(": ")[2]  # "line N"
        predictions.append(prediction)
    return predictions


class PredictionWriter:
    """Appends predictions to a JSON Lines file; each line is flushed and fsynced before ``write`` returns.

    Opening repairs a file whose last line was torn by a crash (see :func:`read_predictions`):
    a complete record that only lacks its newline gets one, anything else is cut off.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lines = JsonLinesAppender(self.path, default=_json_default)

    def write(self, prediction: Prediction) -> None:
        self._lines.write(prediction.to_record())

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> "PredictionWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def decision_scores(scores, threshold: float) -> np.ndarray:
    """The written, decision-aligned scores of boxes a decision returned with raw ``scores``, each of
    which reached ``threshold`` (0: returned without one): ``WRITTEN_FLOOR`` (0.700001) at the
    threshold, rising linearly to 1 at a raw score of 1 (1 for every box when the threshold is 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if threshold >= 1.0:
        return np.ones_like(scores)
    margin = np.clip((scores - threshold) / (1.0 - threshold), 0.0, 1.0)  # from the threshold towards 1
    return WRITTEN_FLOOR + (1.0 - WRITTEN_FLOOR) * margin


def _is_numbers(values: Any, count: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == count
        and all(is_finite_number(v) for v in values)
    )


def _json_default(value: Any) -> Any:
    # Fields often hold numpy scalars or arrays (timings, probabilities).
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
