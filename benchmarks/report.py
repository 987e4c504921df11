"""Plain-text tables, JSON files and a description of the machine, shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import torch


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A left-aligned first column and right-aligned others, for a terminal or a log file."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "-" * len(line(cells[0]))
    lines = ([title] if title else []) + [line(cells[0]), rule] + [line(row) for row in cells[1:]]
    return "\n".join(lines)


def flops_text(flops: float) -> str:
    """``1.23 TFLOPs`` / ``456.7 GFLOPs``: the unit that keeps the number readable."""
    if flops >= 1e12:
        return f"{flops / 1e12:.2f} TFLOPs"
    return f"{flops / 1e9:.1f} GFLOPs"


def machine() -> dict[str, Any]:
    """CPU model, core count, load, GPU (if any) and library versions, recorded with every result."""
    import transformers

    info = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if hasattr(os, "getloadavg"):  # other work on a shared machine slows every timing
        info["load_average_1min"] = os.getloadavg()[0]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(out_dir: str | Path, name: str, payload: dict) -> Path:
    """Write ``payload`` (plus the machine description) to ``out_dir/name.json``; returns the path."""
    path = Path(out_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path


def run_standalone(doc: str | None, name: str, add_arguments, run, argv: list[str] | None = None) -> None:
    """Command line of one benchmark module run alone (``python -m benchmarks.NAME``)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench", help=f"folder for {name}.json (default: %(default)s)")
    add_arguments(parser)
    run(parser.parse_args(argv))
