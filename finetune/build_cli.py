"""``agent-cli finetune-data`` (register ``finetune_data`` on the app), or on its own: ``python -m finetune.build_cli``.

Its options are ``BuildConfig``'s fields, with their help (``tools.settings``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tools.errors import UserInputError
from tools.settings import command_for

from .build import BuildConfig

if TYPE_CHECKING:
    from .build import BuildReport


def _finetune_data(config: "BuildConfig", progress: bool = True) -> None:
    from .build import REPORT_FILE, build_crs_data

    report = build_crs_data(config, progress=progress)
    print_report(report)
    if not report.kept:
        raise UserInputError(f"no sample was kept; see {Path(config.output_dir) / REPORT_FILE}")


finetune_data = command_for(
    BuildConfig, _finetune_data,
    doc="Build CRS instruction-tuning samples from a REC dataset and the specialist's candidates.",
    extra=[inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                             default=typer.Option(True, "--progress/--no-progress", help="Show a progress bar."))],
)


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
