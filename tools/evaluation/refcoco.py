"""RefCOCO/RefCOCO+/RefCOCOg accuracy, as MDETR's ``RefExpEvaluator`` computes it.

**Acc@0.5** (Precision@1): a sample is correct when its highest-scoring box has IoU >= 0.5
with the target. Precision@5 and @10 take the best IoU among the top 5 / 10 boxes.
Boxes are ranked by score, equal scores by their coordinates (MDETR sorts
``(score, box)`` tuples); an answer without boxes is a miss.
"""

from __future__ import annotations

from typing import Any, Iterable

from .. import boxes as box_ops
from ..datasets import Sample
from ..errors import UserInputError
from .common import mdetr_order, pair_predictions, percent
from .predictions import Prediction

TOP_KS = (1, 5, 10)


def score_refcoco(
    samples: Iterable[Sample],
    predictions: Iterable[Prediction],
    *,
    iou_threshold: float = 0.5,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """``accuracy`` (Acc@0.5), ``precision_at_5``, ``precision_at_10`` in percent, and ``counts``."""
    pairs, counts = pair_predictions(samples, predictions, allow_missing=allow_missing)
    hits = {k: 0 for k in TOP_KS}
    for sample, prediction in pairs:
        if not sample.has_target:
            raise UserInputError(f"sample {sample.id!r} has no target box; RefCOCO samples have exactly one")
        order = mdetr_order(prediction.scores, prediction.boxes)
        best_iou = box_ops.box_iou(prediction.boxes[order], sample.boxes).max(axis=1)
        for k in TOP_KS:
            hits[k] += bool(len(best_iou) and best_iou[:k].max() >= iou_threshold)
    return {
        "accuracy": percent(hits[1], len(pairs)),
        "precision_at_5": percent(hits[5], len(pairs)),
        "precision_at_10": percent(hits[10], len(pairs)),
        "counts": {"samples": len(pairs), "correct": hits[1], **counts},
    }


def refcoco_outcome(sample: Sample, prediction: Prediction, *, iou_threshold: float = 0.5) -> tuple[str, bool]:
    """One sample's share of Acc@0.5: ``("all", hit)`` (``Metric.outcome``)."""
    if not len(prediction.scores):
        return "all", False
    top = mdetr_order(prediction.scores, prediction.boxes)[:1]
    return "all", bool(box_ops.box_iou(prediction.boxes[top], sample.boxes).max() >= iou_threshold)
