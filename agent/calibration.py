"""Calibration: the thresholds that maximise a benchmark's official metric on a dev split.

An ``agent-cli eval`` run records, per sample, everything the finishing policy chose its boxes
from (``Result``: the path's scored boxes, the CRS candidates with their option probabilities or
``p(yes)``, the expected count). ``rescore`` chooses the boxes again at other thresholds with the
very functions the agent uses (``agent.finishing``), so re-scoring needs no model run, and
``calibrate`` searches the thresholds that matter for the recorded paths by coordinate ascent
over the recorded scores, maximising the format's objective:

- GREC (gRefCOCO): Pr@(F1=1), the GREx paper's headline;
- FineCops-Ref (and Ref-Adv, Ref-Reasoning): the mean of Precision@1 on the positives and the
  rejection accuracy on the negatives (``crs_accuracy``), so that neither is bought with the
  other; with positives only, Precision@1;
- RefCOCO: Acc@0.5.

The fitted thresholds are written as a settings file (``[agent]`` table) that ``--config`` loads,
with a ``[calibration]`` table naming the dev annotations, so that evaluating on the same file
warns that its numbers are optimistic.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tools.detections import Detections
from tools.errors import UserInputError
from tools.evaluation import Prediction
from tools.mllm.selection import selection_from_dict

from .configuration import Configuration
from .finishing import THRESHOLDS, FinishPolicy, finish

# The settings a calibrated file also fixes: the thresholds mean something only with them.
METHOD_SETTINGS = ("strategy", "focus", "allow_none", "multi", "crs_mode", "crs_permutations", "profile")
# Values tried per threshold: the recorded scores' quantiles (and the current value).
GRID_POINTS = 41
ROUNDS = 2


def objective(metric_name: str) -> Callable[[dict[str, Any]], float]:
    """The number ``calibrate`` maximises for a metric (see the module docstring)."""
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
        if "error" in fields:
            records.append(Recorded(prediction, None))
            continue
        if "path" not in fields or ("path_answer" not in fields and "candidates" not in fields):
            raise UserInputError(
                f"prediction {prediction.id!r} lacks the scores calibrate re-chooses boxes from (path_answer, "
                "candidates); run agent-cli eval with this version of REX on the dev split")
        state: dict[str, Any] = {"path": fields["path"], "expected_count": fields.get("expected_count")}
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
    rescored = []
    for record in records:
        if record.state is None:
            rescored.append(record.prediction)
        else:
            rescored.append(Prediction(record.prediction.id, finish(record.state, policy), record.prediction.fields))
    return rescored


def relevant_thresholds(records: Sequence[Recorded], policy: FinishPolicy) -> dict[str, np.ndarray]:
    """Per threshold that can change an answer of these records, the values worth trying."""
    scores: dict[str, list[float]] = {name: [] for name in THRESHOLDS}
    for record in records:
        state = record.state
        if state is None:
            continue
        path = state["path"]
        if path == "crs" and state.get("verification") is not None:
            scores["verify_threshold"] += list(state["verification"])
        elif path == "crs" and state.get("selection") is not None and policy.multi is not False:
            selection = state["selection"]
            best = max(selection.probability, 1e-12)
            scores["multi_ratio"] += list(selection.probabilities[: len(selection.candidates)] / best)
        elif path in ("specialist", "mllm") and "answer" in state and (policy.allow_none or policy.multi is not False):
            scores[f"{path}_threshold"] += list(state["answer"].scores)
    grids = {}
    for name, values in scores.items():
        values = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
        if len(values):
            quantiles = np.quantile(values, np.linspace(0, 1, GRID_POINTS))
            grids[name] = np.unique(np.concatenate([quantiles, [getattr(policy, name), 0.0, 1.0]]))
    return grids


@dataclass(frozen=True)
class Calibration:
    before: float
    after: float
    policy: FinishPolicy
    fitted: dict[str, float]  # the thresholds searched, at their best values
    curves: dict[str, tuple[np.ndarray, np.ndarray]]  # per threshold: values tried, objective (last round)


def calibrate(records: Sequence[Recorded], samples, metric, start: FinishPolicy,
              score_options: dict[str, Any] | None = None) -> Calibration:
    """Coordinate ascent over the relevant thresholds, from ``start``, maximising ``objective``."""
    goal = objective(metric.name)
    options = dict(score_options or {})

    def value(policy: FinishPolicy) -> float:
        return goal(metric.score(samples, rescore(records, policy), allow_missing=True, **options))

    before = value(start)
    best_policy, best = start, before
    grids = relevant_thresholds(records, start)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(ROUNDS):
        for name, grid in grids.items():
            results = np.array([value(replace(best_policy, **{name: float(v)})) for v in grid])
            curves[name] = (grid, results)
            winners = grid[results == results.max()]
            # Of equally good values, the one nearest the current setting: no gratuitous change.
            chosen = float(winners[np.argmin(np.abs(winners - getattr(best_policy, name)))])
            if results.max() >= best:
                best_policy, best = replace(best_policy, **{name: chosen}), float(results.max())
    fitted = {name: getattr(best_policy, name) for name in grids}
    return Calibration(before, best, best_policy, fitted, curves)


def run_configuration(predictions_file: str | os.PathLike, config_file: str | os.PathLike | None) -> Configuration:
    """The settings the predictions were made with: ``run.json`` beside them, else ``config_file``, else defaults."""
    run_file = Path(predictions_file).parent / "run.json"
    if run_file.is_file():
        try:
            agent = json.loads(run_file.read_text(encoding="utf-8"))["agent"]
        except (ValueError, KeyError, TypeError):
            raise UserInputError(f"{run_file}: not an agent-cli eval run file") from None
        return Configuration.load(env={}, **{k: v for k, v in agent.items() if k in Configuration.__dataclass_fields__})
    return Configuration.load(config_file, env={})


def settings_file_text(config: Configuration, calibration: Calibration, source: dict[str, Any]) -> str:
    """The calibrated settings as TOML: ``[agent]`` (method settings and thresholds), ``[calibration]``."""
    settings = {name: getattr(config, name) for name in METHOD_SETTINGS}
    settings.update(calibration.fitted)  # exact: a rounded threshold could fall on the other side of a score
    lines = ["# Written by agent-cli calibrate; load with --config.", "[agent]"]
    lines += [f"{name} = {_toml(value)}" for name, value in settings.items()]
    lines += ["", "[calibration]"]
    lines += [f"{name} = {_toml(value)}" for name, value in
              {**source, "before": round(calibration.before, 4), "after": round(calibration.after, 4)}.items()]
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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def _detections(data: dict[str, Any]) -> Detections:
    boxes = np.asarray(data["boxes"], dtype=np.float64).reshape(-1, 4)
    return Detections(boxes, np.asarray(data["scores"], dtype=np.float64))
