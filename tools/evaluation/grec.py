"""GREC metrics (gRefCOCO: zero, one or many targets), as the authors' released evaluator computes them.

Reference: ``RefExpEvaluator`` in ``mdetr/datasets/refexp.py`` of the gRefCOCO repository.
Per sample, the predictions scoring at least ``score_threshold`` (0.7) are kept and
matched greedily to the targets: repeatedly the highest remaining overlap (generalized
IoU by default) is taken if it is at least ``iou_threshold`` (0.5), and its prediction
and target leave the pool. TP = matches, FP = kept - TP, FN = targets - TP and
F1 = 2TP / (2TP + FP + FN). A no-target sample has F1 1 when nothing is kept, else 0.

- **Precision@(F1=1, IoU>=0.5)** = samples with F1 = 1 / samples;
- **N-acc** = no-target samples with nothing kept / no-target samples;
- **T-acc** = targeted samples with something kept / targeted samples.

The GREx paper's text describes plain IoU and no score filter; ``matching="iou"`` and
``score_threshold`` give that reading, the defaults reproduce the released evaluator.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .. import boxes as box_ops
from ..datasets import Sample
from ..errors import UserInputError
from .common import mdetr_order, pair_predictions, percent
from .predictions import EVALUATOR_FLOOR, Prediction

SCORE_THRESHOLD = EVALUATOR_FLOOR  # the released evaluator's thresh_score: REX's written scores align to it
IOU_THRESHOLD = 0.5
OVERLAPS = {"giou": box_ops.generalized_box_iou, "iou": box_ops.box_iou}


def score_grec(
    samples: Iterable[Sample],
    predictions: Iterable[Prediction],
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    matching: str = "giou",
    allow_missing: bool = False,
) -> dict[str, Any]:
    """``f1_precision`` (Precision@(F1=1, IoU>=0.5)), ``n_acc``, ``t_acc`` in percent, ``counts`` and ``settings``."""
    _check_settings(iou_threshold, matching)
    pairs, counts = pair_predictions(samples, predictions, allow_missing=allow_missing)
    correct = no_target_correct = targeted_answered = 0
    no_target = 0
    for sample, prediction in pairs:
        f1, kept = grec_sample_f1(
            prediction.boxes, prediction.scores, sample.boxes,
            score_threshold=score_threshold, iou_threshold=iou_threshold, matching=matching,
        )
        correct += f1 >= 1.0
        if sample.has_target:
            targeted_answered += kept > 0
        else:
            no_target += 1
            no_target_correct += kept == 0
    return {
        "f1_precision": percent(correct, len(pairs)),
        "n_acc": percent(no_target_correct, no_target),
        "t_acc": percent(targeted_answered, len(pairs) - no_target),
        "counts": {"samples": len(pairs), "no_target": no_target, "targeted": len(pairs) - no_target,
                   "correct": int(correct), **counts},
        "settings": {"score_threshold": score_threshold, "iou_threshold": iou_threshold, "matching": matching},
    }


def grec_outcome(sample: Sample, prediction: Prediction, *, score_threshold: float = SCORE_THRESHOLD,
                 iou_threshold: float = IOU_THRESHOLD, matching: str = "giou") -> tuple[str, bool]:
    """One sample's share of Precision@(F1=1): ``("all", F1 == 1)`` (``Metric.outcome``)."""
    f1, _ = grec_sample_f1(prediction.boxes, prediction.scores, sample.boxes, score_threshold=score_threshold,
                           iou_threshold=iou_threshold, matching=matching)
    return "all", f1 >= 1.0


def grec_sample_f1(
    boxes: np.ndarray,
    scores: np.ndarray,
    targets: np.ndarray,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    matching: str = "giou",
) -> tuple[float, int]:
    """F1 of one sample and how many predictions were kept (score >= ``score_threshold``)."""
    _check_settings(iou_threshold, matching)
    order = mdetr_order(scores, boxes)
    kept = box_ops.as_boxes(boxes)[order][np.asarray(scores, dtype=np.float64)[order] >= score_threshold]
    targets = box_ops.as_boxes(targets)
    if len(targets) == 0:
        return (1.0 if len(kept) == 0 else 0.0), len(kept)
    overlap = OVERLAPS[matching](kept, targets)
    matches = 0
    for _ in range(min(len(kept), len(targets))):
        # The first maximum in row-major order, rows best score first, as torch.topk picks it in the reference.
        row, column = np.unravel_index(int(np.argmax(overlap)), overlap.shape)
        if overlap[row, column] < iou_threshold:
            break
        matches += 1
        overlap[row, :] = -np.inf
        overlap[:, column] = -np.inf
    false_positives, false_negatives = len(kept) - matches, len(targets) - matches
    return 2 * matches / (2 * matches + false_positives + false_negatives), len(kept)


def _check_settings(iou_threshold: float, matching: str) -> None:
    if matching not in OVERLAPS:
        raise UserInputError(f"unknown matching {matching!r}; choose one of {', '.join(OVERLAPS)}")
    # The reference removes a matched pair by zeroing its overlaps, which only equals removal above 0.
    if not 0.0 < iou_threshold <= 1.0:
        raise UserInputError(f"the IoU threshold must be in (0, 1], got {iou_threshold}")
