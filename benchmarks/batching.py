"""Batched execution: queries per second at several batch sizes, locally, remotely, served.

- the 218 M-parameter random Qwen2-VL of ``walltime.py`` on this machine's device, through
  ``Agent.locate_batch`` with an instant detector: ``mllm`` (grounding, 20-token answers) and
  ``crs`` (one ``select`` forward), at each ``--batch-sizes`` value;
- a remote MLLM behind a local OpenAI-compatible server (its own process) answering every
  request after a fixed ``--remote-latency-ms``: ``crs`` through ``OpenAICompatibleMLLM`` at
  batch 1 and 8, 32 queries (the 640x480 PNG sent with each);
- ``agent-cli serve``'s app with instant plug-ins and 8 concurrent clients, batching off
  (``batch_size=1``) and on (the defaults: 8, 5 ms).

    python -m benchmarks.batching --out outputs/bench [--batch-sizes 1,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from agent import Agent
from tools.devices import resolve_device

from . import query
from .orchestration import InstantDetector, InstantExtractor
from .report import format_table, run_standalone, write_json
from .serving import measure as measure_serving
from .tokens import qwen_token_count, typical_answer
from .walltime import MID_SIZE, build_random_qwen_vl
from .walltime import add_arguments as walltime_arguments


def queries_per_second(agent: Agent, count: int) -> float:
    images = [query.image()] * count
    pool = query.batch_expressions()
    expressions = [pool[i % len(pool)] for i in range(count)]
    agent.locate_batch(images[:1], expressions[:1])  # warm-up
    started = time.perf_counter()
    agent.locate_batch(images, expressions)
    return count / (time.perf_counter() - started)


def local(sizes: list[int], device: str, dtype: str) -> dict:
    mllm = build_random_qwen_vl(MID_SIZE, qwen_token_count(typical_answer(MID_SIZE.family)), device, dtype)
    results: dict[str, dict[int, float]] = {"mllm": {}, "crs": {}}
    for strategy in results:
        for size in sizes:
            mllm.batch_size = size  # the model's own chunking follows the agent's batches
            agent = Agent(strategy, detector=InstantDetector(), mllm=mllm, extractor=InstantExtractor(),
                          focus=False, batch_size=size)
            results[strategy][size] = queries_per_second(agent, max(size, 4))
            print(f"  local {strategy} batch {size}: {results[strategy][size]:.2f} queries/s", flush=True)
    return results


def _serve_slowly(port: "multiprocessing.Queue", latency: float, answer: bytes) -> None:
    """An OpenAI-compatible chat endpoint in a process of its own (a remote server does not share
    the client's interpreter), answering ``answer`` to every request after ``latency`` seconds."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port.put(server.server_address[1])
    server.serve_forever()


def remote(latency_ms: float, sizes: tuple[int, ...] = (1, 8), count: int = 32,
           image_format: str = "png") -> dict[int, float]:
    from tests.fake_openai_server import completion, token
    from tools.mllm.openai_compat import OpenAICompatibleMLLM

    # "A", with the log-probabilities CRS reads, built as the tests' fake server builds it.
    answer = json.dumps(completion("A", [token("A", -0.1, [("A", -0.1), ("B", -2.3)])]).payload).encode()
    port: multiprocessing.Queue = multiprocessing.Queue()
    server = multiprocessing.Process(target=_serve_slowly, args=(port, latency_ms / 1000, answer), daemon=True)
    server.start()
    try:
        base_url = f"http://127.0.0.1:{port.get(timeout=30)}/v1"
        results = {}
        for size in sizes:
            mllm = OpenAICompatibleMLLM("served", base_url=base_url, api_key="local", concurrency=size,
                                        image_format=image_format)
            agent = Agent("crs", detector=InstantDetector(), mllm=mllm, extractor=InstantExtractor(), focus=False,
                          batch_size=size)
            results[size] = queries_per_second(agent, count)
    finally:
        server.terminate()
        server.join(10)
    return results


def served(clients: int = 8, requests: int = 100) -> dict[str, float]:
    return {"off": measure_serving(requests, clients, batch_size=1)["requests_per_s"],
            "on": measure_serving(requests, clients)["requests_per_s"]}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="local batch sizes (default: %(default)s)")
    parser.add_argument("--remote-latency-ms", type=float, default=150.0,
                        help="the fake server's latency per request (default: %(default)s)")


def run(args: argparse.Namespace) -> dict:
    """Measure, print the table and write ``batching.json``; returns the JSON payload."""
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    # --device and --dtype are the wall-time benchmark's (run.py shares one parser).
    device, dtype = str(resolve_device(getattr(args, "device", "auto"))), getattr(args, "dtype", "auto")
    payload = {"local": local(sizes, device, dtype), "remote": remote(args.remote_latency_ms),
               "remote_jpeg": remote(args.remote_latency_ms, image_format="jpeg"), "served": served(),
               "device": device, "remote_latency_ms": args.remote_latency_ms}
    rows = [[f"local {strategy} (218 M Qwen2-VL, {device})", *(f"{qps:.2f}" for qps in by_size.values())]
            for strategy, by_size in payload["local"].items()]
    print(format_table(["queries/s", *(f"batch {size}" for size in sizes)], rows, title="Batched execution"))
    for name, kind in (("remote", "PNG"), ("remote_jpeg", "JPEG")):
        at = payload[name]
        print(f"remote crs, {args.remote_latency_ms:g} ms per request, images sent as {kind}: {at[1]:.2f} queries/s "
              f"at batch 1, {at[8]:.2f} at batch 8 ({at[8] / at[1]:.1f}x)")
    print(f"server, 8 clients, instant plug-ins: {payload['served']['off']:.0f} requests/s batching off, "
          f"{payload['served']['on']:.0f} on")
    print(f"\nwrote {write_json(args.out, 'batching', payload)}")
    return payload


def main(argv: list[str] | None = None) -> None:
    def arguments(parser: argparse.ArgumentParser) -> None:
        walltime_arguments(parser)
        add_arguments(parser)

    run_standalone(__doc__, "batching", arguments, run, argv)


if __name__ == "__main__":
    main()
