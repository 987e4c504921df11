"""Calibration: the thresholds that maximise a benchmark's official metric on a dev split.

(Just over 400 lines: the exact sweep, its cross-validation and the settings file it writes
are one procedure, read top to bottom.)

An ``agent-cli eval`` run records, per sample, everything the finishing policy chose its boxes
from (``Result``: the path's scored boxes, the CRS candidates with their option probabilities or
``p(yes)``, the counts). ``rescore`` chooses the boxes again at other thresholds with the very
functions the agent uses (``agent.finishing``), so re-scoring needs no model run, and
``calibrate`` finds the thresholds that matter for the recorded paths, maximising the format's
objective (``Metric.outcome``: the mean over parts of each part's hit rate):

- GREC (gRefCOCO): Pr@(F1=1), the GREx paper's headline;
- FineCops-Ref (and Ref-Adv, Ref-Reasoning): the mean of Precision@1 on the positives and the
  rejection accuracy on the negatives (``crs_accuracy``), so that neither is bought with the
  other; with positives only, Precision@1;
- RefCOCO: Acc@0.5.

**Exact along each threshold.** A sample's answer changes only where a threshold crosses one of
the scores it recorded (and, with an evaluator floor above REX's written one, where a returned
box's written score crosses that floor), so the objective is a step function of each threshold
with its steps there. Each sample's outcome is computed once per interval between its own steps
(at the interval's middle, so no step sits on the boundary), and a sorted sweep adds up every
sample's changes: the objective on every interval, without a metric call per value. Of the best
intervals, adjacent ones form plateaus; the threshold is the middle of the widest. Several
thresholds are fitted by coordinate ascent (``ROUNDS`` rounds), exact along each one in turn;
a threshold on which the objective is flat keeps its value. ``count_zero_threshold`` can also
stay unset (0 when it is the likeliest count), which is kept unless a threshold does better.

**How optimistic.** ``cross_validate`` fits on k-1 folds and scores the held-out fold: the mean
held-out gain over the starting thresholds is what the dev figure's gain is likely worth.

The fitted thresholds are written as a settings file (``[agent]`` table) that ``--config`` loads,
with a ``[calibration]`` table naming the dev annotations, so that evaluating on the same file
warns that its numbers are optimistic.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tools.detections import Detections
from tools.errors import UserInputError
from tools.evaluation import Prediction
from tools.evaluation.predictions import WRITTEN_FLOOR
from tools.files import read_settings_file
from tools.mllm.selection import selection_from_dict

from ..configuration import AUTO, Configuration
from ..finishing import THRESHOLDS, FinishPolicy, finish

# The settings a calibrated file also fixes: the thresholds mean something only with them.
METHOD_SETTINGS = ("strategy", "focus", "allow_none", "multi", "crs_mode", "crs_permutations", "profile",
                   "count_mode")
ROUNDS = 2
# The first line of a settings file calibrate writes (so that a rerun may replace it).
SETTINGS_HEADER = "# Written by agent-cli calibrate; load with --config."
FOLDS = 5  # cross-validation folds
FOLD_SEED = 0  # samples are dealt into folds in a seeded random order


def objective(metric_name: str) -> Callable[[dict[str, Any]], float]:
    """The number ``calibrate`` maximises, read from a metric's full result (see the module docstring)."""
    if metric_name == "grec":
        return lambda m: m["f1_precision"] or 0.0
    if metric_name == "refcoco":
        return lambda m: m["accuracy"] or 0.0
    if metric_name == "finecops":
        def balanced(m: dict[str, Any]) -> float:
            parts = [v for v in (m["crs_accuracy"]["positive"], m["crs_accuracy"]["negative"]) if v is not None]
            return float(np.mean(parts)) if parts else 0.0
        return balanced
    raise UserInputError(f"no calibration objective for the {metric_name} metric")


@dataclass(frozen=True)
class Recorded:
    """What one prediction recorded for the finishing policy (``None``: the sample failed)."""

    prediction: Prediction
    state: dict[str, Any] | None


def recorded(predictions: Sequence[Prediction]) -> list[Recorded]:
    """The finishing inputs of each prediction; ``UserInputError`` when a run predates them."""
    records = []
    for prediction in predictions:
        fields = prediction.fields
        if "error" in fields or fields.get("extraction_failed"):
            records.append(Recorded(prediction, None))
            continue
        if "path" not in fields or ("path_answer" not in fields and "candidates" not in fields):
            raise UserInputError(
                f"prediction {prediction.id!r} lacks the scores calibrate re-chooses boxes from (path_answer, "
                "candidates); run agent-cli eval with this version of REX on the dev split")
        state: dict[str, Any] = {"path": fields["path"], "expected_count": fields.get("expected_count"),
                                 "count_probabilities": fields.get("count_probabilities")}
        if "path_answer" in fields:
            state["answer"] = _detections(fields["path_answer"])
        if "candidates" in fields:
            state["candidates"] = _detections(fields["candidates"])
            if fields.get("selection") is not None:
                state["selection"] = selection_from_dict(fields["selection"], state["candidates"])
            if fields.get("verification") is not None:
                state["verification"] = np.asarray(fields["verification"], dtype=np.float64)
        records.append(Recorded(prediction, state))
    return records


