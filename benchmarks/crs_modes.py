"""The cost of the generalized-REC CRS modes: queries per second of letter selection, of
selection over k option orders (``crs_permutations``) and of per-candidate verification
(``crs_mode="verify"``), on the 218 M-parameter random Qwen2-VL of ``walltime.py``.

``Agent.locate_batch`` with an instant detector (five candidates per query) at batch 8, so the
figures are the MLLM's forward passes: one row per query for ``choice``; for k orders and for
``verify``, one row per query for the image and question prefix, then k (or one per candidate)
short rows continuing from its KV cache. Random weights: only the cost means something.

    python -m benchmarks.crs_modes --out outputs/bench [--crs-queries 8]
"""

from __future__ import annotations

import argparse

from agent import Agent
from tools.devices import resolve_device

from .batching import queries_per_second
from .orchestration import InstantDetector
from .report import format_table, run_standalone, write_json
from .walltime import MID_SIZE, build_random_qwen_vl
from .walltime import add_arguments as walltime_arguments

MODES = {"choice": {}, "choice, 3 orders": {"crs_permutations": 3}, "verify": {"crs_mode": "verify"}}
BATCH = 8


def measure(queries: int, device: str, dtype: str, spec=MID_SIZE) -> dict[str, float]:
    mllm = build_random_qwen_vl(spec, 1, device, dtype)
    mllm.batch_size = BATCH
    results = {}
    for name, settings in MODES.items():
        # Verification reads the expected count: the model-free reading, which costs next to nothing.
        agent = Agent("crs", detector=InstantDetector(), mllm=mllm, extractor="heuristic", focus=False,
                      batch_size=BATCH, **settings)
        results[name] = queries_per_second(agent, queries)
        print(f"  {name}: {results[name]:.2f} queries/s", flush=True)
    return results


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--crs-queries", type=int, default=8, help="queries per CRS mode (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Measure, print the table and write ``crs_modes.json``; returns the JSON payload."""
    device, dtype = str(resolve_device(getattr(args, "device", "auto"))), getattr(args, "dtype", "auto")
    results = measure(args.crs_queries, device, dtype)
    payload = {"queries_per_s": results, "device": device, "batch_size": BATCH, "candidates": 5}
    base = results["choice"]
    rows = [[name, f"{qps:.2f}", f"{base / qps:.1f}x"] for name, qps in results.items()]
    print(format_table(["CRS mode (218 M Qwen2-VL, 5 candidates)", "queries/s", "cost"], rows,
                       title=f"CRS modes, batch {BATCH}, {device}"))
    print(f"\nwrote {write_json(args.out, 'crs_modes', payload)}")
    return payload


def main(argv: list[str] | None = None) -> None:
    def arguments(parser: argparse.ArgumentParser) -> None:
        walltime_arguments(parser)
        add_arguments(parser)

    run_standalone(__doc__, "crs_modes", arguments, run, argv)


if __name__ == "__main__":
    main()
