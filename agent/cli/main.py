"""``agent-cli``: the terminal front end (error contract: ``tools/cli_runner.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.cli.settings import with_settings
from agent.configuration import Configuration
from agent.cli.eval import evaluate
from agent.cli.calibrate import calibrate
from agent.cli.score import score
from agent.cli.serve import serve
from finetune.cli import finetune
from finetune.build_cli import finetune_data
from tools.defaults import DEFAULT_DETECTOR
from tools.cli_runner import run_app
from tools.errors import UserInputError

app = typer.Typer(
    name="agent-cli",
    help="REX Agent: locate what a referring expression points at in an image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """REX Agent command line."""


@app.command()
def detect(
    image: Path = typer.Argument(..., help="Image file."),
    text: str = typer.Argument(..., help="What to detect, e.g. 'the long snowboard right of the skis'."),
    focus: Optional[str] = typer.Option(
        None, "--focus", help="Target phrase inside TEXT; boxes are scored on its tokens only (target-focus matching)."
    ),
    detector: str = typer.Option(
        DEFAULT_DETECTOR,
        "--detector",
        envvar="REX_DETECTOR",
        help="Grounding DINO, MM-Grounding-DINO, OWLv2 or Florence-2 Hub id or local folder (its config says which).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, fp32, fp16 or bf16."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="How many boxes to report."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the image with the boxes drawn (PNG/JPEG)."),
) -> None:
    """Run the specialist detector alone and print its best boxes."""
    from tools.images import load_image
    from tools.text import check_text, clean_expression

    # Inputs are checked before anything heavy is imported, so mistakes are answered at once.
    text = clean_expression(text)  # control characters and lone surrogates, as locate cleans them
    picture = load_image(image)
    check_save_path(save, image)
    if focus is not None and not focus.strip():
        raise UserInputError("--focus is empty; give the phrase to score on, or leave the option out")
    span = find_phrase(text, focus) if focus else None
    check_text(text, span)
    from tools.detectors.auto import load_detector
    from tools.drawing import draw_detections

    model = load_detector(detector, device=device, dtype=dtype)
    detections = model.detect(picture, text, focus=span).top_k(top_k)
    if save is not None:
        draw_detections(picture, detections).save(save)
    if as_json:
        stdout.print_json(json.dumps({"image": str(image), "text": text, "focus": span, **detections.to_dict()}))
        return
    table = Table("rank", "x1", "y1", "x2", "y2", "score", title=escape(f"{text!r} in {image}"))
    for rank, (box, confidence) in enumerate(detections, start=1):
        table.add_row(str(rank), *(f"{v:.1f}" for v in box), f"{confidence:.3f}")
    stdout.print(table)
    if save is not None:
        stdout.print(f"saved {save}", markup=False, soft_wrap=True)


@app.command()
@with_settings()
def locate(
    image: Path = typer.Argument(..., help="Image file."),
    expression: str = typer.Argument(..., help="Referring expression, e.g. 'the long snowboard right of the skis'."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the image with the boxes drawn (PNG/JPEG)."),
    *,
    settings: Configuration,
) -> None:
    """Find what EXPRESSION refers to in IMAGE."""
    from tools.images import load_image
    from tools.text import clean_expression

    # Inputs and settings are checked before anything heavy is imported, so mistakes are answered at once.
    picture = load_image(image, max_pixels=settings.max_image_pixels)
    check_save_path(save, image)
    expression = clean_expression(expression)
    from agent.agent import Agent
    from tools.devices import resolve_device
    from tools.drawing import draw_detections

    resolve_device(settings.device)
    agent = Agent(config=settings)
    agent.check_checkpoints()  # a missing --detector is reported before the MLLM loads
    result = agent.locate(picture, expression)
    if save is not None:
        draw_detections(picture, result.detections).save(save)
    if as_json:
        stdout.print_json(json.dumps(result.to_dict()))
        return
    summary = f"strategy {result.strategy}, path {result.path}"
    if result.level is not None:
        summary += f", level {result.level}"
    if result.target is not None:
        summary += f", target {result.target!r}"
    if result.found:
        table = Table("rank", "x1", "y1", "x2", "y2", "score", title=escape(f"{expression!r} in {image}"))
        for rank, (box, confidence) in enumerate(result.detections, start=1):
            table.add_row(str(rank), *(f"{v:.1f}" for v in box), f"{confidence:.3f}")
        stdout.print(table)
    else:
        stdout.print("no target found", markup=False)
    stdout.print(summary, soft_wrap=True, markup=False)
    for note in result.fallbacks:
        stdout.print(f"fallback: {note}", markup=False)
    if save is not None:
        stdout.print(f"saved {save}", markup=False, soft_wrap=True)


def check_save_path(save: Path | None, image: Path | None = None) -> None:
    """Refuse a ``--save`` path that could not be written, before any model runs: not an image
    file name, a folder, the input ``image`` itself, or in a folder that cannot take a new file."""
    if save is None:
        return
    from PIL import Image

    from agent.cli.calibrate import is_calibrate_plot
    from tools.files import RUN_MARKERS, check_writable, same_file

    import io

    image_format = Image.registered_extensions().get(save.suffix.lower())
    try:  # a format PIL lists may still take no RGB image (.xbm, .palm, .h5): tried on one pixel
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (KeyError, ValueError, OSError, TypeError):
        raise UserInputError(f"--save {str(save)!r}: not an image file name REX can write; use .png or .jpg") from None
    check_writable(save, "--save")
    if not save.parent.is_dir():
        raise UserInputError(f"--save {str(save)!r}: no such folder {str(save.parent)!r}")
    if image is not None and save.exists() and same_file(save, image):
        raise UserInputError(f"--save {str(save)!r} is the input image: write the drawing elsewhere")
    run = next((what for marker, what in RUN_MARKERS.items() if (save.parent / marker).exists()), None)
    if save.exists() and (run or is_calibrate_plot(save)):  # another command's file: never replaced
        raise UserInputError(f"--save {str(save)!r} would replace a file of {run or 'agent-cli calibrate'}: write the "
                             "drawing elsewhere")


@app.command()
@with_settings(only=("profile", "strategy", "focus"))
def graph(*, settings: Configuration) -> None:
    """Print the agent's LangGraph state machine as a Mermaid diagram."""
    from agent.graph import mermaid

    typer.echo(mermaid(settings))


app.command("score")(score)
app.command("calibrate")(calibrate)
app.command("eval")(evaluate)
app.command("finetune")(finetune)
app.command("finetune-data")(finetune_data)
app.command("serve")(serve)


def find_phrase(text: str, phrase: str) -> tuple[int, int]:
    """Character span of ``phrase`` in ``text``, aligned as extracted targets are."""
    from tools.extraction import align_target

    span = align_target(text, phrase) if phrase.strip() else None
    if span is None:
        raise UserInputError(f"focus phrase {phrase!r} does not occur in {text!r}")
    return span


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    return run_app(app, argv, "agent-cli")


if __name__ == "__main__":
    sys.exit(main())
