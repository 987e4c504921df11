"""How fast ``agent-cli`` answers when no model has to run: help, the graph, bad input.

Each command runs as a fresh process (as a user types it), ``--repeats`` times; the table
gives the median and the slowest wall time. The target is about a second on these machines:
these answers must not wait for torch, transformers or langgraph to import.

    python -m benchmarks.cli_latency --out outputs/bench
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import format_table, run_standalone, write_json

IMAGE = "examples/images/snow.png"


def commands(scratch: Path) -> dict[str, list[str]]:
    """The cases, each an ``agent-cli`` argument list; bad-input cases exit 2 with one line."""
    missing = str(scratch / "missing.jpg")
    return {
        "--help": ["--help"],
        "locate --help": ["locate", "--help"],
        "eval --help": ["eval", "--help"],
        "graph": ["graph", "--strategy", "sfa+crs"],
        "locate: missing image": ["locate", missing, "the cat"],
        "locate: empty expression": ["locate", IMAGE, " "],
        "locate: unknown strategy": ["locate", IMAGE, "the cat", "--strategy", "bogus"],
        "detect: missing image": ["detect", missing, "the cat"],
        "eval: missing annotations": ["eval", "--format", "finecops-ref", "--annotations", str(scratch / "a.json"),
                                      "--output", str(scratch / "run")],
        "score: unknown format": ["score", "--format", "coco", "--annotations", "a", "--predictions", "p"],
        "finetune: missing samples": ["finetune", "--model", "m", "--train", str(scratch / "t.jsonl"),
                                      "--output", str(scratch / "ft")],
        "serve: unknown strategy": ["serve", "--strategies", "bogus"],
    }


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--cli-repeats", type=int, default=3, help="runs per command (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Time every command, print the table and write ``cli_latency.json``."""
    executable = shutil.which("agent-cli", path=str(Path(sys.executable).parent)) or "agent-cli"
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name, arguments in commands(Path(scratch)).items():
            seconds, code = [], None
            for _ in range(args.cli_repeats):
                started = time.perf_counter()
                done = subprocess.run([executable, *arguments], capture_output=True, text=True)
                seconds.append(time.perf_counter() - started)
                code = done.returncode
            results[name] = {"median_s": statistics.median(seconds), "max_s": max(seconds), "exit_code": code}
    rows = [[name, f"{r['median_s']:.2f}", f"{r['max_s']:.2f}", str(r["exit_code"])] for name, r in results.items()]
    print(format_table(["command", "median s", "max s", "exit"], rows, title="agent-cli without a model"))
    print(f"\nwrote {write_json(args.out, 'cli_latency', results)}")
    return results


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "cli_latency", add_arguments, run, argv)


if __name__ == "__main__":
    main()
