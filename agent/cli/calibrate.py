"""``agent-cli calibrate``: fit the thresholds of one eval run on its dev split (``agent/evaluation/calibration.py``).

Registered on the ``agent-cli`` app with ``app.command("calibrate")(calibrate)``::

    agent-cli eval --format grefcoco --split val --annotations grefs\\(unc\\).json --image-root coco/ \\
        --output runs/val --strategy sfa+crs --allow-none --multi auto --crs-mode verify
    agent-cli calibrate --format grefcoco --split val --annotations grefs\\(unc\\).json \\
        --predictions runs/val/predictions.jsonl --output calibrated.toml
    agent-cli eval --format grefcoco --split testA ... --config calibrated.toml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tools.errors import UserInputError
from tools.evaluation.formats import FORMAT_HELP, get_format

stdout = Console()


def calibrate(
    dataset_format: str = typer.Option(..., "--format", help=FORMAT_HELP + " (see the README)."),
    annotations: Path = typer.Option(..., "--annotations", help="The dev split's annotation file."),
    predictions: Path = typer.Option(
        ..., "--predictions", help="predictions.jsonl of an agent-cli eval run on that split (its run.json beside it)."),
    split: Optional[str] = typer.Option(None, "--split", help="gRefCOCO split (grefcoco only), e.g. val."),
    output: Path = typer.Option(Path("calibrated.toml"), "--output", help="The settings file to write (TOML)."),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="The objective against each threshold (PNG); default: OUTPUT with .png."),
    config: Optional[Path] = typer.Option(
        None, "--config", help="The run's settings, when its run.json is not beside the predictions."),
    score_threshold: Optional[float] = typer.Option(
        None, "--score-threshold", help="GREC: the evaluator's box-score floor, as agent-cli score takes it."),
    folds: int = typer.Option(
        5, "--folds", min=0,
        help="Cross-validation folds estimating the held-out gain (fit on the others, score one; 0 or 1: none)."),
    force: bool = typer.Option(
        False, "--force", help="Replace an existing --output or --plot that this command did not write."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Fit the finishing thresholds that maximise the format's metric on PREDICTIONS' split, without a model run."""
    from agent.evaluation.calibration import calibrate as fit
    from agent.evaluation.calibration import recorded, run_configuration, settings_file_text
    from agent.finishing import FinishPolicy
    from tools.evaluation import read_predictions
    from tools.evaluation.formats import read_dataset
    from tools.files import write_atomically

    if config is not None and not config.is_file():
        raise UserInputError(f"config file {str(config)!r}: no such file")
    plot = plot or output.with_suffix(".png")
    _check_outputs(output, plot, [annotations, predictions, predictions.parent / "run.json", *(
        [config] if config else [])], force)
    metric = get_format(dataset_format).metric
    score_options = {}
    if score_threshold is not None and not 0 <= score_threshold <= 1:  # nan fails this too
        raise UserInputError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    if score_threshold is not None:
        if "score_threshold" not in metric.options:
            raise UserInputError("--score-threshold applies to the GREC formats only")
        score_options["score_threshold"] = score_threshold
    config_used = run_configuration(predictions, config)
    samples = list(read_dataset(dataset_format, annotations, split=split))
    records = recorded(read_predictions(predictions))
    result = fit(records, samples, metric, FinishPolicy.of(config_used), score_options, folds=folds)
    if not result.fitted:
        raise UserInputError("no threshold changes these answers (e.g. plain REC without --allow-none or --multi); "
                             "nothing to calibrate")
    source = {"format": dataset_format, "annotations": str(annotations.resolve()), "split": split or "",
              "predictions": str(predictions.resolve())}
    write_atomically(output, settings_file_text(config_used, result, source))
    _plot(result, plot, dataset_format)
    before = {name: getattr(FinishPolicy.of(config_used), name) for name in result.fitted}
    validation = result.cross_validation
    held_out = None if validation is None else {
        "folds": validation.folds, "gain": validation.gain, "gains": list(validation.gains),
        "before": validation.held_out_before, "after": validation.held_out_after}
    if as_json:
        stdout.print_json(json.dumps({"before": result.before, "after": result.after, "thresholds": result.fitted,
                                      "previous": before, "cross_validation": held_out, "settings": str(output),
                                      "plot": str(plot)}))
        return
    table = Table("threshold", "before", "after", title=f"calibrated on {annotations} ({len(samples)} samples)")
    for name, value in result.fitted.items():
        table.add_row(name, _shown(before[name]), _shown(value))
    table.add_row("objective", f"{result.before:.2f}", f"{result.after:.2f}")
    stdout.print(table)
    stdout.print(f"wrote {output} (load it with --config) and {plot}; the numbers above are on the dev split itself",
                 markup=False, soft_wrap=True)
    if validation is not None:
        stdout.print(f"{validation.folds}-fold cross-validation: fitted on the other folds, a held-out fold gains "
                     f"{validation.gain:+.2f} on average ({validation.held_out_before:.2f} -> "
                     f"{validation.held_out_after:.2f}); the dev split's own gain is {result.after - result.before:+.2f}",
                     markup=False, soft_wrap=True)


# The plot's PNG text chunk that says this command wrote it (so a rerun may replace it).
PLOT_SOFTWARE = "agent-cli calibrate"


def _check_outputs(output: Path, plot: Path, inputs: list[Path], force: bool) -> None:
    """Before any work: the settings file ends in .toml and the plot in .png, neither is one of the
    inputs, neither replaces a file another command wrote (unless ``force``), and both folders take
    a new file."""
    from agent.evaluation.calibration import SETTINGS_HEADER
    from tools.files import same_file
    from tools.files import check_writable

    if output.suffix != ".toml":
        raise UserInputError(f"--output {output}: the settings file must end in .toml")
    if plot.suffix != ".png":
        raise UserInputError(f"--plot {plot}: the plot must end in .png")
    for target, flag in ((output, "--output"), (plot, "--plot")):
        check_writable(target, flag)
        if any(same_file(target, source) for source in inputs if source.exists()):
            raise UserInputError(f"{flag} {target} is one of the inputs; write elsewhere")
        if target.exists() and not target.is_dir() and not force and not _written_here(target, SETTINGS_HEADER):
            raise UserInputError(f"{flag} {target} exists and was not written by agent-cli calibrate; choose another "
                                 "name, or --force to replace it")


def is_calibrate_plot(path: Path) -> bool:
    """Whether ``path`` is a plot this command wrote (its PNG says so in ``Software``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.info.get("Software") == PLOT_SOFTWARE
    except (OSError, UnidentifiedImageError):
        return False


def _written_here(path: Path, header: str) -> bool:
    if path.suffix == ".png":
        return is_calibrate_plot(path)
    try:
        with path.open(encoding="utf-8") as file:
            return file.readline().rstrip("\n") == header
    except (OSError, UnicodeDecodeError):
        return False


def _shown(value: float | None) -> str:
    return "unset" if value is None else f"{value:.4g}"


def _plot(result, path: Path, dataset_format: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(result.curves), figsize=(4 * len(result.curves), 3.2), squeeze=False)
    for axis, (name, (values, scores)) in zip(axes[0], result.curves.items()):
        axis.step(values, scores, where="mid", marker=".")
        if result.fitted[name] is not None:
            axis.axvline(result.fitted[name], color="tab:red", linestyle="--")
        axis.set_xlabel(name)
        axis.set_ylabel(f"{dataset_format} objective")
    figure.tight_layout()
    figure.savefig(path, dpi=100, metadata={"Software": PLOT_SOFTWARE})
    plt.close(figure)
