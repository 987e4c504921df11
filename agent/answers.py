"""Plain answers of plug-ins made REX's types: ``Detections`` from ``(boxes, scores)`` and a
``Selection`` from option probabilities; anything else is a ``ModelOutputError`` naming the method."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from tools import boxes as box_ops
from tools.detections import Detections
from tools.errors import ModelOutputError
from tools.mllm.crs import option_letters
from tools.mllm.selection import Selection


def as_detections(value: Any, source: str) -> Detections:
    """``Detections`` from a backend's answer (``Detections`` or ``(boxes, scores)``); a box written
    with its corners inverted (``x2 < x1``) is reordered, as the bundled MLLMs' answers are."""
    if isinstance(value, Detections):
        detections = value
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            boxes = np.asarray(value[0], dtype=float).reshape(-1, 4)
            scores = np.asarray(value[1], dtype=float).reshape(-1)
            detections = Detections(boxes, scores)
        except (TypeError, ValueError) as error:
            raise ModelOutputError(f"{source} returned malformed boxes or scores: {error}") from None
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ModelOutputError(f"{source} returned boxes or scores that are not finite numbers")
    else:
        raise ModelOutputError(f"{source} must return Detections or (boxes, scores), got {type(value).__name__}")
    boxes = detections.boxes
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        detections = replace(detections, boxes=box_ops.ordered_corners(boxes))
    return detections


def as_selection(value: Any, candidates: Detections, allow_none: bool) -> Selection:
    """``Selection`` from a backend's answer (``Selection`` or option probabilities)."""
    if isinstance(value, Selection):
        return value
    letters = option_letters(len(candidates), allow_none)
    expected = f"mllm.select must return a Selection or {len(letters)} option probabilities"
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ModelOutputError(f"{expected}, got {type(value).__name__}")
    try:
        probabilities = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ModelOutputError(f"{expected}, got {value!r:.80}") from None
    if len(probabilities) != len(letters):
        raise ModelOutputError(f"{expected}, got {len(probabilities)}")
    total = probabilities.sum()
    if not np.isfinite(total) or total <= 0 or (probabilities < 0).any():
        raise ModelOutputError(f"mllm.select returned invalid probabilities {probabilities.tolist()}")
    return Selection(candidates, letters, probabilities / total, allow_none)
