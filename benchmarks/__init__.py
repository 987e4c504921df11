"""Performance benchmarks of REX Agent: FLOPs per query, wall time, orchestration overhead.

Run them all with ``python -m benchmarks.run --out outputs/bench`` (``make bench``);
each prints its tables and writes ``<name>.json`` to ``--out``:

- ``flops``: every strategy's FLOPs per query at real scale (MM-GDINO-T/L, Qwen2-VL-2B/7B,
  Qwen2.5-VL-7B), counted on weightless ``meta`` models built from the published configs;
- ``walltime``: CRS ``select`` against one prefill and ``ground`` on one mid-size random model;
- ``orchestration``: ``Agent.locate``'s own time with instant plug-in backends.

No download is needed: nothing loads real weights.
"""
