"""The report of an evaluation run: terminal tables, ``metrics.json``, ``metrics.csv``, ``report.png``.

``metrics.json`` holds the benchmark's score dict (the keys ``agent-cli score --json``
prints), ``errors`` (samples answered with an error), ``timing`` (mean and median
seconds per step from the predictions' ``timings``, and samples per second of agent
time) and ``run`` (the settings). ``metrics.csv`` is the same as flat ``key,value``
rows, nested keys joined by dots. ``report.png`` draws the headline numbers of this run
and of every compared run as grouped bars (FineCops-Ref: Precision@1 by level) and, for
FineCops-Ref, the confidence histograms behind AUROC.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.datasets import Sample
from tools.errors import UserInputError
from tools.evaluation import Prediction
from tools.evaluation.common import EXTRACTION_FAILED, READ_AS_STORED, without_extraction_failures
from tools.evaluation.finecops import REFERENCE_EVALUATORS, answer_confidence, score_finecops_ref
from tools.evaluation.formats import FORMATS, get_format
from tools.files import read_settings_file, write_atomically

METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
REPORT_PNG = "report.png"


def timing_summary(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Mean and median seconds of every step over the predictions that timed it, and samples per
    second of agent time (excluding model loading and file writes, so resumed runs add up)."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for prediction in predictions:
        for step, value in (prediction.fields.get("timings") or {}).items():
            seconds[step].append(float(value))
    steps = {step: {"mean_s": float(np.mean(values)), "median_s": float(np.median(values)), "samples": len(values)}
             for step, values in seconds.items()}
    totals = seconds.get("total", [])
    return {
        "steps": steps,
        "samples_per_second": len(totals) / sum(totals) if sum(totals) > 0 else None,
        "timed_samples": len(totals),
    }


def build_metrics(dataset_format: str, result: dict[str, Any], predictions: Sequence[Prediction],
                  run: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``'s content (see the module docstring)."""
    errors = sum("error" in prediction.fields for prediction in predictions)
    outcomes = {name: sum(bool(prediction.fields.get(name)) for prediction in predictions)
                for name in (EXTRACTION_FAILED, READ_AS_STORED)}
    return {"format": dataset_format, **result, "errors": errors, **outcomes, "timing": timing_summary(predictions),
            "run": run}


def reference_evaluation(dataset_format: str, samples: Sequence[Sample], predictions: Sequence[Prediction],
                         agent_settings: dict[str, Any]) -> dict[str, Any] | None:
    """What the authors' evaluator of this way of answering reports for a FineCops-Ref-shaped run
    made with ``profile="reference"``: its scoring quirks (``REFERENCE_EVALUATORS``), the samples
    whose target extraction failed left out as the scripts leave them out. ``None`` for other runs."""
    if agent_settings.get("profile") != "reference" or get_format(dataset_format).metric.name != "finecops":
        return None
    strategy = agent_settings["strategy"]
    if strategy in ("sfa", "sfa+crs"):
        key = "sfa"
    elif strategy == "crs" and agent_settings.get("crs_mode") == "choice":
        key = "crs+none" if agent_settings.get("allow_none") else "crs"
    else:
        return None
    script, options = REFERENCE_EVALUATORS[key]
    kept, answers, excluded = without_extraction_failures(samples, predictions)
    scores = score_finecops_ref(kept, answers, allow_missing=True, **options)
    return {"script": script, "options": options, "extraction_failed_excluded": excluded,
            **{name: scores[name] for name in ("precision_at_1", "precision_at_1_by_route", "crs_accuracy")}}


def reference_evaluation_line(evaluation: dict[str, Any]) -> str:
    """One line of what ``reference_evaluation`` found."""
    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    if evaluation["script"].startswith("SFA"):
        by_route = evaluation["precision_at_1_by_route"]
        figures = f"route 1 {shown(by_route.get('1'))}, route 2 {shown(by_route.get('2'))}"
    else:
        by_level = evaluation["precision_at_1"]
        figures = f"level 1 {shown(by_level.get('1'))}, level 2 (with 3) {shown(by_level.get('2'))}"
        if evaluation["script"].endswith("neg.py"):
            figures += f", negatives answered None {shown(evaluation['crs_accuracy']['negative'])}"
    left_out = evaluation["extraction_failed_excluded"]
    return (f"the authors' {evaluation['script']} would report Precision@1 {shown(evaluation['precision_at_1']['all'])}"
            f" ({figures})" + (f", {left_out} samples left out for a failed target extraction" if left_out else ""))


