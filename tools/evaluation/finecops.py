"""FineCops-Ref metrics (also used for Ref-Adv and Ref-Reasoning), as the authors' evaluators compute them.

Reference: ``evaluation/eval_metric.py`` of the FineCops-Ref repository (and its copies in
the SFA/CRS code). Definitions, all in percent:

- **Precision@k** (k = 1, 5, 10), per level (1, 2, 3) and over all positives: a positive
  is a hit when the best IoU between its target and its top-k boxes (by score) is >= 0.5.
- **Recall@k**: negatives are grouped by ``(negative_type, negative_level, negative_cate)``
  and by ``positive_id``; within a group the scores of all boxes of all its negatives
  are pooled with the positive's box scores. With ``m`` the number of the positive's
  boxes whose score is among the ``k`` highest pooled scores, the group is a hit when
  one of the positive's first ``min(m, k)`` boxes has IoU >= 0.5. Recall = hits / groups,
  per key ``"<negative_type>/<negative_level>/<negative_cate>"``. Scores below 0 are left
  out of the pools, as the reference's ``score_thrs=0`` does.
- **AUROC / FPR@95 / AUPR**: one confidence per sample, its highest box score. Overall,
  Level-1 positives (class 1) against all negatives; per key, the negatives of that key
  against the positive of each of them (a positive counts once per negative paired with it).
  FPR@95 is the false-positive rate at the ROC point whose true-positive rate is closest to
  95% (the lower threshold on a tie), among points up to the first reaching 100%.
- **CRS accuracy**: on positives, Precision@1; on negatives, the share answered with no box.

An answer without boxes (unparseable or "None") counts, as in the reference, as one
zero-area box with score 0 -- or with the prediction's ``confidence`` field where given.
Boxes are ranked by their raw scores (``Prediction.raw_scores``: the path's own, as the authors'
evaluators read them), not by the decision-aligned ``scores`` REX writes for the GREC evaluator.

Options that reproduce the authors' evaluators' own quirks (``REFERENCE_EVALUATORS`` says which
script uses which): ``iou_strict`` (a hit at IoU > 0.5, ``SFA/evaluation_SFA.py``);
``fold_level_3`` (level 3 counted as level 2, both CRS evaluators); ``crs_letters="raw"``
(``CRS/evaluation_CRS_pos.py``: a CRS answer's letter A-D is the detector's raw box 0-3, before
top-k and NMS, from the prediction's ``proposals``; any other letter a zero box).
"""

from __future__ import annotations

import math

from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from .. import boxes as box_ops
from ..datasets import Sample
from ..detections import Detections
from ..errors import UserInputError
from .common import finecops_order, pair_predictions, percent
from .predictions import RAW_SCORES, Prediction

TOP_KS = (1, 5, 10)
LEVELS = (1, 2, 3)
RECALL_LEVEL = 0.95
# Box scores below this floor stay out of the Recall@k pools (the reference's score_thrs).
POOL_SCORE_FLOOR = 0.0


@dataclass(frozen=True)
class _Answer:
    scores: np.ndarray  # best first
    ious: np.ndarray  # IoU of each box (same order) with the target; zeros for a negative
    confidence: float  # highest box score
    empty: bool  # no box given


# How a sample's confidence is read: "rex" (``answer_confidence``) or "reference", the authors'
# CRS evaluators (evaluation_CRS_neg.py, score_type answer_prob_norm): exp of the chosen letter's
# log-probability, and 1 minus it for a negative answered "None". Predictions without an
# ``answer_logprob`` field (not CRS) are read the "rex" way, which is then the reference's too.
CONFIDENCE_RULES = ("rex", "reference")
# Which box a positive's CRS letter stands for: "options", the candidate offered under it (what
# the agent answered); "raw", the detector's box of that rank before top-k and NMS (letters A-D only).
CRS_LETTERS = ("options", "raw")
RAW_LETTERS = "ABCD"
# The authors' evaluator for each way of answering, and the scoring options that reproduce it.
REFERENCE_EVALUATORS = {
    "sfa": ("SFA/evaluation_SFA.py", {"iou_strict": True}),
    "crs": ("CRS/evaluation_CRS_pos.py", {"fold_level_3": True, "crs_letters": "raw"}),
    "crs+none": ("CRS/evaluation_CRS_neg.py", {"fold_level_3": True}),
}