def rescore(records: Sequence[Recorded], policy: FinishPolicy) -> list[Prediction]:
    """The predictions the agent would have written with ``policy``'s thresholds."""
    return [_rescored(record, policy) for record in records]


def _rescored(record: Recorded, policy: FinishPolicy) -> Prediction:
    if record.state is None:
        return record.prediction
    finished = finish(record.state, policy)
    return Prediction.decided(record.prediction.id, finished.detections, finished.threshold, record.prediction.fields)


def breakpoints(state: dict[str, Any] | None, policy: FinishPolicy, name: str, floor: float | None = None
                ) -> np.ndarray:
    """The values of threshold ``name`` at which this sample's answer can change (sorted, distinct,
    in [0, 1]; empty when it cannot): the recorded scores it is compared with and, when the
    evaluator keeps only written scores reaching ``floor`` above REX's own, where a returned box's
    written score (``decision_scores``, aligned to that threshold) crosses it."""
    if state is None:
        return np.zeros(0)
    path, values, scale = state["path"], [], 1.0
    if name == "verify_threshold" and path == "crs" and state.get("verification") is not None:
        values = list(state["verification"])
    elif (name == "multi_ratio" and path == "crs" and state.get("verification") is None
          and state.get("selection") is not None and policy.multi is not False):
        selection = state["selection"]
        scale = max(selection.probability, 1e-12)  # a ratio r is the threshold r x best
        values = list(selection.probabilities[: len(selection.candidates)] / scale)
    elif name == f"{path}_threshold" and "answer" in state and (policy.allow_none or policy.multi is not False):
        values = list(state["answer"].scores)
    elif (name == "count_zero_threshold" and policy.multi == AUTO and policy.count_mode != "text"
          and state.get("count_probabilities") is not None):
        values = [state["count_probabilities"][0]]
    values = np.asarray(values, dtype=np.float64)
    if floor is not None and floor > WRITTEN_FLOOR and name != "count_zero_threshold" and len(values):
        # written(s, t) >= floor  <=>  (s - t) / (1 - t) >= m  <=>  t <= (s - m) / (1 - m)
        margin = (floor - WRITTEN_FLOOR) / (1.0 - WRITTEN_FLOOR)
        values = np.concatenate([values, (values * scale - margin) / ((1.0 - margin) * scale)])
    return np.unique(np.clip(values, 0.0, 1.0))


def relevant_thresholds(records: Sequence[Recorded], policy: FinishPolicy, floor: float | None = None
                        ) -> dict[str, np.ndarray]:
    """Per threshold that can change an answer of these records, every value where it can."""
    found = {}
    for name in THRESHOLDS:
        values = [breakpoints(record.state, policy, name, floor) for record in records]
        if any(len(v) for v in values):
            found[name] = np.unique(np.concatenate(values))
    return found


@dataclass(frozen=True)
class CrossValidation:
    folds: int
    gains: tuple[float, ...]  # per fold: the held-out objective after fitting on the others, minus before
    held_out_before: float  # mean held-out objective at the starting thresholds
    held_out_after: float  # mean held-out objective at each fold's fitted thresholds

    @property
    def gain(self) -> float:
        return float(np.mean(self.gains))


@dataclass(frozen=True)
class Calibration:
    before: float
    after: float
    policy: FinishPolicy
    fitted: dict[str, float | None]  # the thresholds searched, at their best values
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # per threshold: the middles of its intervals, objective
    cross_validation: CrossValidation | None = None


