"""What every benchmark score shares: pairing samples with predictions, box orders, percentages."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..datasets import Sample
from ..detections import Detections
from ..errors import UserInputError
from .predictions import Prediction

# How many missing ids an error message lists.
SHOWN_IDS = 5
# Prediction fields: a sample whose target extraction the reference profile dropped, and one
# whose image was read as stored (its EXIF rotation ignored: the annotation describes that frame).
EXTRACTION_FAILED = "extraction_failed"
READ_AS_STORED = "image_read_as_stored"


def pair_predictions(
    samples: Iterable[Sample], predictions: Iterable[Prediction], *, allow_missing: bool = False
) -> tuple[list[tuple[Sample, Prediction]], dict[str, int]]:
    """Each sample with its prediction (ids compared as text, so ``7`` matches ``"7"``).

    A sample without a prediction is an error listing how many and the first few ids,
    unless ``allow_missing``, which scores it as an empty answer (no box). Returns the
    pairs and counts: ``missing_predictions`` (samples scored as empty for lack of a
    prediction) and ``unmatched_predictions`` (predictions for ids not in the samples).
    """
    by_id = {str(prediction.id): prediction for prediction in predictions}
    pairs: list[tuple[Sample, Prediction]] = []
    missing: list[Sample] = []
    seen: set[str] = set()
    for sample in samples:
        key = str(sample.id)
        if key in seen:
            raise UserInputError(f"sample id {sample.id!r} occurs twice in the annotations")
        seen.add(key)
        prediction = by_id.get(key)
        if prediction is None:
            missing.append(sample)
            prediction = Prediction(sample.id, Detections.empty())
        pairs.append((sample, prediction))
    if missing and not allow_missing:
        shown = ", ".join(repr(sample.id) for sample in missing[:SHOWN_IDS])
        more = ", ..." if len(missing) > SHOWN_IDS else ""
        raise UserInputError(
            f"{len(missing)} of {len(pairs)} samples have no prediction (ids {shown}{more}); "
            "allow missing predictions (--allow-missing) to score them as empty answers"
        )
    counts = {"missing_predictions": len(missing), "unmatched_predictions": len(set(by_id) - seen)}
    return pairs, counts


def finecops_order(scores: np.ndarray) -> np.ndarray:
    """Indices best first exactly as the FineCops-Ref evaluators rank boxes: ``np.argsort(scores)[::-1]``.

    The order of equal scores is whatever numpy's default (unstable) sort gives on this
    machine -- with AVX-512 it differs from the stable order even for a handful of boxes
    -- so ties are ranked as the reference evaluator ranks them when run in the same
    environment, and may rank differently elsewhere, as the reference's do.
    """
    return np.argsort(np.asarray(scores, dtype=np.float64))[::-1]


def mdetr_order(scores: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Indices best first as the MDETR-derived evaluators (RefCOCO, GREC) rank boxes:
    ``sorted(zip(scores, boxes), reverse=True)``, so equal scores fall back to the box coordinates."""
    keys = [(float(score), *map(float, box)) for score, box in zip(scores, boxes)]
    return np.array(sorted(range(len(keys)), key=keys.__getitem__, reverse=True), dtype=np.int64)


def percent(hits: float, total: float) -> float | None:
    """``100 * hits / total``; ``None`` when there is nothing to count."""
    return 100.0 * hits / total if total else None


def without_extraction_failures(samples: Iterable[Sample], predictions: Iterable[Prediction]
                                ) -> tuple[list[Sample], list[Prediction], int]:
    """The samples the authors' scripts score, and their predictions: not those whose target
    extraction failed (the scripts drop them), nor the FineCops-Ref negatives of such a positive;
    and how many samples were left out."""
    samples, predictions = list(samples), list(predictions)
    failed = {str(prediction.id) for prediction in predictions if prediction.fields.get(EXTRACTION_FAILED)}
    kept = [sample for sample in samples if str(sample.id) not in failed
            and not (sample.is_negative and str(sample.negative["positive_id"]) in failed)]
    left_out = {str(sample.id) for sample in samples} - {str(sample.id) for sample in kept}
    return kept, [prediction for prediction in predictions if str(prediction.id) not in left_out], len(left_out)
