"""``Detections``: the one result type every backend returns and every node consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from . import boxes as box_ops
from .errors import UserInputError

# Where supervision keeps class names (what its LabelAnnotator writes).
SUPERVISION_LABELS = "class_name"


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes in ``xyxy`` pixels with one score each, optional text labels and extra data.

    ``boxes`` is a float64 ``(N, 4)`` array, ``scores`` a float64 ``(N,)`` array,
    ``labels`` either ``None`` or a list of ``N`` strings, and ``data`` maps names to
    per-box arrays of length ``N`` (e.g. the other confidence measures of an MLLM
    answer), sliced along with the boxes. Instances are immutable; every operation
    returns a new one. Order is meaningful (``sorted()`` gives best first) and is what
    "top-k" and option letters refer to.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str] | None = field(default=None)
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Copies, so freezing them never touches the caller's arrays.
        boxes = np.array(box_ops.as_boxes(self.boxes))
        scores = np.array(self.scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(scores)} scores")
        labels = None if self.labels is None else [str(label) for label in self.labels]
        if labels is not None and len(labels) != len(boxes):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(labels)} labels")
        data = {name: np.array(values) for name, values in self.data.items()}
        for name, values in data.items():
            if values.shape[:1] != (len(boxes),):
                raise ValueError(f"Detections: data[{name!r}] has shape {values.shape}, expected ({len(boxes)}, ...)")
        for array in (boxes, scores, *data.values()):
            array.setflags(write=False)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "data", data)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0))

    @classmethod
    def concat(cls, parts: Sequence["Detections"]) -> "Detections":
        """Join several detections in order; labels and data keys survive only if every part has them."""
        if not parts:
            return cls.empty()
        labels = None
        if all(part.labels is not None for part in parts):
            labels = [label for part in parts for label in part.labels]
        shared_keys = set.intersection(*(set(part.data) for part in parts))
        data = {key: np.concatenate([part.data[key] for part in parts]) for key in sorted(shared_keys)}
        return cls(
            np.concatenate([part.boxes for part in parts]),
            np.concatenate([part.scores for part in parts]),
            labels,
            data,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        return iter(zip(self.boxes, self.scores.tolist()))

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> "Detections":
        """Select by int, slice, index array or boolean mask; always returns ``Detections``."""
        if isinstance(index, (int, np.integer)):
            index = [int(index) if index >= 0 else len(self) + int(index)]
        if isinstance(index, slice):
            positions = np.arange(len(self))[index]
        else:
            positions = np.asarray(index)
            if positions.dtype == bool:
                if positions.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {positions.shape} for {len(self)} detections")
                positions = np.flatnonzero(positions)
            positions = positions.astype(np.int64).reshape(-1)
        labels = None if self.labels is None else [self.labels[i] for i in positions]
        data = {name: values[positions] for name, values in self.data.items()}
        return Detections(self.boxes[positions], self.scores[positions], labels, data)

    def sorted(self) -> "Detections":
        """Best score first; ties keep their current order."""
        return self[np.argsort(-self.scores, kind="stable")]

    def top_k(self, k: int) -> "Detections":
        """The ``k`` best-scoring detections, best first."""
        if k < 0:
            raise ValueError(f"top_k needs k >= 0, got {k}")
        return self.sorted()[:k]

    def above(self, threshold: float) -> "Detections":
        """Detections whose score is at least ``threshold``, order kept."""
        return self[self.scores >= threshold]

    def nms(self, iou_threshold: float) -> "Detections":
        """Non-maximum suppression; the survivors come back best first."""
        return self[box_ops.nms(self.boxes, self.scores, iou_threshold)]

    def clip(self, width: float, height: float) -> "Detections":
        return Detections(box_ops.clip_boxes(self.boxes, width, height), self.scores, self.labels, self.data)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, ready for JSON."""
        out: dict[str, Any] = {"boxes": self.boxes.tolist(), "scores": self.scores.tolist()}
        if self.labels is not None:
            out["labels"] = list(self.labels)
        for name, values in self.data.items():
            out[name] = values.tolist()
        return out

    def to_supervision(self):
        """These detections as a ``supervision.Detections`` (``pip install 'rex-agent[supervision]'``),
        for its annotators, trackers and dataset tools: ``xyxy`` and ``confidence`` as here, the
        labels as ``data["class_name"]`` with ``class_id`` numbering the distinct labels in order of
        first appearance, and every ``data`` array."""
        sv = _supervision()
        data = {name: np.array(values) for name, values in self.data.items()}
        class_id = None
        if self.labels is not None:
            names = list(dict.fromkeys(self.labels))
            class_id = np.array([names.index(label) for label in self.labels], dtype=np.int64)
            data[SUPERVISION_LABELS] = np.array(self.labels, dtype=str)
        return sv.Detections(xyxy=self.boxes.copy(), confidence=self.scores.copy(), class_id=class_id, data=data)

    @classmethod
    def from_supervision(cls, detections) -> "Detections":
        """``Detections`` from a ``supervision.Detections``: its boxes, its confidence (1 where it has
        none), ``data["class_name"]`` (else ``class_id`` as text) as labels, and its other per-box
        arrays (``tracker_id`` included) as ``data``."""
        boxes = np.asarray(detections.xyxy, dtype=np.float64).reshape(-1, 4)
        count = len(boxes)
        confidence = detections.confidence
        scores = np.ones(count) if confidence is None else np.asarray(confidence, dtype=np.float64)
        extra = dict(detections.data or {})
        labels = None
        if SUPERVISION_LABELS in extra:
            labels = [str(label) for label in extra.pop(SUPERVISION_LABELS)]
        elif detections.class_id is not None:
            labels = [str(int(index)) for index in detections.class_id]
        if detections.tracker_id is not None:
            extra["tracker_id"] = np.asarray(detections.tracker_id)
        data = {name: np.asarray(values) for name, values in extra.items() if np.shape(values)[:1] == (count,)}
        return cls(boxes, scores, labels, data)

    def __repr__(self) -> str:
        head = ", ".join(f"{[round(float(v), 1) for v in b]}@{s:.3f}" for b, s in list(self)[:3])
        more = f", ... ({len(self)} in all)" if len(self) > 3 else ""
        return f"Detections([{head}{more}])"


def _supervision():
    try:
        import supervision
    except ImportError:
        raise UserInputError("Detections.to_supervision needs supervision: pip install 'rex-agent[supervision]'") from None
    return supervision