class Problem:
    """The dev samples with their records, and the per-sample outcomes the search sums."""

    def __init__(self, records: Sequence[Recorded], samples, metric, options: dict[str, Any] | None = None) -> None:
        by_id = {str(record.prediction.id): record for record in records}
        self.samples = list(samples)
        self.records = [by_id.get(str(sample.id)) for sample in self.samples]
        self.metric, self.options = metric, dict(options or {})
        # The evaluator's floor over the written scores, when it lies above REX's own (GREC).
        self.floor = self.options.get("score_threshold")
        self._curves: dict[tuple, list[tuple[str, np.ndarray, list[bool]]]] = {}

    def hit(self, index: int, policy: FinishPolicy) -> tuple[str, bool]:
        record = self.records[index]
        prediction = (_rescored(record, policy) if record is not None
                      else Prediction(self.samples[index].id, Detections.empty()))
        return self.metric.outcome(self.samples[index], prediction, **self.options)

    def objective(self, policy: FinishPolicy, indices: Sequence[int] | None = None) -> float:
        """The objective over ``indices`` (default: every sample), from per-sample outcomes."""
        hits, totals = Counter(), Counter()
        for index in range(len(self.samples)) if indices is None else indices:
            part, hit = self.hit(index, policy)
            hits[part] += hit
            totals[part] += 1
        return _mean_rate(hits, totals)

    def curves(self, policy: FinishPolicy, name: str) -> list[tuple[str, np.ndarray, list[bool]]]:
        """Per sample: its part, its own breakpoints for ``name``, and its outcome on each interval
        between them (the first from 0, the last to 1). Kept per setting of the other thresholds."""
        key = (name, replace(policy, **{name: None}))
        if key not in self._curves:
            found = []
            for index, record in enumerate(self.records):
                edges = breakpoints(None if record is None else record.state, policy, name, self.floor)
                outcomes = [self.hit(index, replace(policy, **{name: t})) for t in _middles(edges)]
                found.append((outcomes[0][0], edges, [hit for _, hit in outcomes]))
            self._curves[key] = found
        return self._curves[key]

    def sweep(self, policy: FinishPolicy, name: str, indices: Sequence[int] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The objective over ``indices`` on every interval between the recorded values of ``name``:
        the intervals' lower and upper bounds and the objective on each (intervals as ``_middles``)."""
        curves = self.curves(policy, name)
        chosen = range(len(curves)) if indices is None else indices
        edges = np.unique(np.concatenate([curves[i][1] for i in chosen] + [np.zeros(0)]))
        lower, upper = _bounds(edges)
        hits, totals = Counter(), Counter()
        changes: dict[float, Counter] = {}
        for i in chosen:
            part, own, outcome = curves[i]
            totals[part] += 1
            hits[part] += outcome[0]
            for edge, before, after in zip(own, outcome, outcome[1:]):
                if before != after:
                    changes.setdefault(float(edge), Counter())[part] += int(after) - int(before)
        values = []
        for position in range(len(lower)):
            values.append(_mean_rate(hits, totals))
            if position < len(edges):
                hits.update(changes.get(float(edges[position]), Counter()))
        return lower, upper, np.array(values)

    def ascend(self, start: FinishPolicy, indices: Sequence[int] | None = None,
               curves: dict | None = None) -> FinishPolicy:
        """Coordinate ascent from ``start`` over the thresholds the answers of ``indices`` depend on;
        a threshold on which their objective is flat keeps its value."""
        policy = start
        chosen_records = [r for r in (self.records if indices is None else [self.records[i] for i in indices]) if r]
        names = list(relevant_thresholds(chosen_records, start, self.floor))
        for _ in range(ROUNDS):
            for name in names:
                lower, upper, values = self.sweep(policy, name, indices)
                if curves is not None:
                    curves[name] = ((lower + upper) / 2, values)
                if values.min() == values.max():
                    continue  # nothing to gain: no gratuitous change
                chosen = _plateau_middle(lower, upper, values, getattr(policy, name))
                if name == "count_zero_threshold" and self.objective(replace(policy, **{name: None}), indices) >= \
                        values.max():
                    chosen = None  # the likeliest count does as well
                policy = replace(policy, **{name: chosen})
        return policy


def calibrate(records: Sequence[Recorded], samples, metric, start: FinishPolicy,
              score_options: dict[str, Any] | None = None, folds: int = FOLDS) -> Calibration:
    """The exact search (module docstring) from ``start``, and a ``folds``-fold cross-validated estimate
    of its held-out gain (none with fewer than 2 folds)."""
    samples = list(samples)
    options = dict(score_options or {})
    problem = Problem(records, samples, metric, options)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    policy = problem.ascend(start, curves=curves)
    goal = objective(metric.name)

    def value(chosen: FinishPolicy) -> float:
        return goal(metric.score(samples, rescore(records, chosen), allow_missing=True, **options))

    fitted = {name: getattr(policy, name) for name in curves}
    validation = cross_validate(problem, start, folds) if folds >= 2 and curves else None
    return Calibration(value(start), value(policy), policy, fitted, curves, validation)


def cross_validate(problem: Problem, start: FinishPolicy, folds: int = FOLDS) -> CrossValidation:
    """Fit on ``folds - 1`` folds, score the held-out one, for each fold (samples dealt in a seeded order)."""
    count = len(problem.samples)
    folds = max(2, min(folds, count))
    order = np.random.default_rng(FOLD_SEED).permutation(count)
    members = [sorted(order[fold::folds].tolist()) for fold in range(folds)]
    before, after = [], []
    for held_out in members:
        train = sorted(set(range(count)) - set(held_out))
        fitted = problem.ascend(start, train)
        before.append(problem.objective(start, held_out))
        after.append(problem.objective(fitted, held_out))
    gains = tuple(float(b - a) for a, b in zip(before, after))
    return CrossValidation(folds, gains, float(np.mean(before)), float(np.mean(after)))


def _middles(edges: np.ndarray) -> list[float]:
    """A threshold inside each interval the sorted ``edges`` cut [0, 1] into: [0, e0], (e0, e1], ...,
    (e_last, 1] (the last only when e_last < 1)."""
    lower, upper = _bounds(edges)
    return [0.0 if hi == 0.0 else float((lo + hi) / 2) for lo, hi in zip(lower, upper)]


def _bounds(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper bounds of the intervals ``_middles`` describes."""
    if not len(edges):
        return np.array([0.0]), np.array([1.0])
    lower = np.concatenate([[0.0], edges])
    upper = np.concatenate([edges, [1.0]])
    if edges[-1] >= 1.0:
        lower, upper = lower[:-1], upper[:-1]
    return lower, upper


def _plateau_middle(lower: np.ndarray, upper: np.ndarray, values: np.ndarray, current: float | None) -> float:
    """The middle of the widest run of adjacent intervals with the best value (nearest ``current`` on a tie)."""
    best, runs, position = values.max(), [], 0
    while position < len(values):
        if values[position] != best:
            position += 1
            continue
        end = position
        while end + 1 < len(values) and values[end + 1] == best:
            end += 1
        runs.append((float(lower[position]), float(upper[end])))
        position = end + 1
    width = max(hi - lo for lo, hi in runs)
    widest = [(lo + hi) / 2 for lo, hi in runs if hi - lo == width]
    reference = 0.0 if current is None else current
    return min(widest, key=lambda middle: abs(middle - reference))


def _mean_rate(hits: Counter, totals: Counter) -> float:
    """The mean over parts of each part's hit rate, in percent."""
    rates = [100.0 * hits[part] / totals[part] for part in totals if totals[part]]
    return float(np.mean(rates)) if rates else 0.0


def run_configuration(predictions_file: str | os.PathLike, config_file: str | os.PathLike | None) -> Configuration:
    """The settings the predictions were made with: ``run.json`` beside them, else ``config_file``, else defaults."""
    run_file = Path(predictions_file).parent / "run.json"
    if run_file.is_file():
        agent = read_settings_file(run_file, "an agent-cli eval run file").get("agent")
        if not isinstance(agent, dict):
            raise UserInputError(f"{run_file}: not an agent-cli eval run file (no [agent] settings)")
        return Configuration.load(env={}, **{k: v for k, v in agent.items() if k in Configuration.__dataclass_fields__})
    return Configuration.load(config_file, env={})


def settings_file_text(config: Configuration, calibration: Calibration, source: dict[str, Any]) -> str:
    """The calibrated settings as TOML: ``[agent]`` (method settings and thresholds), ``[calibration]``."""
    settings = {name: getattr(config, name) for name in METHOD_SETTINGS}
    # Exact: a rounded threshold could fall on the other side of a score. Unset ones are left out.
    settings.update({name: value for name, value in calibration.fitted.items() if value is not None})
    lines = [SETTINGS_HEADER, "[agent]"]
    lines += [f"{name} = {_toml(value)}" for name, value in settings.items()]
    lines += ["", "[calibration]"]
    validation = calibration.cross_validation
    held_out = {} if validation is None else {"cv_folds": validation.folds, "cv_gain": round(validation.gain, 4)}
    lines += [f"{name} = {_toml(value)}" for name, value in
              {**source, "before": round(calibration.before, 4), "after": round(calibration.after, 4),
               **held_out}.items()]
    return "\n".join(lines) + "\n"


def calibrated_on(config_file: str | os.PathLike | None) -> str | None:
    """The dev annotations a settings file was calibrated on (its ``[calibration]`` table), if any."""
    if not config_file or not Path(config_file).is_file() or Path(config_file).suffix == ".json":
        return None
    import tomllib

    try:
        table = tomllib.loads(Path(config_file).read_text(encoding="utf-8")).get("calibration", {})
    except ValueError:
        return None
    annotations = table.get("annotations")
    return annotations if isinstance(annotations, str) else None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # TOML has no escape for a lone surrogate (a path's undecodable byte): written as its escape text.
    return json.dumps(str(value).encode("utf-8", "backslashreplace").decode("utf-8"))


def _detections(data: dict[str, Any]) -> Detections:
    boxes = np.asarray(data["boxes"], dtype=np.float64).reshape(-1, 4)
    return Detections(boxes, np.asarray(data["scores"], dtype=np.float64))
