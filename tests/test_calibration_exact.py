"""``calibrate`` searches every breakpoint exactly: against a brute-force search with the full metric
on random splits, the widest best plateau's middle, and the cross-validated estimate."""

from __future__ import annotations

import numpy as np
import pytest

from agent.evaluation.calibration import Problem, calibrate, cross_validate, objective, recorded, rescore
from agent.finishing import FinishPolicy
from tools.datasets import Sample
from tools.detections import Detections
from tools.evaluation import Prediction
from tools.evaluation.formats import get_format

BOX = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]


def specialist_split(seed: int, count: int):
    """GREC samples with 0-3 targets among four boxes, and a specialist record of random scores
    (targets score higher on average, so some threshold is best)."""
    rng = np.random.default_rng(seed)
    samples, predictions = [], []
    for i in range(count):
        targets = sorted(rng.choice(4, size=rng.integers(0, 4), replace=False).tolist())
        samples.append(Sample(i, "x.png", "boxes", [BOX[t] for t in targets]))
        scores = np.where(np.isin(np.arange(4), targets), rng.uniform(0.2, 1.0, 4), rng.uniform(0.0, 0.8, 4))
        order = np.argsort(-scores)
        answer = {"boxes": [BOX[j] for j in order], "scores": np.round(scores[order], 2).tolist()}
        predictions.append(Prediction(i, Detections.empty(), {"path": "specialist", "path_answer": answer,
                                                              "expected_count": "many"}))
    return samples, recorded(predictions)


GREC = get_format("grec").metric
POLICY = FinishPolicy(allow_none=True, multi="auto", specialist_threshold=0.3)


def full_objective(samples, records, policy, metric=GREC):
    return objective(metric.name)(metric.score(samples, rescore(records, policy), allow_missing=True))


@pytest.mark.parametrize("seed", range(2))
def test_the_sweep_equals_the_full_metric_on_every_interval(seed):
    samples, records = specialist_split(seed, 40)
    problem = Problem(records, samples, GREC)
    lower, upper, values = problem.sweep(POLICY, "specialist_threshold")
    assert len(values) > 50  # every distinct recorded score is a step
    for lo, hi, value in zip(lower, upper, values):
        middle = 0.0 if hi == 0 else (lo + hi) / 2
        assert value == pytest.approx(full_objective(samples, records, FinishPolicy(
            allow_none=True, multi="auto", specialist_threshold=middle)))


@pytest.mark.parametrize("seed", range(3, 5))
def test_calibrate_finds_the_brute_force_optimum_on_fresh_random_splits(seed):
    samples, records = specialist_split(seed, 100)
    values = np.unique(np.concatenate([r.state["answer"].scores for r in records]))
    # Every value, and between every two: the optimum is on one of them.
    candidates = np.unique(np.concatenate([values, (values[1:] + values[:-1]) / 2, [0.0, 1.0]]))
    brute = max(full_objective(samples, records, FinishPolicy(allow_none=True, multi="auto", specialist_threshold=t))
                for t in candidates)
    result = calibrate(records, samples, GREC, POLICY, folds=0)
    assert result.after == pytest.approx(brute) and result.after > result.before


def test_the_middle_of_the_widest_best_plateau():
    # Two samples: one target box at 0.35 (needs t <= 0.35) and a lone wrong box at 0.3 elsewhere
    # (needs t > 0.3); best on (0.3, 0.35]; a third, unrelated sample adds steps that do not matter.
    samples = [Sample(0, "x.png", "a", [BOX[0]]), Sample(1, "x.png", "b", np.zeros((0, 4))),
               Sample(2, "x.png", "c", [BOX[2]])]
    answers = [([BOX[0]], [0.35]), ([BOX[1]], [0.3]), ([BOX[2], BOX[3]], [0.9, 0.05])]
    records = recorded([Prediction(i, Detections.empty(), {"path": "specialist", "expected_count": "many",
                                                           "path_answer": {"boxes": b, "scores": s}})
                        for i, (b, s) in enumerate(answers)])
    result = calibrate(records, samples, GREC, POLICY, folds=0)
    assert result.after == 100.0 and result.fitted["specialist_threshold"] == pytest.approx(0.325)


def test_cross_validation_fits_without_the_held_out_fold():
    samples, records = specialist_split(7, 200)
    problem = Problem(records, samples, GREC)
    validation = cross_validate(problem, POLICY, folds=4)
    assert validation.folds == 4 and len(validation.gains) == 4
    order = np.random.default_rng(0).permutation(len(samples))
    held_out = sorted(order[0::4].tolist())
    fitted = problem.ascend(POLICY, sorted(set(range(len(samples))) - set(held_out)))
    assert validation.gains[0] == pytest.approx(problem.objective(fitted, held_out) - problem.objective(POLICY, held_out))
    assert validation.held_out_after == pytest.approx(validation.held_out_before + validation.gain)
    assert calibrate(records, samples, GREC, POLICY, folds=4).cross_validation == validation


