"""Scoring predictions on the benchmarks, with the numbers the authors' evaluators give.

- :mod:`.predictions`: the JSON Lines predictions file (durable append, torn-line tolerant);
- :func:`score_finecops_ref` (FineCops-Ref, Ref-Adv, Ref-Reasoning), :func:`score_grec`
  (gRefCOCO), :func:`score_refcoco` (RefCOCO/+/g): plain dicts of percentages;
- :mod:`.export`: predictions in the authors' evaluator input formats, for cross-checks.
"""

from .export import export_finecops_jsonl, export_finecops_npy
from .finecops import score_finecops_ref
from .grec import grec_sample_f1, score_grec
from .predictions import Prediction, PredictionWriter, read_predictions
from .refcoco import score_refcoco

__all__ = [
    "Prediction",
    "PredictionWriter",
    "export_finecops_jsonl",
    "export_finecops_npy",
    "grec_sample_f1",
    "read_predictions",
    "score_finecops_ref",
    "score_grec",
    "score_refcoco",
]