def score_finecops_ref(
    samples: Iterable[Sample],
    predictions: Iterable[Prediction],
    *,
    allow_missing: bool = False,
    iou_threshold: float = 0.5,
    confidence: str = "rex",
    iou_strict: bool = False,
    fold_level_3: bool = False,
    crs_letters: str = "options",
) -> dict[str, Any]:
    """Every FineCops-Ref number for ``predictions`` on ``samples``, as a plain dict of percentages.

    Keys: ``precision_at_{1,5,10}`` (by level ``"1"``, ``"2"``, ``"3"`` -- plus any other
    level present -- and ``"all"``); ``precision_at_1_by_route`` (by the SFA route level
    the predictions record in their ``level`` field, when they do); ``recall_at_{1,5,10}``,
    ``auroc_by_key``, ``fpr95_by_key``, ``aupr_by_key`` (by negative key); ``auroc``,
    ``fpr95``, ``aupr`` (overall); ``crs_accuracy`` (``positive``, ``negative``); ``counts``.
    A number with nothing to count is ``None``. ``confidence`` is one of ``CONFIDENCE_RULES``,
    ``crs_letters`` one of ``CRS_LETTERS``; ``iou_strict`` and ``fold_level_3`` as the module says.
    """
    if confidence not in CONFIDENCE_RULES:
        raise UserInputError(f"unknown confidence rule {confidence!r}; choose one of {', '.join(CONFIDENCE_RULES)}")
    if crs_letters not in CRS_LETTERS:
        raise UserInputError(f"unknown --crs-letters {crs_letters!r}; choose one of {', '.join(CRS_LETTERS)}")
    if fold_level_3:
        samples = [replace(sample, level=2) if sample.level == 3 else sample for sample in samples]
    pairs, counts = pair_predictions(samples, predictions, allow_missing=allow_missing)
    if crs_letters == "raw":
        pairs = [(sample, prediction if sample.is_negative else raw_letter_answer(prediction))
                 for sample, prediction in pairs]
    answers = {str(sample.id): _answer(sample, prediction, confidence) for sample, prediction in pairs}
    positives = [(sample, prediction) for sample, prediction in pairs if not sample.is_negative]
    negatives = [sample for sample, _ in pairs if sample.is_negative]
    hit = (lambda iou: iou > iou_threshold) if iou_strict else (lambda iou: iou >= iou_threshold)
    result: dict[str, Any] = {}
    for k in TOP_KS:
        result[f"precision_at_{k}"] = _precision_by_level(positives, answers, k, hit)
    result["precision_at_1_by_route"] = _precision_by_route(positives, answers, hit)
    groups = _negative_groups(negatives, answers, {str(sample.id) for sample, _ in positives})
    for k in TOP_KS:
        result[f"recall_at_{k}"] = {
            key: percent(sum(_recall_hit(answers[positive_id], pool, k, hit)
                             for positive_id, pool in by_positive.items()), len(by_positive))
            for key, by_positive in groups.items()
        }
    result.update(_separation(positives, negatives, answers))
    rejected = sum(answers[str(sample.id)].empty for sample in negatives)
    result["crs_accuracy"] = {
        "positive": result["precision_at_1"]["all"],
        "negative": percent(rejected, len(negatives)),
    }
    result["counts"] = {
        "positives": {**{str(level): n for level, n in _level_counts(positives).items()}, "all": len(positives)},
        "negatives": len(negatives),
        "negatives_by_key": dict(sorted(Counter(sample.negative_key for sample in negatives).items())),
        "recall_groups": {key: len(by_positive) for key, by_positive in groups.items()},
        "empty_answers": {
            "positive": sum(answers[str(sample.id)].empty for sample, _ in positives),
            "negative": rejected,
        },
        **counts,
    }
    return result


def answer_confidence(prediction: Prediction) -> float:
    """A sample's confidence (what AUROC ranks): its best box score or, for an answer without
    boxes, its ``confidence`` field (0 without one: the reference's zero-area box of score 0)."""
    if len(prediction.scores):
        return float(prediction.raw_scores.max())
    confidence = prediction.fields.get("confidence")
    return 0.0 if confidence is None else float(confidence)