def test_per_sample_outcomes_add_up_to_each_formats_objective():
    rng = np.random.default_rng(3)
    positives = [Sample(i, "x.png", "a", [BOX[i % 4]], level=1) for i in range(20)]
    negatives = [Sample(100 + i, "x.png", "a", np.zeros((0, 4)), level=1,
                        negative={"negative_type": "attribute", "negative_level": 1, "negative_cate": "text",
                                  "positive_id": i, "tuple_type": None}) for i in range(10)]
    predictions = []
    for sample in positives + negatives:
        chosen = [] if rng.random() < 0.3 else [BOX[int(rng.integers(4))]]
        predictions.append(Prediction(sample.id, Detections(chosen, [0.8] * len(chosen)),
                                      {"path": "specialist", "path_answer": {"boxes": chosen,
                                                                             "scores": [0.8] * len(chosen)}}))
    records = recorded(predictions)
    for name, samples in (("finecops-ref", positives + negatives), ("refcoco", positives), ("grec", positives)):
        metric = get_format(name).metric
        problem = Problem(records, samples, metric)
        assert problem.objective(POLICY) == pytest.approx(full_objective(samples, records, POLICY, metric)), name


def test_the_count_zero_threshold_is_fitted_and_kept_unset_when_no_value_beats_it():
    samples, predictions = [], []
    for i in range(20):
        no_target = i % 2 == 1
        samples.append(Sample(i, "x.png", "the cups", np.zeros((0, 4)) if no_target else [BOX[0]]))
        p0 = 0.4 + 0.01 * i if no_target else 0.3 - 0.01 * i  # never the likeliest answer
        counts = [p0, 0.6, 0, 0, 0, 0, 0]
        predictions.append(Prediction(i, Detections.empty(), {
            "path": "specialist", "expected_count": "many", "count_probabilities": counts,
            "path_answer": {"boxes": [BOX[0]], "scores": [0.9]}}))
    records = recorded(predictions)
    policy = FinishPolicy(allow_none=True, multi="auto", count_mode="image")
    result = calibrate(records, samples, GREC, policy, folds=0)
    assert result.before == 50.0 and result.after == 100.0
    assert 0.3 < result.fitted["count_zero_threshold"] <= 0.41
    perfect = [Prediction(i, Detections.empty(), {**p.fields, "count_probabilities": (
        [0.9, 0.1, 0, 0, 0, 0, 0] if i % 2 else [0.1, 0.9, 0, 0, 0, 0, 0])}) for i, p in enumerate(predictions)]
    assert calibrate(recorded(perfect), samples, GREC, policy, folds=0).fitted["count_zero_threshold"] is None


def test_an_evaluator_floor_above_the_written_one_keeps_the_search_exact():
    samples, records = specialist_split(3, 100)
    options = {"score_threshold": 0.8}
    values = np.unique(np.concatenate([r.state["answer"].scores for r in records]))
    margin = (0.8 - 0.700001) / (1 - 0.700001)
    steps = np.unique(np.clip(np.concatenate([values, (values - margin) / (1 - margin)]), 0, 1))
    candidates = np.unique(np.concatenate([steps, (steps[1:] + steps[:-1]) / 2, [0.0, 1.0]]))

    def objective_at(t):
        policy = FinishPolicy(allow_none=True, multi="auto", specialist_threshold=float(t))
        return objective("grec")(GREC.score(samples, rescore(records, policy), allow_missing=True, **options))

    brute = max(objective_at(t) for t in candidates)
    result = calibrate(records, samples, GREC, POLICY, options, folds=0)
    assert result.after == pytest.approx(brute)


def test_a_threshold_the_objective_does_not_depend_on_keeps_its_value():
    samples = [Sample(0, "x.png", "a", [BOX[0]])]  # answered with a wrong box: a miss at any threshold
    records = recorded([Prediction(0, Detections.empty(), {"path": "specialist", "expected_count": "many",
                                                           "path_answer": {"boxes": [BOX[3]], "scores": [0.9]}})])
    start = FinishPolicy(allow_none=True, multi="auto", specialist_threshold=0.42)
    assert calibrate(records, samples, GREC, start, folds=0).policy.specialist_threshold == 0.42
