"""``agent-cli score``: a benchmark's numbers for a predictions file.

Registered on the ``agent-cli`` app with ``app.command("score")(score)``; it does not
import ``agent.cli`` so that module can import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.errors import UserInputError

# Benchmark format -> which score it gets.
SCORERS = {
    "finecops-ref": "finecops",
    "ref-adv": "finecops",
    "ref-reasoning": "finecops",
    "refcoco": "refcoco",
    "grec": "grec",
    "grefcoco": "grec",
}
stdout = Console()


def score(
    dataset_format: str = typer.Option(
        ..., "--format", help="finecops-ref, ref-adv, ref-reasoning, refcoco, grec (COCO-style) or grefcoco (released)."
    ),
    annotations: Path = typer.Option(
        ..., "--annotations", help="Annotation file; for grefcoco grefs(unc).json, with instances.json beside it."
    ),
    predictions: Path = typer.Option(
        ...,
        "--predictions",
        help='JSON Lines, one {"id", "boxes", "scores"} per sample; id: the image entry id (grefcoco: the sent_id).',
    ),
    split: Optional[str] = typer.Option(None, "--split", help="gRefCOCO split (grefcoco only), e.g. val."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Score samples without a prediction as empty answers instead of failing."
    ),
    score_threshold: Optional[float] = typer.Option(
        None, "--score-threshold", help="GREC: keep boxes scoring at least this (default 0.7, the released evaluator)."
    ),
    matching: Optional[str] = typer.Option(
        None, "--matching", help="GREC: giou (default, the released evaluator) or iou (the paper's text)."
    ),
    confidence: str = typer.Option(
        "rex", "--confidence",
        help="FineCops-Ref: what AUROC and Recall@k rank CRS answers by: rex, or reference (the authors' evaluators)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Score PREDICTIONS against a benchmark's ANNOTATIONS, with the authors' metric definitions."""
    from tools.datasets import read_dataset
    from tools.evaluation import read_predictions, score_finecops_ref, score_grec, score_refcoco

    if dataset_format not in SCORERS:
        raise UserInputError(f"unknown format {dataset_format!r}; choose one of {', '.join(SCORERS)}")
    scorer = SCORERS[dataset_format]
    if scorer != "grec" and (score_threshold is not None or matching is not None):
        raise UserInputError("--score-threshold and --matching apply to grec and grefcoco only")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise UserInputError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    if confidence != "rex" and scorer != "finecops":
        raise UserInputError("--confidence applies to finecops-ref, ref-adv and ref-reasoning only")
    samples = list(read_dataset(dataset_format, annotations, split=split))
    answers = read_predictions(predictions)
    if scorer == "finecops":
        result = score_finecops_ref(samples, answers, allow_missing=allow_missing, confidence=confidence)
    elif scorer == "refcoco":
        result = score_refcoco(samples, answers, allow_missing=allow_missing)
    else:
        grec_settings = {"score_threshold": score_threshold, "matching": matching}
        result = score_grec(
            samples, answers, allow_missing=allow_missing, **{k: v for k, v in grec_settings.items() if v is not None}
        )
    if as_json:
        stdout.print_json(json.dumps({"format": dataset_format, **result}))
        return
    stdout.print(f"{dataset_format}: {predictions} on {annotations}", markup=False, soft_wrap=True)
    for table in {"finecops": finecops_tables, "refcoco": refcoco_tables, "grec": grec_tables}[scorer](result):
        stdout.print(table)
    notes = [f"{count} {description}" for description, count in _notes(result["counts"]) if count]
    if notes:
        stdout.print("; ".join(notes), markup=False)


def finecops_tables(result: dict[str, Any]) -> list[Table]:
    counts = result["counts"]
    precision = Table("level", "P@1", "P@5", "P@10", "positives", title="Precision@k (%)")
    for level in result["precision_at_1"]:
        row = [_pct(result[f"precision_at_{k}"][level]) for k in (1, 5, 10)]
        precision.add_row(escape(level), *row, str(counts["positives"][level]))
    tables = [precision]
    if result["precision_at_1_by_route"]:
        routes = Table("route level", "P@1", title="Precision@1 by SFA route (%)")
        for route, value in result["precision_at_1_by_route"].items():
            routes.add_row(escape(str(route)), _pct(value))
        tables.append(routes)
    if counts["negatives"]:
        recall = Table("negative type/level/cate", "R@1", "R@5", "R@10", "pairs", title="Recall@k (%)")
        for key in result["recall_at_1"]:
            row = [_pct(result[f"recall_at_{k}"][key]) for k in (1, 5, 10)]
            recall.add_row(escape(key), *row, str(counts["recall_groups"][key]))
        separation = Table("negatives", "AUROC", "FPR@95", "AUPR", "count", title="Positives vs negatives (%)")
        separation.add_row("all (vs level-1 positives)", *map(_pct, (result["auroc"], result["fpr95"], result["aupr"])),
                           str(counts["negatives"]))  # fmt: skip
        for key in result["auroc_by_key"]:
            values = (result["auroc_by_key"][key], result["fpr95_by_key"][key], result["aupr_by_key"][key])
            separation.add_row(escape(key), *map(_pct, values), str(counts["negatives_by_key"][key]))
        crs = Table("CRS accuracy", "positives", "negatives (no box)", title="Answer accuracy (%)")
        crs.add_row("", _pct(result["crs_accuracy"]["positive"]), _pct(result["crs_accuracy"]["negative"]))
        tables += [recall, separation, crs]
    return tables


def refcoco_tables(result: dict[str, Any]) -> list[Table]:
    table = Table("Acc@0.5", "P@5", "P@10", "samples", title="RefCOCO accuracy (%)")
    table.add_row(*map(_pct, (result["accuracy"], result["precision_at_5"], result["precision_at_10"])),
                  str(result["counts"]["samples"]))  # fmt: skip
    return [table]


def grec_tables(result: dict[str, Any]) -> list[Table]:
    settings = result["settings"]
    title = f"GREC (%), {settings['matching']} >= {settings['iou_threshold']}, score >= {settings['score_threshold']}"
    table = Table("Pr@(F1=1, IoU>=0.5)", "N-acc", "T-acc", "samples", "no-target", title=title)
    counts = result["counts"]
    table.add_row(*map(_pct, (result["f1_precision"], result["n_acc"], result["t_acc"])),
                  str(counts["samples"]), str(counts["no_target"]))  # fmt: skip
    return [table]


def _notes(counts: dict[str, Any]):
    yield "samples without a prediction (scored as empty)", counts["missing_predictions"]
    yield "predictions for unknown ids (ignored)", counts["unmatched_predictions"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