def reference_confidence(sample: Sample, prediction: Prediction) -> float | None:
    """The authors' CRS evaluators' confidence of a prediction carrying ``answer_logprob``, else ``None``."""
    logprob = prediction.fields.get("answer_logprob")
    if logprob is None:
        return None
    probability = math.exp(float(logprob))
    rejected = len(prediction.scores) == 0
    return 1.0 - probability if rejected and sample.is_negative else probability


def finecops_outcome(sample: Sample, prediction: Prediction, *, iou_threshold: float = 0.5, iou_strict: bool = False,
                     crs_letters: str = "options", **_: Any) -> tuple[str, bool]:
    """One sample's share of ``crs_accuracy`` (``Metric.outcome``): a positive's Precision@1 hit
    (``"positive"``), a negative answered with no box (``"negative"``)."""
    if sample.is_negative:
        return "negative", len(prediction.scores) == 0
    if crs_letters == "raw":
        prediction = raw_letter_answer(prediction)
    best = _answer(sample, prediction).ious[0]
    return "positive", bool(best > iou_threshold if iou_strict else best >= iou_threshold)


def raw_letter_answer(prediction: Prediction) -> Prediction:
    """A CRS prediction's box as ``evaluation_CRS_pos.py`` reads its letter: A-D the detector's raw
    boxes 0-3 (the recorded ``proposals``), anything else (no letter, "E" at top-5) a zero box; score 0.
    Predictions of other paths are returned as they are."""
    fields = prediction.fields
    selection = fields.get("selection")
    if fields.get("path") != "crs" or not isinstance(selection, dict):
        return prediction
    proposals = fields.get("proposals")
    if not isinstance(proposals, dict) or not isinstance(proposals.get("boxes"), list):
        raise UserInputError(f"prediction {prediction.id!r} records no detector proposals: --crs-letters raw needs "
                             "predictions written by agent-cli eval of this version")
    letter = selection.get("read_letter") if selection.get("text") is not None else selection.get("letter")
    boxes = proposals["boxes"]
    index = RAW_LETTERS.find(letter) if isinstance(letter, str) and len(letter) == 1 else -1
    box = boxes[index] if 0 <= index < len(boxes) else [0.0, 0.0, 0.0, 0.0]
    return Prediction(prediction.id, Detections(np.asarray([box], dtype=np.float64), [0.0]),
                      {**fields, RAW_SCORES: [0.0]})


def _answer(sample: Sample, prediction: Prediction, rule: str = "rex") -> _Answer:
    boxes, scores = prediction.boxes, prediction.raw_scores
    empty = len(scores) == 0
    reference = reference_confidence(sample, prediction) if rule == "reference" else None
    if empty:
        boxes = np.zeros((1, 4))
        scores = np.array([answer_confidence(prediction) if reference is None else reference])
    elif reference is not None:
        scores = np.full(len(scores), reference)
    order = finecops_order(scores)
    boxes, scores = boxes[order], scores[order]
    if sample.has_target:
        ious = box_ops.box_iou(boxes, sample.boxes).max(axis=1)
    else:
        ious = np.zeros(len(scores))
    return _Answer(scores=scores, ious=ious, confidence=float(scores.max()), empty=empty)


def _separation(positives, negatives: list[Sample], answers: dict[str, _Answer]) -> dict[str, Any]:
    """AUROC, FPR@95 and AUPR overall (level-1 positives vs all negatives) and per negative key."""
    confidence = {key: answer.confidence for key, answer in answers.items()}
    level_one = [confidence[str(sample.id)] for sample, _ in positives if sample.level == 1]
    result = dict(zip(("auroc", "fpr95", "aupr"), _roc_measures(level_one, [confidence[str(s.id)] for s in negatives])))
    by_key: dict[str, list[Sample]] = defaultdict(list)
    for sample in negatives:
        by_key[sample.negative_key].append(sample)
    measures = {
        key: _roc_measures([confidence[str(s.negative["positive_id"])] for s in members],
                           [confidence[str(s.id)] for s in members])
        for key, members in sorted(by_key.items())
    }
    for position, name in enumerate(("auroc", "fpr95", "aupr")):
        result[f"{name}_by_key"] = {key: values[position] for key, values in measures.items()}
    return result


