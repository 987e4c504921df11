"""Orchestration overhead: the time ``Agent.locate`` spends outside the models.

Every strategy runs with plug-in backends that answer at once with constants (a detector,
an MLLM and a target extractor, each a dictionary look-up), so what remains is the
agent's own work: image check, LangGraph state machine, target alignment, routing (NMS,
counting), candidate selection, the result. The plug-ins time themselves and their time
is subtracted; "LangGraph ms" is the part spent outside the nodes and image loading
(``Result.timings``). Queries alternate between a Level-1 and a Level-2 expression, so the
routed strategies take both paths.

    python -m benchmarks.orchestration --out outputs/bench [--queries 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from agent import Agent
from agent.configuration import STRATEGIES
from tools.detections import Detections

from . import query
from .report import format_table, run_standalone, write_json

TARGET_MS = 2.0  # the budget per query
WARM_UP_QUERIES = 5

# expression -> target phrase; the detector finds one instance of the first target, two of the second.
EXPRESSIONS = {query.EXPRESSION: query.target_phrase(), "the dog on the left of the bench": "the dog"}
ONE_INSTANCE = Detections([[52, 290, 598, 402]], [0.8])
TWO_INSTANCES = Detections([[20, 200, 180, 420], [400, 210, 600, 430]], [0.7, 0.6])
CANDIDATES = query.candidates()


class _PlugIn:
    """Base of the instant plug-ins: each call adds its own duration to ``seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def _timed(self, started: float, answer):
        self.seconds += time.perf_counter() - started
        return answer


class InstantDetector(_PlugIn):
    """Answers the router with one or two instances and the full expression with five candidates."""

    def __init__(self) -> None:
        super().__init__()
        targets = list(EXPRESSIONS.values())
        self.answers = {targets[0]: ONE_INSTANCE, targets[1]: TWO_INSTANCES}

    def detect(self, image, text, focus=None) -> Detections:
        started = time.perf_counter()
        return self._timed(started, self.answers.get(text, CANDIDATES))


class InstantMllm(_PlugIn):
    """Grounds to a constant box and answers CRS with uniform option probabilities."""

    def ground(self, image, expression, focus=None) -> Detections:
        started = time.perf_counter()
        return self._timed(started, ONE_INSTANCE)

    def select(self, image, expression, candidates, allow_none=False) -> np.ndarray:
        started = time.perf_counter()
        options = len(candidates) + int(allow_none)
        return self._timed(started, np.full(options, 1.0 / options))


class InstantExtractor(_PlugIn):
    """Names each expression's target from a fixed table."""

    def extract(self, expressions) -> list[str]:
        started = time.perf_counter()
        return self._timed(started, [EXPRESSIONS[expression] for expression in expressions])


def measure_overhead(strategy: str, queries: int) -> dict:
    """Per-query orchestration time of ``strategy`` over ``queries`` queries (plug-in time removed), in ms."""
    plug_ins = {"detector": InstantDetector(), "mllm": InstantMllm(), "extractor": InstantExtractor()}
    agent = Agent(strategy, **plug_ins)
    image, expressions = query.image(), list(EXPRESSIONS)
    times, outside_nodes, paths = [], [], {}
    for index in range(WARM_UP_QUERIES + queries):
        expression = expressions[index % len(expressions)]
        for plug_in in plug_ins.values():
            plug_in.seconds = 0.0
        started = time.perf_counter()
        result = agent.locate(image, expression)
        elapsed = time.perf_counter() - started - sum(plug_in.seconds for plug_in in plug_ins.values())
        if index >= WARM_UP_QUERIES:
            times.append(elapsed * 1000)
            # What LangGraph itself takes: the total less image loading and the nodes' own time.
            node_seconds = sum(seconds for step, seconds in result.timings.items()
                               if step not in ("load_image", "total"))
            outside_nodes.append((result.timings["total"] - result.timings["load_image"] - node_seconds) * 1000)
            paths[result.path] = paths.get(result.path, 0) + 1
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
            "max_ms": max(times), "graph_ms": statistics.median(outside_nodes), "queries": queries, "paths": paths}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """This benchmark's options, on a parser or on one group of ``run.py``'s parser."""
    parser.add_argument("--queries", type=int, default=200, help="timed queries per strategy (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Measure every strategy, print the table and write ``orchestration.json``; returns the JSON payload."""
    results = {strategy: measure_overhead(strategy, args.queries) for strategy in STRATEGIES}
    rows = [[strategy, f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['max_ms']:.3f}", f"{r['graph_ms']:.3f}",
             ", ".join(f"{path} {count}" for path, count in r["paths"].items()),
             "yes" if r["median_ms"] <= TARGET_MS else "NO"] for strategy, r in results.items()]
    headers = ["strategy", "median ms", "p90 ms", "max ms", "LangGraph ms", "paths taken", f"<= {TARGET_MS} ms"]
    print(format_table(headers, rows,
                       title=f"Orchestration overhead per query (instant plug-ins, {args.queries} queries)"))
    payload = {"target_ms": TARGET_MS, "strategies": results}
    print(f"\nwrote {write_json(args.out, 'orchestration', payload)}")
    return payload


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "orchestration", add_arguments, run, argv)


if __name__ == "__main__":
    main()
