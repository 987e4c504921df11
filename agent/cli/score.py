"""``agent-cli score``: a benchmark's numbers for a predictions file.

Registered on the ``agent-cli`` app with ``app.command("score")(score)``. The formats, their
scorers and tables are the registry ``tools.evaluation.formats``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from tools.errors import UserInputError
from tools.evaluation.formats import FORMAT_HELP, FORMATS, get_format

stdout = Console()


def score(
    dataset_format: str = typer.Option(..., "--format", help=FORMAT_HELP + " (see the README)."),
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
    crs_letters: str = typer.Option(
        "options", "--crs-letters",
        help="FineCops-Ref: a positive's CRS letter names the option offered (options), or the detector's raw box "
             "of that rank, A-D only (raw: evaluation_CRS_pos.py)."),
    iou_strict: bool = typer.Option(
        False, "--iou-strict", help="FineCops-Ref: a hit needs IoU > 0.5, not >= (evaluation_SFA.py)."),
    fold_level_3: bool = typer.Option(
        False, "--fold-level-3", help="FineCops-Ref: count level 3 as level 2 (both CRS evaluators)."),
    exclude_extraction_failed: bool = typer.Option(
        False, "--exclude-extraction-failed",
        help="Leave out the samples whose target extraction failed (the authors' scripts drop them); "
             "default: they count as misses."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Score PREDICTIONS against a benchmark's ANNOTATIONS, with the authors' metric definitions."""
    from tools.evaluation import read_predictions
    from tools.evaluation.common import without_extraction_failures
    from tools.evaluation.formats import read_dataset

    metric = get_format(dataset_format).metric
    options = {"score_threshold": score_threshold, "matching": matching, "confidence": confidence,
               "crs_letters": crs_letters, "iou_strict": iou_strict, "fold_level_3": fold_level_3}
    defaults = {"confidence": "rex", "crs_letters": "options", "iou_strict": False, "fold_level_3": False}
    for name, value in options.items():
        if value not in (None, defaults.get(name)) and name not in metric.options:
            users = ", ".join(f for f, entry in FORMATS.items() if name in entry.metric.options)
            raise UserInputError(f"--{name.replace('_', '-')} applies to {users} only")
    if score_threshold is not None and not 0 <= score_threshold <= 1:
        raise UserInputError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    samples = list(read_dataset(dataset_format, annotations, split=split))
    answers = read_predictions(predictions)
    excluded = 0
    if exclude_extraction_failed:
        samples, answers, excluded = without_extraction_failures(samples, answers)
    chosen = {name: value for name, value in options.items() if name in metric.options and value is not None}
    result = metric.score(samples, answers, allow_missing=allow_missing, **chosen)
    result["counts"]["extraction_failed_excluded"] = excluded
    if as_json:
        stdout.print_json(json.dumps({"format": dataset_format, **result}))
        return
    stdout.print(f"{dataset_format}: {predictions} on {annotations}", markup=False, soft_wrap=True)
    for table in metric.tables(result):
        stdout.print(table)
    notes = [f"{count} {description}" for description, count in _notes(result["counts"]) if count]
    if notes:
        stdout.print("; ".join(notes), markup=False)


def _notes(counts: dict[str, Any]):
    yield "samples without a prediction (scored as empty)", counts["missing_predictions"]
    yield "predictions for unknown ids (ignored)", counts["unmatched_predictions"]
    yield "samples left out: their target extraction failed", counts.get("extraction_failed_excluded", 0)
