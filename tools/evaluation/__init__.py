"""Scoring predictions on the benchmarks, with the numbers the authors' evaluators give.

- :mod:`.predictions`: the JSON Lines predictions file (durable append, torn-line tolerant);
- :func:`score_finecops_ref` (FineCops-Ref, Ref-Adv, Ref-Reasoning), :func:`score_grec`
  (gRefCOCO), :func:`score_refcoco` (RefCOCO/+/g): plain dicts of percentages;
- :mod:`.export`: predictions in the authors' evaluator input formats, for cross-checks.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "export_finecops_jsonl": ".export",
    "export_finecops_npy": ".export",
    "score_finecops_ref": ".finecops",
    "grec_sample_f1": ".grec",
    "score_grec": ".grec",
    "Prediction": ".predictions",
    "PredictionWriter": ".predictions",
    "read_predictions": ".predictions",
    "score_refcoco": ".refcoco",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
