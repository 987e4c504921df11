"""Run the performance benchmarks (all by default) and write their JSON to ``--out``.

    python -m benchmarks.run --out outputs/bench
    python -m benchmarks.run --only flops orchestration --level1-share 0.6
    python -m benchmarks.run --only walltime --device cuda --repeats 10

- ``flops``: FLOPs per query of every strategy at real scale (weightless models);
- ``walltime``: CRS ``select`` against one prefill and against ``ground``, one mid-size model;
- ``orchestration``: ``Agent.locate``'s own time per query with instant plug-in backends;
- ``serving``: what ``agent-cli serve`` adds per request (HTTP, upload, decoding, queue), same plug-ins;
- ``batching``: queries/s at several batch sizes (local 218 M Qwen2-VL, a slow remote server, the server);
- ``crs_modes``: queries/s of CRS letter selection, over 3 option orders, and per-candidate verification;
- ``extraction``: the model-free target extractor's agreement with a reader's targets;
- ``cli_latency``: how fast ``agent-cli`` answers help, ``graph`` and bad input (no model runs);
- ``calibration``: ``agent-cli calibrate``'s exact search on 10,000 samples, and what a quantile grid misses.
"""

from __future__ import annotations

import argparse
import time

from . import batching, calibration, cli_latency, crs_modes, extraction, flops, orchestration, serving, walltime

BENCHMARKS = {"flops": flops, "walltime": walltime, "orchestration": orchestration, "serving": serving,
              "batching": batching, "crs_modes": crs_modes, "extraction": extraction, "cli_latency": cli_latency,
              "calibration": calibration}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench", help="folder for the JSON files (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS),
                        help="benchmarks to run (default: all)")
    for name, module in BENCHMARKS.items():
        module.add_arguments(parser.add_argument_group(name))
    args = parser.parse_args(argv)
    results = {}
    for name in args.only:
        start = time.perf_counter()
        print(f"=== {name} ===")
        results[name] = BENCHMARKS[name].run(args)
        print(f"({name}: {time.perf_counter() - start:.0f} s)\n")
    return results


if __name__ == "__main__":
    main()
