"""Running queries for the server: one agent per device, one query at a time on each.

A GPU given several forward passes at once only slows each of them and risks running out
of memory, so every device has one worker thread and a FIFO queue in front of it. The
pool sends a query to the device with the shortest queue and refuses it (``QueueFull``,
answered 503) when every queue already holds ``max_queue`` waiting queries. A query not
answered within ``request_timeout`` seconds (queueing included) is given up
(``RequestTimeout``, answered 504): one still queued never runs; one running cannot be
stopped, so its worker reports itself ``stuck`` until it returns.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from PIL import Image

from ..agent import Agent
from ..configuration import STRATEGIES
from ..result import Result


class QueueFull(Exception):
    """Every device's queue is full; the client should retry later."""


class RequestTimeout(Exception):
    """A query was not answered within the request timeout."""


class QueryAborted(RuntimeError):
    """A backend raised ``KeyboardInterrupt`` or ``SystemExit`` inside a query."""


class DeviceWorker:
    """One device's agent and the queue in front of it.

    Queries may ask for other method settings (strategy, focus, ...): their agents are made
    with ``Agent.with_settings`` and so share the device's models. Everything that touches
    the models runs on the worker's one thread; the counters are only changed on the event
    loop's thread.
    """

    def __init__(self, agent: Agent, name: str | None = None, request_timeout: float | None = None) -> None:
        self.agent = agent
        self.name = name or agent.config.device
        self.request_timeout = request_timeout
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rex-{self.name}")
        self._variants: dict[tuple, Agent] = {}
        self.pending = 0  # queries queued or running (a query given up still counts until it ends)
        self.served = 0
        self._running_since: float | None = None  # set by the worker thread

    @property
    def waiting(self) -> int:
        return max(0, self.pending - 1)

    async def locate(self, image: Image.Image, expression: str, settings: dict[str, Any]) -> Result:
        """``Agent.locate`` with ``settings`` on this device, after the queries queued before it.

        The result's timings gain ``queue``: the seconds spent waiting for the device.
        """
        queued_at = time.perf_counter()
        self.pending += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._thread, self._locate, image, expression, settings, queued_at
        )
        future.add_done_callback(self._ended)
        try:
            result, waited = await asyncio.wait_for(asyncio.shield(future), self.request_timeout)
        except asyncio.TimeoutError:
            future.cancel()  # a query still in the queue is dropped; a running one ends unseen
            raise RequestTimeout(f"no answer within {self.request_timeout:g} s") from None
        return replace(result, timings={"queue": waited, **result.timings})

    def _ended(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled() and future.exception() is None:
            self.served += 1

    def _locate(self, image, expression, settings, queued_at) -> tuple[Result, float]:
        waited = time.perf_counter() - queued_at
        self._running_since = time.monotonic()
        try:
            return self._agent_for(settings).locate(image, expression), waited
        except (KeyboardInterrupt, SystemExit) as error:
            # From a plug-in: it ends this query, not the server (a BaseException would escape
            # every handler on its way up the event loop).
            raise QueryAborted(f"{type(error).__name__}: {error}") from None
        finally:
            self._running_since = None

    def _agent_for(self, settings: dict[str, Any]) -> Agent:
        """The agent for ``settings``; one per distinct configuration, made once."""
        changed = {name: value for name, value in settings.items() if getattr(self.agent.config, name) != value}
        key = tuple(sorted(changed.items()))
        if key not in self._variants:
            self._variants[key] = self.agent.with_settings(**changed) if changed else self.agent
        return self._variants[key]

    def load_models(self, strategies: Sequence[str] = STRATEGIES) -> None:
        """Load, now, every model that a query of one of ``strategies`` may need (focus included)."""
        for strategy in strategies:
            self._thread.submit(self.agent.with_settings(strategy=strategy, focus=True).load_models).result()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    @property
    def stuck(self) -> bool:
        """Whether the running query has outlasted the request timeout (a model call that hangs)."""
        since = self._running_since
        return since is not None and self.request_timeout is not None and time.monotonic() - since > self.request_timeout

    def status(self) -> dict[str, Any]:
        since = self._running_since
        return {"device": self.name, "running": min(self.pending, 1), "waiting": self.waiting, "served": self.served,
                "running_for_s": None if since is None else round(time.monotonic() - since, 3), "stuck": self.stuck}


class WorkerPool:
    """The devices' workers; a query goes to the one with the shortest queue."""

    def __init__(self, workers: Sequence[DeviceWorker], max_queue: int = 32) -> None:
        """``max_queue`` waiting queries per device at most."""
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self.max_queue = max_queue

    @classmethod
    def of(cls, agents: Sequence[Agent], max_queue: int = 32, request_timeout: float | None = None) -> "WorkerPool":
        return cls([DeviceWorker(agent, request_timeout=request_timeout) for agent in agents], max_queue)

    def check_room(self) -> DeviceWorker:
        """The worker a query would go to; ``QueueFull`` when every queue is full (checked before
        a request's image is decoded, so a busy server spends nothing on it)."""
        worker = min(self.workers, key=lambda candidate: candidate.pending)
        if worker.pending > self.max_queue:  # it would wait behind pending queries, one of them running
            raise QueueFull(f"all {len(self.workers)} device queue(s) hold {self.max_queue} waiting queries")
        return worker

    async def locate(self, image: Image.Image, expression: str, settings: dict[str, Any]) -> Result:
        return await self.check_room().locate(image, expression, settings)

    @property
    def stuck(self) -> list[str]:
        return [worker.name for worker in self.workers if worker.stuck]

    def load_models(self, strategies: Sequence[str] = STRATEGIES) -> None:
        for worker in self.workers:
            worker.load_models(strategies)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    def status(self) -> list[dict[str, Any]]:
        return [worker.status() for worker in self.workers]