def _precision_by_level(positives, answers, k: int, hit) -> dict[str, float | None]:
    hits: dict[Any, int] = defaultdict(int)
    for sample, _ in positives:
        hits[sample.level] += bool(hit(answers[str(sample.id)].ious[:k].max()))
    levels = _level_counts(positives)
    by_level = {str(level): percent(hits[level], total) for level, total in levels.items()}
    return {**by_level, "all": percent(sum(hits.values()), len(positives))}


def _precision_by_route(positives, answers, hit) -> dict[str, float | None]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for sample, prediction in positives:
        route = prediction.fields.get("level")
        if route is not None:
            hits[str(route)].append(bool(hit(answers[str(sample.id)].ious[0])))
    return {route: percent(sum(values), len(values)) for route, values in sorted(hits.items())}


def _level_counts(positives) -> dict[Any, int]:
    """Positives per level: 1, 2 and 3 always, then any other level present (``None`` excluded)."""
    counts = {level: 0 for level in LEVELS}
    for sample, _ in positives:
        if sample.level is not None:
            counts[sample.level] = counts.get(sample.level, 0) + 1
    return counts


def _negative_groups(
    negatives: list[Sample], answers: dict[str, _Answer], positive_ids: set[str]
) -> dict[str, dict[str, np.ndarray]]:
    """``key -> positive id -> pooled box scores of that key's negatives of that positive``, keys sorted."""
    groups: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for sample in negatives:
        positive_id = str(sample.negative["positive_id"])
        if positive_id not in positive_ids:
            raise UserInputError(
                f"negative sample {sample.id!r} refers to positive_id {sample.negative['positive_id']!r}, "
                "which is not a positive sample of these annotations"
            )
        scores = answers[str(sample.id)].scores
        groups[sample.negative_key][positive_id].append(scores[scores >= POOL_SCORE_FLOOR])
    return {
        key: {positive_id: np.concatenate(pools) for positive_id, pools in by_positive.items()}
        for key, by_positive in sorted(groups.items())
    }


def _recall_hit(positive: _Answer, negative_pool: np.ndarray, k: int, hit) -> bool:
    positive_pool = positive.scores[positive.scores >= POOL_SCORE_FLOOR]
    pooled = np.sort(np.concatenate([negative_pool, positive_pool]))[::-1]
    if len(pooled) == 0:
        return False
    # The reference counts the positive's scores that are *equal to* one of the k best pooled
    # scores, so a tie with a negative's score goes to the positive.
    among_top_k = int((positive_pool >= pooled[min(k, len(pooled)) - 1]).sum())
    taken = min(among_top_k, k)
    return taken > 0 and bool(hit(positive.ious[:taken].max()))


def _roc_measures(positive: list[float], negative: list[float]) -> tuple[float | None, float | None, float | None]:
    """AUROC, FPR@95 and AUPR in percent with the positives as class 1; ``None`` without both classes."""
    if not positive or not negative:
        return None, None, None
    from sklearn.metrics import average_precision_score, roc_auc_score  # a second's import, for negatives only
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    scores = np.r_[positive, negative]
    return (
        100.0 * roc_auc_score(labels, scores),
        100.0 * _fpr_at_recall(labels, scores, RECALL_LEVEL),
        100.0 * average_precision_score(labels, scores),
    )


def _fpr_at_recall(labels: np.ndarray, scores: np.ndarray, recall_level: float) -> float:
    """The reference's ``fpr_and_fdr_at_recall``, on scikit-learn's ROC points.

    Of the ROC points (one per distinct score, highest first) up to the first with full
    recall, take the one whose true-positive rate is closest to ``recall_level``; on a tie
    the reference scans from low thresholds up, so the later point wins.
    """
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    # scikit-learn starts the curve with an extra (0, 0) point above every score; the reference has none.
    fpr, tpr = fpr[1:], tpr[1:]
    first_full = int(np.argmax(tpr >= 1.0))
    distance = np.abs(tpr[: first_full + 1] - recall_level)
    return float(fpr[first_full - int(np.argmin(distance[::-1]))])