def write_metrics(output: Path, metrics: dict[str, Any]) -> tuple[Path, Path]:
    """``metrics.json`` and ``metrics.csv`` in ``output``."""
    json_path, csv_path = output / METRICS_JSON, output / METRICS_CSV
    write_atomically(json_path, json.dumps(metrics, indent=2) + "\n")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["key", "value"])
    writer.writerows(flatten(metrics))
    write_atomically(csv_path, rows.getvalue())
    return json_path, csv_path


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` for every leaf of nested dicts; ``None`` becomes an empty cell."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        yield prefix, json.dumps(value)
    else:
        yield prefix, "" if value is None else value


def headline(metrics: dict[str, Any]) -> tuple[str, dict[str, float | None]]:
    """The chart's title and this run's bars."""
    metric = get_format(metrics["format"]).metric
    return metric.headline_title, metric.headline(metrics)


def run_label(metrics: dict[str, Any], directory: Path) -> str:
    return f"{metrics['run']['agent']['strategy']} ({directory.name})"


def read_compared(directories: Sequence[Path], dataset_format: str) -> list[tuple[str, dict[str, Any]]]:
    """``(label, metrics)`` of earlier runs to compare with; they must be scored on the same kind of benchmark."""
    compared = []
    for directory in directories:
        path = Path(directory) / METRICS_JSON
        if not path.is_file():
            raise UserInputError(f"--compare {directory}: no {METRICS_JSON}; evaluate that run to the end first")
        metrics = read_settings_file(path, "a metrics file of agent-cli eval")
        try:
            label = run_label(metrics, Path(directory))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise UserInputError(f"{path}: not a metrics file of agent-cli eval ({type(error).__name__})") from None
        scored_as = FORMATS.get(metrics.get("format"))
        if scored_as is None or scored_as.metric is not get_format(dataset_format).metric:
            raise UserInputError(
                f"--compare {directory}: scored as {metrics.get('format')!r}, not like {dataset_format!r}"
            )
        compared.append((label, metrics))
    return compared


def finecops_confidences(samples: Sequence[Sample], predictions: Sequence[Prediction]) -> tuple[list, list]:
    """The confidences behind FineCops-Ref's overall AUROC: level-1 positives, and all negatives.

    A sample's confidence is ``tools.evaluation.finecops.answer_confidence``.
    """
    by_id = {str(prediction.id): prediction for prediction in predictions}
    positives, negatives = [], []
    for sample in samples:
        prediction = by_id.get(str(sample.id))
        if prediction is None or not (sample.is_negative or sample.level == 1):
            continue
        (negatives if sample.is_negative else positives).append(answer_confidence(prediction))
    return positives, negatives


def write_plot(path: Path, runs: Sequence[tuple[str, dict[str, Any]]], confidences: tuple[list, list] | None) -> Path:
    """``report.png``: grouped bars of every run's headline numbers, and the confidence histograms when given."""
    from matplotlib.figure import Figure  # without pyplot: no GUI backend, renders with Agg

    title, _ = headline(runs[0][1])
    figure = Figure(figsize=(12 if confidences else 7, 4.5), layout="constrained")
    bars_axes, *rest = figure.subplots(1, 2 if confidences else 1, squeeze=False)[0]
    categories = list(dict.fromkeys(key for _, metrics in runs for key in headline(metrics)[1]))
    width = 0.8 / len(runs)
    for position, (label, metrics) in enumerate(runs):
        values = headline(metrics)[1]
        heights = [math.nan if values.get(key) is None else values[key] for key in categories]
        offsets = np.arange(len(categories)) + (position - (len(runs) - 1) / 2) * width
        drawn = bars_axes.bar(offsets, heights, width, label=label)
        bars_axes.bar_label(drawn, labels=["" if math.isnan(h) else f"{h:.1f}" for h in heights], fontsize=8)
    bars_axes.set_xticks(np.arange(len(categories)), categories)
    bars_axes.set_ylim(0, 105)
    bars_axes.set_title(title)
    bars_axes.legend(fontsize=8)
    if confidences:
        _confidence_histograms(rest[0], *confidences, runs[0][1].get("auroc"))
    write_atomically(path, _png_bytes(figure))
    return path


def _confidence_histograms(axes, positives: list[float], negatives: list[float], auroc: float | None) -> None:
    values = positives + negatives
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1.0, 21)
    axes.hist(positives, bins=bins, alpha=0.6, label=f"level-1 positives ({len(positives)})")
    axes.hist(negatives, bins=bins, alpha=0.6, label=f"negatives ({len(negatives)})")
    axes.set_xlabel("confidence (highest box score)")
    axes.set_ylabel("samples")
    axes.set_title("Confidence behind AUROC" + ("" if auroc is None else f" (AUROC {auroc:.1f}%)"))
    axes.legend(fontsize=8)


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def print_report(
    console: Console, metrics: dict[str, Any], compared: Sequence[tuple[str, dict[str, Any]]] = ()
) -> None:
    """The score tables (as ``agent-cli score`` prints them), the timing table and, with compared
    runs, one row of headline numbers per run."""
    for table in get_format(metrics["format"]).metric.tables(metrics):
        console.print(table)
    timing = metrics["timing"]
    steps = Table("step", "mean ms", "median ms", "samples", title="Time per step")
    for step, summary in timing["steps"].items():
        mean, median = (f"{1000 * summary[key]:.1f}" for key in ("mean_s", "median_s"))
        steps.add_row(step, mean, median, str(summary["samples"]))
    console.print(steps)
    if timing["samples_per_second"] is not None:
        console.print(f"{timing['samples_per_second']:.2f} samples/s of agent time", markup=False)
    if compared:
        title, _ = headline(metrics)
        runs = [("this run", metrics), *compared]
        categories = list(dict.fromkeys(key for _, m in runs for key in headline(m)[1]))
        table = Table("run", *categories, title=title)
        for label, run_metrics in runs:
            values = headline(run_metrics)[1]
            table.add_row(escape(label),
                          *("-" if values.get(key) is None else f"{values[key]:.2f}" for key in categories))
        console.print(table)
