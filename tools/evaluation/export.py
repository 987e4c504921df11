"""Predictions in the input formats of the FineCops-Ref authors' evaluators, for cross-checks.

- :func:`export_finecops_npy`: the ``.npy`` list that ``evaluation/eval_metric_mmdet.py``
  loads (``np.load(..., allow_pickle=True)``): one dict per sample with ``img_id``,
  ``bboxes`` (float32 ``xyxy`` pixels, best first, since that script does not sort) and
  ``scores`` (float32). The same numbers, except where a score is exactly 0: that script
  pools only scores above 0 for Recall@k (``eval_metric.py`` and this package: 0 and above).
- :func:`export_finecops_jsonl`: the JSON Lines that ``evaluation/eval_metric.py`` (the
  MLLM evaluator) reads: ``image_id``, ``text`` holding the boxes as ``[x1,y1,x2,y2]`` in
  integers normalised to 0..1000, and the scores under ``score_field`` (pass the same
  name as its ``--score_type``). Approximate: the 0..1000 integers move a box edge by up
  to about a thousandth of the image, which can flip an IoU that lies right at 0.5.

Scores are the predictions' raw ones (``Prediction.raw_scores``), as those scripts read them.
An answer without boxes is written as the reference scores it: ``[0, 0, 0, 0]`` with score
0 in the ``.npy`` file (that script cannot read an empty answer) and an empty ``text``
in the JSON Lines file. Samples without a prediction are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import boxes as box_ops
from ..datasets import Sample
from ..errors import UserInputError
from .common import finecops_order
from .predictions import Prediction

DEFAULT_SCORE_FIELD = "scores_prob_average"


def export_finecops_npy(samples: Iterable[Sample], predictions: Iterable[Prediction], path: str | Path) -> int:
    """Write the ``eval_metric_mmdet.py`` input; returns how many samples were written."""
    results = []
    for sample, prediction in _matched(samples, predictions):
        boxes, scores = prediction.boxes, prediction.raw_scores
        if len(scores) == 0:
            boxes, scores = np.zeros((1, 4)), np.zeros(1)
        order = finecops_order(scores)
        results.append(
            {"img_id": sample.id, "bboxes": boxes[order].astype(np.float32), "scores": scores[order].astype(np.float32)}
        )
    array = np.empty(len(results), dtype=object)
    array[:] = results
    with Path(path).open("wb") as handle:
        np.save(handle, array, allow_pickle=True)
    return len(results)


def export_finecops_jsonl(
    samples: Iterable[Sample],
    predictions: Iterable[Prediction],
    path: str | Path,
    score_field: str = DEFAULT_SCORE_FIELD,
) -> int:
    """Write the ``eval_metric.py`` input; needs each sample's image size. Returns how many were written."""
    written = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for sample, prediction in _matched(samples, predictions):
            if sample.image_size is None:
                raise UserInputError(f"sample {sample.id!r} has no width/height; they are needed to normalise boxes")
            normalised = box_ops.pixels_to_qwen(prediction.boxes, *sample.image_size)
            text = ", ".join("[{},{},{},{}]".format(*box) for box in normalised.tolist())
            record = {"image_id": sample.id, "text": text, score_field: prediction.raw_scores.tolist()}
            handle.write(json.dumps(record) + "\n")
            written += 1
    return written


def _matched(samples: Iterable[Sample], predictions: Iterable[Prediction]):
    by_id = {str(prediction.id): prediction for prediction in predictions}
    for sample in samples:
        prediction = by_id.get(str(sample.id))
        if prediction is not None:
            yield sample, prediction
