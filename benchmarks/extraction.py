"""Target extraction without a model: the heuristic's agreement with a reader's targets.

On the table of ``targets_table.py`` (69 expressions in RefCOCO, RefCOCOg and FineCops-Ref
styles, the heuristic's rules written against it) and on its 25 held-out cases (written
after the rules, never used to tune them), with every miss listed. What extraction costs
per query with a model is in the ``flops`` benchmark.

    python -m benchmarks.extraction --out outputs/bench
"""

from __future__ import annotations

import argparse

from tools.extraction import HeuristicExtractor

from .report import format_table, run_standalone, write_json
from .targets_table import CASES, HELD_OUT, agreement, misses


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """No options of its own."""


def run(args: argparse.Namespace) -> dict:
    """Measure, print and write ``extraction.json``; returns the JSON payload."""
    extract = HeuristicExtractor().extract
    sets = {"table": CASES, "held out": HELD_OUT}
    results = {name: agreement(extract, cases) for name, cases in sets.items()}
    styles = sorted({case.style for case in CASES})
    rows = [[name, str(len(sets[name])), *(f"{results[name].get(style, 0):.1%}" for style in [*styles, "all"])]
            for name in sets]
    print(format_table(["cases", "n", *styles, "all"], rows, title="Model-free target extraction: agreement"))
    wrong = {name: misses(extract, cases) for name, cases in sets.items()}
    for name, cases in wrong.items():
        for expression, target, answer in cases:
            print(f"  miss ({name}): {expression!r} -> {answer!r}, expected {target!r}")
    payload = {"agreement": results, "misses": {name: [list(case) for case in cases] for name, cases in wrong.items()}}
    print(f"\nwrote {write_json(args.out, 'extraction', payload)}")
    return payload


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "extraction", add_arguments, run, argv)


if __name__ == "__main__":
    main()
