"""``agent-cli finetune-data`` (register ``finetune_data`` on the app), or on its own: ``python -m finetune.build_cli``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.defaults import CRS_CANDIDATES
from tools.errors import UserInputError
from tools.evaluation.formats import FORMAT_HELP
from tools.profiles import PROFILES

if TYPE_CHECKING:
    from .build import BuildReport


def finetune_data(
    dataset_format: str = typer.Option(..., "--format", help=FORMAT_HELP + " (see the README)."),
    annotations: Path = typer.Option(..., "--annotations", help="The dataset's annotation file."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder the file names are relative to."),
    split: Optional[str] = typer.Option(None, "--split", help="gRefCOCO split (grefcoco only), e.g. train."),
    detector: Optional[str] = typer.Option(
        None, "--detector",
        help="Detector Hub id or folder computing the candidates (Grounding DINO, MM-GDINO, OWLv2, Florence-2)."),
    candidates: Optional[Path] = typer.Option(
        None, "--candidates",
        help='Cached candidates instead of a detector: JSON Lines {"id", "boxes", "scores"} (a predictions file).'),
    output_dir: Path = typer.Option(..., "--output", help="Folder for the samples, the report; rerun to resume."),
    positives: Optional[int] = typer.Option(
        None, "--positives", min=0, help="Positives to keep, drawn with --seed (paper: 10000); default: all."),
    negatives: int = typer.Option(
        0, "--negatives", min=0, help="Negatives / no-target samples to keep, answered None (paper: 2500)."),
    top_k: int = typer.Option(CRS_CANDIDATES.top_k, "--top-k", help="Candidates offered before NMS (at most 10)."),
    nms_iou: float = typer.Option(CRS_CANDIDATES.iou_threshold, "--nms", help="NMS IoU over the candidates."),
    profile: str = typer.Option(
        "default", "--profile", help=f"{' or '.join(PROFILES)}: how candidates are built, as CRS builds them."),
    min_iou: float = typer.Option(0.5, "--min-iou", help="Keep a positive when a candidate's IoU exceeds this."),
    seed: int = typer.Option(0, "--seed", help="Fixes which samples are drawn and how their options are shuffled."),
    none_option: Optional[bool] = typer.Option(
        None, "--none-option/--no-none-option",
        help="Offer 'None' on every sample; default: exactly when --negatives is above 0."),
    dataset_name: str = typer.Option("rex_crs", "--dataset-name", help="LLaMA-Factory dataset name and file."),
    prompts_dir: Optional[str] = typer.Option(None, "--prompts-dir", help="Your own prompt templates."),
    device: str = typer.Option("auto", "--device", help="Detector device: auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="Detector weights: auto, fp32, fp16 or bf16."),
    task: str = typer.Option(
        "choice", "--task",
        help="choice: multiple-choice samples (the paper's CRS); verify: a yes/no question per candidate "
             "(IoU above --min-iou: yes), for crs_mode verify."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Build CRS instruction-tuning samples from a REC dataset and the specialist's candidates."""
    from .build import REPORT_FILE, BuildConfig, build_crs_data

    if candidates is not None and not candidates.is_file():
        raise UserInputError(f"no candidates file {str(candidates)!r}")
    config = BuildConfig(
        dataset_format=dataset_format, annotations=str(annotations), output_dir=str(output_dir),
        image_root=str(image_root) if image_root else None, split=split, detector=detector,
        candidates_file=str(candidates) if candidates else None, positives=positives, negatives=negatives,
        top_k=top_k, nms_iou=nms_iou, profile=profile, min_iou=min_iou, seed=seed, none_option=none_option,
        dataset_name=dataset_name, prompts_dir=prompts_dir, device=device, dtype=dtype, task=task,
    )
    report = build_crs_data(config, progress=progress)
    print_report(report)
    if not report.kept:
        raise UserInputError(f"no sample was kept; see {Path(output_dir) / REPORT_FILE}")


def print_report(report: "BuildReport", console: Console | None = None) -> None:
    """The counts as a table: read, kept (positives / negatives), then each drop reason."""
    from .build import DROP_REASONS, REPORT_FILE, SAMPLES_FILE
    table = Table("outcome", "samples", title=escape(f"CRS samples in {report.output_dir}"))
    table.add_row("read", str(report.read))
    table.add_row("kept: positives", str(report.kept_positives))
    table.add_row("kept: negatives", str(report.kept_negatives))
    for reason in DROP_REASONS:
        if report.dropped[reason]:
            table.add_row(f"dropped: {reason}", str(report.dropped[reason]))
    console = console or Console()
    console.print(table)
    console.print(f"samples: {Path(report.output_dir) / SAMPLES_FILE}; report: {Path(report.output_dir) / REPORT_FILE}",
                  markup=False)


if __name__ == "__main__":  # python -m finetune.build_cli ...
    from tools.cli_runner import run_command

    raise SystemExit(run_command(finetune_data, None, "finetune-data"))
