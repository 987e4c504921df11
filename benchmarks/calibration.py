"""``agent-cli calibrate``'s search: its time on 10,000 samples, and what a quantile grid would miss.

A synthetic GREC dev split (``--calibration-samples``, 0-3 targets among four boxes per sample)
with crs + verify records (``p(yes)`` per candidate, targets higher on average, two decimals so
that scores repeat as real ones do). Timed: the exact sweep (``calibrate``, no cross-validation)
and with the 5-fold cross-validated estimate. Compared: the objective the exact search reaches
and the best of the 41 quantiles of the recorded scores (the search before it was exact), both
on the same split, and the cross-validated held-out gain beside the dev gain.

    python -m benchmarks.calibration --out outputs/bench
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from agent.evaluation.calibration import Problem, calibrate, recorded
from agent.finishing import FinishPolicy
from tools.datasets import Sample
from tools.detections import Detections
from tools.evaluation import Prediction
from tools.evaluation.formats import get_format

from .report import format_table, run_standalone, write_json

BOXES = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
QUANTILES = 41


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--calibration-samples", type=int, default=10_000, help="dev samples (default: %(default)s)")


def synthetic_split(count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    samples, predictions = [], []
    for i in range(count):
        targets = rng.choice(4, size=rng.integers(0, 4), replace=False)
        samples.append(Sample(i, "x.png", "the cups", [BOXES[t] for t in sorted(targets)]))
        yes = np.where(np.isin(np.arange(4), targets), rng.beta(5, 2, 4), rng.beta(2, 5, 4)).round(2)
        predictions.append(Prediction(i, Detections.empty(), {
            "path": "crs", "expected_count": "many", "verification": yes.tolist(),
            "candidates": {"boxes": BOXES, "scores": [0.9, 0.8, 0.7, 0.6]}}))
    return samples, recorded(predictions)


def run(args: argparse.Namespace) -> dict:
    """Measure, print and write ``calibration.json``; returns the JSON payload."""
    samples, records = synthetic_split(args.calibration_samples)
    metric = get_format("grec").metric
    start = FinishPolicy(allow_none=True, multi="auto", verify_threshold=0.5)
    began = time.perf_counter()
    exact = calibrate(records, samples, metric, start, folds=0)
    exact_seconds = time.perf_counter() - began
    began = time.perf_counter()
    validated = calibrate(records, samples, metric, start, folds=5)
    validated_seconds = time.perf_counter() - began
    # The objective at each quantile, read off the exact step function (the interval holding it).
    lower, upper, objective = Problem(records, samples, metric).sweep(start, "verify_threshold")
    values = np.concatenate([record.state["verification"] for record in records])
    grid = np.unique(np.quantile(values, np.linspace(0, 1, QUANTILES)))
    quantile_best = float(objective[np.searchsorted(upper, grid)].max())
    validation = validated.cross_validation
    payload = {
        "samples": len(samples), "distinct_scores": int(len(np.unique(values))),
        "exact_seconds": exact_seconds, "with_cross_validation_seconds": validated_seconds,
        "before": exact.before, "exact": exact.after, "quantile_grid": quantile_best,
        "threshold": exact.fitted["verify_threshold"], "dev_gain": exact.after - exact.before,
        "cross_validated_gain": validation.gain, "folds": validation.folds,
    }
    rows = [["exact sweep", f"{exact_seconds:.1f}", f"{exact.after:.2f}"],
            ["+ 5-fold cross-validation", f"{validated_seconds:.1f}", f"held-out gain {validation.gain:+.2f}"],
            [f"{QUANTILES} quantiles (before)", "-", f"{quantile_best:.2f}"]]
    print(format_table(["search", "seconds", "Pr@(F1=1)"], rows,
                       title=f"calibrate on {len(samples):,} GREC samples ({payload['distinct_scores']} distinct "
                             f"p(yes); starting at {exact.before:.2f})"))
    print(f"\nwrote {write_json(args.out, 'calibration', payload)}")
    return payload


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "calibration", add_arguments, run, argv)


if __name__ == "__main__":
    main()
