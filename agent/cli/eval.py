"""``agent-cli eval``: run the agent over a benchmark, then score it and write the report.

Registered on the ``agent-cli`` app with ``app.command("eval")(evaluate)``. One process::

    agent-cli eval --format finecops-ref --annotations finecops_test.json --image-root images/ \\
        --output runs/sfa --strategy sfa --cache-dir runs/cache

An interrupted run (Ctrl-C, a crash, ``kill -9``) resumes with the same command: the
samples already in ``predictions.jsonl`` are skipped. Ctrl-C stops after the batch in
flight (``--batch-size`` samples; exit code 130; a second Ctrl-C stops at once). A sample that cannot be answered
(unreadable image, empty expression) is recorded with an ``error`` field and scored as
an empty answer. A second strategy with the same ``--cache-dir`` reuses the detector's
answers and the extracted targets, and ``--compare`` (repeatable) charts runs side by side::

    agent-cli eval ... --output runs/crs --strategy crs --cache-dir runs/cache --compare runs/sfa

Shards, e.g. on two machines: ``--shard 0/2`` and ``--shard 1/2`` with the same
``--output``; each writes ``predictions.shard-i-of-n.jsonl`` and **the process that
completes the last shard merges** them into ``predictions.jsonl`` (dataset order) and
writes the report. One process per GPU, sharded by ``RANK``/``WORLD_SIZE``, each on
``cuda:{LOCAL_RANK}`` when ``--device`` is auto::

    accelerate launch --multi_gpu --num_processes 4 -m agent.cli.eval --format finecops-ref ... --output runs/sfa

(``accelerate launch --multi_gpu --num_processes 4 --no_python agent-cli eval ...`` and
``torchrun --nproc-per-node 4 -m agent.cli.eval ...`` work the same way.)

Output folder: ``run.json`` (settings; resuming with others is an error unless
``--force``), ``predictions.jsonl`` (+ shard files), ``metrics.json``, ``metrics.csv``,
``report.png``; with ``--profile reference`` and a model extractor ``extraction-replies.json``
(each extraction batch's raw reply, so a resumed run asks none again). ``--cache-dir`` holds
``detections/`` (one ``.npz`` per detector query) and ``extraction-<model>.json``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from agent.cli.settings import with_settings
from agent.configuration import Configuration
from tools.evaluation.formats import FORMAT_HELP

stdout = Console()
# A run stopped by Ctrl-C exits as a process killed by SIGINT would.
INTERRUPTED_EXIT_CODE = 130


@with_settings()
def evaluate(
    dataset_format: str = typer.Option(..., "--format", help=FORMAT_HELP + " (see the README)."),
    annotations: Path = typer.Option(..., "--annotations", help="Annotation file of the benchmark."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Folder the annotations' file names are in."),
    split: Optional[str] = typer.Option(None, "--split", help="gRefCOCO split (grefcoco only), e.g. val."),
    output: Path = typer.Option(..., "--output", help="Run folder: predictions, settings, metrics and report."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N samples only."),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="i/n: every n-th sample from the i-th; default: RANK/WORLD_SIZE of a launcher, else all."
    ),
    compare: list[Path] = typer.Option(
        [], "--compare", help="Another run folder to chart next to this one (repeat the option for several)."
    ),
    force: bool = typer.Option(False, "--force", help="Continue a run folder even though its settings differ."),
    retry_errors: bool = typer.Option(
        False, "--retry-errors", help="Answer again the samples recorded with an error (e.g. an image since restored)."
    ),
    *,
    settings: Configuration,
    config_file: Optional[str] = None,
) -> None:
    """Run the agent over a benchmark (resumable), score it and write the report into OUTPUT."""
    from agent.evaluation.run import PREDICTIONS_FILE, REPLIES_FILE, RUN_FILE, RUN_LOCK, DatasetSpec
    from agent.evaluation.run import completed_ids, drop_errors, lock_file, record_run, run_settings
    from agent.evaluation.shards import Shard, local_device, merge_shards
    from agent.evaluation.report import METRICS_CSV, METRICS_JSON, REPORT_PNG
    from agent.evaluation.report import read_compared
    from agent.evaluation.calibration import calibrated_on
    from tools.devices import resolve_device
    from tools.files import check_output_folder, check_outputs, exclusive_lock, foreign_runs, same_file

    # Everything the user typed is checked before any model loads.
    check_output_folder(output)
    written = [PREDICTIONS_FILE, RUN_FILE, REPLIES_FILE, METRICS_JSON, METRICS_CSV, REPORT_PNG]
    check_outputs(output, written, {"--annotations": annotations, "--config": config_file},
                  foreign=foreign_runs(RUN_FILE))
    dev = calibrated_on(config_file)
    if dev is not None and same_file(dev, annotations):
        typer.echo(f"warning: the thresholds of {config_file} were calibrated on {annotations} itself; its numbers "
                   "here are optimistic (evaluate on another split)", err=True)
    part = Shard.parse(shard) if shard is not None else Shard.from_environment()
    settings = dataclasses.replace(settings, device=local_device(settings.device))
    dataset = DatasetSpec(dataset_format, annotations, image_root, split, limit)
    samples = dataset.read()
    mine = part.select(samples) if part else samples
    compared = read_compared(compare, dataset_format)
    resolve_device(settings.device)  # the one check that needs torch: last
    output.mkdir(parents=True, exist_ok=True)
    path = output / (part.file_name if part else PREDICTIONS_FILE)
    # One process per predictions file: two runs on one --output would each do all the work. The
    # shards of a run share the folder; an unsharded run has it to itself (and waits for none).
    with exclusive_lock(output / RUN_LOCK, f"{output} (another run)", shared=part is not None), \
            exclusive_lock(lock_file(path), str(path)):
        overridden = record_run(output, run_settings(dataset, settings), force)
        if overridden:
            typer.echo(f"warning: continuing {output} with other settings (--force): {overridden}", err=True)

        if retry_errors and (retried := drop_errors(path)):
            typer.echo(f"retrying {retried} samples recorded with an error in {path}", err=True)
        done = completed_ids(path)
        todo = [sample for sample in mine if str(sample.id) not in done]
        if todo:
            _answer(settings, samples, mine, todo, part, output, path)

        if part and merge_shards(output, samples, part.count) is None:
            stdout.print(f"shard {part}: {len(mine)} samples done, in {path}; the process that completes the "
                         "last shard merges them and writes the report", markup=False, soft_wrap=True)
            return
        run = {**run_settings(dataset, settings), "device": settings.device, "cache_dir": settings.cache_dir,
               "limit": dataset.limit, "shards": part.count if part else None, "samples": len(samples)}
        _score_and_report(dataset, samples, output, run, compared)


def _answer(settings: Configuration, samples: list, mine: list, todo: list, part, output: Path, path: Path) -> None:
    """Answer the ``todo`` samples of this process's ``mine`` into ``path``; a Ctrl-C stops after
    the batch in flight (exit ``INTERRUPTED_EXIT_CODE``, the run resumable)."""
    from tqdm import tqdm

    from agent.agent import Agent
    from agent.evaluation.run import GracefulInterrupt, reference_targets, run_samples
    from tools.evaluation import PredictionWriter

    agent = Agent(config=settings)
    agent.load_models()
    # The reference profile's extraction runs over the dataset's own batches first.
    targets = reference_targets(agent, samples, todo, output)
    label = f"{settings.strategy}" + (f" shard {part}" if part else "")
    with GracefulInterrupt() as stop, PredictionWriter(path) as writer, tqdm(
        total=len(mine), initial=len(mine) - len(todo), unit="sample", desc=label, dynamic_ncols=True,
        position=part.index if part else None,  # one line per process under a launcher
    ) as progress:
        written = run_samples(agent, todo, writer, progress, stop, targets)
    reused = getattr(agent.backends.detector, "hits", None) if settings.uses_detector else None
    if reused is not None:  # a CachedDetector (--cache-dir)
        stdout.print(f"detector cache: {reused} answers reused, {agent.backends.detector.misses} computed",
                     markup=False)
    if written < len(todo):
        finished = len(mine) - len(todo) + written
        typer.echo(f"interrupted: {finished} of {len(mine)} samples done, in {path}; "
                   "run the same command to resume", err=True)
        raise typer.Exit(INTERRUPTED_EXIT_CODE)


def _score_and_report(dataset, samples, output: Path, run: dict, compared: list) -> None:
    """Score ``output/predictions.jsonl``, write metrics and chart, print tables and where files went."""
    from agent.evaluation.run import PREDICTIONS_FILE, RUN_FILE, score_run, scored_samples
    from agent.evaluation.report import REPORT_PNG, build_metrics, finecops_confidences, print_report, reference_evaluation
    from agent.evaluation.report import reference_evaluation_line, run_label, write_metrics, write_plot
    from tools.evaluation.common import EXTRACTION_FAILED, READ_AS_STORED
    from tools.evaluation.formats import get_format
    from tools.evaluation import read_predictions

    wanted = {str(sample.id) for sample in samples}
    # A longer earlier run may have answered more samples than this one covers.
    predictions = [p for p in read_predictions(output / PREDICTIONS_FILE) if str(p.id) in wanted]
    result, left_out = score_run(dataset, samples, predictions)
    metrics = build_metrics(dataset.format, result, predictions, run)
    evaluation = reference_evaluation(dataset.format, scored_samples(dataset, samples)[0], predictions, run["agent"])
    if evaluation is not None:
        metrics["reference_evaluator"] = evaluation
    json_path, csv_path = write_metrics(output, metrics)
    confidences = None
    if get_format(dataset.format).metric.paired_negatives and metrics["counts"]["negatives"]:
        confidences = finecops_confidences(samples, predictions)
    runs = [(run_label(metrics, output), metrics), *compared]
    png_path = write_plot(output / REPORT_PNG, runs, confidences)

    print_report(stdout, metrics, compared)
    notes = []
    if metrics["errors"]:
        notes.append(f"{metrics['errors']} samples could not be answered and count as misses (see their 'error' "
                     "field; --retry-errors answers them again)")
    if left_out:
        notes.append(f"{left_out} negatives left out of the scores: their positive lies beyond --limit")
    if metrics[EXTRACTION_FAILED]:
        notes.append(f"{metrics[EXTRACTION_FAILED]} samples: the reference target extraction dropped their batch; "
                     "they count as misses here (agent-cli score --exclude-extraction-failed leaves them out, as "
                     "the scripts do)")
    if metrics[READ_AS_STORED]:
        notes.append(f"{metrics[READ_AS_STORED]} images carry an EXIF rotation their annotation does not: read as "
                     "stored")
    if evaluation is not None:
        notes.append(reference_evaluation_line(evaluation))
    for note in notes:
        stdout.print(note, markup=False, soft_wrap=True)
    for name, file in (("settings", output / RUN_FILE), ("predictions", output / PREDICTIONS_FILE),
                       ("metrics", json_path), ("metrics csv", csv_path), ("chart", png_path)):
        stdout.print(f"{name}: {file}", markup=False, soft_wrap=True)


if __name__ == "__main__":  # accelerate launch -m agent.cli.eval ... / python -m agent.cli.eval ...
    from tools.cli_runner import run_command

    sys.exit(run_command(evaluate, None, "agent-cli eval"))
