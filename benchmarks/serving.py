"""Serving overhead: what ``agent-cli serve`` adds to a query, over real HTTP on loopback.

The agent runs ``sfa+crs`` with the instant plug-ins of ``orchestration.py``, so the models
cost nothing and what is measured is the server's own work: HTTP, the multipart upload of
a 640x480 PNG, decoding it, the device queue and the agent's orchestration. Sequential
requests give the latency per request (with the server's default batching, a lone request
waits ``--batch-wait-ms`` for company); ``--clients`` concurrent ones the throughput of one
device queue. ``batching.py`` compares batching off and on.

    python -m benchmarks.serving --out outputs/bench [--requests 100] [--clients 8]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from agent import Agent
from agent.serve import BackgroundServer, ServerOptions, create_app

from . import query
from .orchestration import InstantDetector, InstantExtractor, InstantMllm
from .report import format_table, run_standalone, write_json


def _png() -> bytes:
    encoded = io.BytesIO()
    query.image().save(encoded, "PNG")
    return encoded.getvalue()


def measure(requests: int, clients: int, batch_size: int | None = None, batch_wait_ms: float | None = None) -> dict:
    """Latency from one client and throughput from ``clients``; the server's defaults unless given."""
    settings = {} if batch_size is None else {"batch_size": batch_size}
    agent = Agent("sfa+crs", detector=InstantDetector(), mllm=InstantMllm(), extractor=InstantExtractor(), **settings)
    options = ServerOptions() if batch_wait_ms is None else ServerOptions(batch_wait_ms=batch_wait_ms)
    image = _png()
    with BackgroundServer(create_app(agent, options)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:

        def ask(_: int) -> float:
            started = time.perf_counter()
            response = client.post("/locate", data={"expression": query.EXPRESSION},
                                   files={"image": ("query.png", image, "image/png")})
            response.raise_for_status()
            return (time.perf_counter() - started) * 1000

        for index in range(5):  # warm-up
            ask(index)
        latencies = [ask(index) for index in range(requests)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(ask, range(requests)))
        throughput = requests / (time.perf_counter() - started)
    return {"median_ms": statistics.median(latencies), "p90_ms": float(np.percentile(latencies, 90)),
            "requests": requests, "clients": clients, "requests_per_s": throughput,
            "image_bytes": len(image)}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """This benchmark's options, on a parser or on one group of ``run.py``'s parser."""
    parser.add_argument("--requests", type=int, default=100, help="requests per measurement (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Measure, print the table and write ``serving.json``; returns the JSON payload."""
    result = measure(args.requests, args.clients)
    rows = [["one client", f"{result['median_ms']:.2f}", f"{result['p90_ms']:.2f}", "-"],
            [f"{args.clients} clients", "-", "-", f"{result['requests_per_s']:.0f}"]]
    title = (f"Serving overhead, sfa+crs with instant plug-ins, {result['image_bytes']:,}-byte PNG upload, "
             f"{args.requests} requests")
    print(format_table(["clients", "median ms", "p90 ms", "requests/s"], rows, title=title))
    print(f"\nwrote {write_json(args.out, 'serving', result)}")
    return result


def main(argv: list[str] | None = None) -> None:
    run_standalone(__doc__, "serving", add_arguments, run, argv)


if __name__ == "__main__":
    main()
