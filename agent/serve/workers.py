"""Running queries for the server: one agent per device, a batch of queries at a time on each.

Every device has one dispatcher thread and a FIFO queue in front of it. The dispatcher takes
the first waiting query, then whatever else arrives within ``batch_wait`` seconds, up to the
agent's ``batch_size``, and runs them together (``tools.batching``): their MLLM calls share
batched forward passes, and each query answers (or fails) on its own. A GPU is given one
batch at a time, never several competing forward passes. The pool sends a query to the
device with the shortest queue and refuses it (``QueueFull``, answered 503) when every queue
already holds ``max_queue`` waiting queries. A query not answered within ``request_timeout``
seconds (queueing included) is given up (``RequestTimeout``, answered 504): one still queued
never runs; one running cannot be stopped, so its worker reports itself ``stuck`` until it
returns.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from PIL import Image

from tools.batching import run_together

from ..agent import Agent
from ..configuration import STRATEGIES
from .options import DEFAULT_BATCH_WAIT_MS
from ..result import Result

DEFAULT_BATCH_WAIT = DEFAULT_BATCH_WAIT_MS / 1000  # seconds a batch waits for more queries after its first


@dataclass
class _Job:
    image: Image.Image
    expression: str
    settings: dict[str, Any]
    queued_at: float
    future: Future = field(default_factory=Future)


class QueueFull(Exception):
    """Every device's queue is full; the client should retry later."""


class RequestTimeout(Exception):
    """A query was not answered within the request timeout."""


class QueryAborted(RuntimeError):
    """A backend raised ``KeyboardInterrupt`` or ``SystemExit`` inside a query."""


class DeviceWorker:
    """One device's agent, its queue and the dispatcher thread that runs its batches.

    Queries may ask for other method settings (strategy, focus, ...): their agents are made
    with ``Agent.with_settings`` and so share the device's models (and batch together).
    Everything that touches the models runs in the dispatcher's batches; ``pending`` and
    ``served`` are only changed on the event loop's thread.
    """

    def __init__(self, agent: Agent, name: str | None = None, request_timeout: float | None = None,
                 batch_wait: float = DEFAULT_BATCH_WAIT) -> None:
        self.agent = agent
        self.name = name or agent.config.device
        self.request_timeout = request_timeout
        self.batch_size = agent.config.batch_size
        self.batch_wait = batch_wait
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._variants: dict[tuple, Agent] = {}
        self._variants_lock = threading.Lock()
        self.pending = 0  # queries queued or running (a query given up still counts until it ends)
        self.served = 0
        self.running = 0  # queries of the batch now running (set by the dispatcher)
        self._running_since: float | None = None  # set by the dispatcher
        self._dispatcher = threading.Thread(target=self._dispatch, name=f"rex-{self.name}", daemon=True)
        self._dispatcher.start()

    @property
    def waiting(self) -> int:
        return max(0, self.pending - self.running)

    def would_wait(self) -> int:
        """Queries that would wait, this one included, if one more arrived now: a running batch
        takes no more; an idle device takes up to ``batch_size`` at once."""
        starting = self.running or min(self.batch_size, self.pending + 1)
        return self.pending + 1 - starting

    async def locate(self, image: Image.Image, expression: str, settings: dict[str, Any]) -> Result:
        """``Agent.locate`` with ``settings`` on this device, after the queries queued before it.

        The result's timings gain ``queue``: the seconds spent waiting for the device.
        """
        job = _Job(image, expression, settings, time.perf_counter())
        self.pending += 1
        future = asyncio.wrap_future(job.future)
        future.add_done_callback(self._ended)
        self._queue.put(job)
        try:
            result, waited = await asyncio.wait_for(asyncio.shield(future), self.request_timeout)
        except asyncio.TimeoutError:
            job.future.cancel()  # a query still in the queue is dropped; a running one ends unseen
            raise RequestTimeout(f"no answer within {self.request_timeout:g} s") from None
        return replace(result, timings={"queue": waited, **result.timings})

    def _ended(self, future: asyncio.Future) -> None:
        self.pending -= 1
        if not future.cancelled() and future.exception() is None:
            self.served += 1

    def _dispatch(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.batch_wait
            while len(batch) < self.batch_size:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:  # closing: finish this batch, then stop
                    self._queue.put(None)
                    break
                batch.append(job)
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)

    def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        self.running, self._running_since = len(batch), time.monotonic()
        try:
            outcomes = run_together(self._locate, batch, self.batch_size)
        finally:
            self.running, self._running_since = 0, None
        for job, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result((outcome, started - job.queued_at))

    def _locate(self, job: _Job) -> Result:
        try:
            return self._agent_for(job.settings).locate(job.image, job.expression)
        except (KeyboardInterrupt, SystemExit) as error:
            # From a plug-in: it ends this query, not the server (a BaseException would escape
            # every handler on its way up).
            raise QueryAborted(f"{type(error).__name__}: {error}") from None

    def _agent_for(self, settings: dict[str, Any]) -> Agent:
        """The agent for ``settings``; one per distinct configuration, made once."""
        changed = {name: value for name, value in settings.items() if getattr(self.agent.config, name) != value}
        key = tuple(sorted(changed.items()))
        with self._variants_lock:  # the queries of a batch run in threads of their own
            if key not in self._variants:
                self._variants[key] = self.agent.with_settings(**changed) if changed else self.agent
            return self._variants[key]

    def load_models(self, strategies: Sequence[str] = STRATEGIES) -> None:
        """Load, now, every model that a query of one of ``strategies`` may need (focus included)."""
        for strategy in strategies:
            self.agent.with_settings(strategy=strategy, focus=True).load_models()

    def close(self) -> None:
        while True:  # queries still queued are dropped
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        self._queue.put(None)

    @property
    def stuck(self) -> bool:
        """Whether the running batch has outlasted the request timeout (a model call that hangs)."""
        since = self._running_since
        return since is not None and self.request_timeout is not None and time.monotonic() - since > self.request_timeout

    def status(self) -> dict[str, Any]:
        since = self._running_since
        return {"device": self.name, "running": min(self.pending, self.running), "waiting": self.waiting,
                "served": self.served, "running_for_s": None if since is None else round(time.monotonic() - since, 3),
                "stuck": self.stuck}


class WorkerPool:
    """The devices' workers; a query goes to the one with the shortest queue."""

    def __init__(self, workers: Sequence[DeviceWorker], max_queue: int = 32) -> None:
        """``max_queue`` waiting queries per device at most."""
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self.max_queue = max_queue

    @classmethod
    def of(cls, agents: Sequence[Agent], max_queue: int = 32, request_timeout: float | None = None,
           batch_wait: float = DEFAULT_BATCH_WAIT) -> "WorkerPool":
        return cls([DeviceWorker(agent, request_timeout=request_timeout, batch_wait=batch_wait) for agent in agents],
                   max_queue)

    def check_room(self) -> DeviceWorker:
        """The worker a query would go to; ``QueueFull`` when every queue is full (checked before
        a request's image is decoded, so a busy server spends nothing on it)."""
        worker = min(self.workers, key=lambda candidate: candidate.pending)
        if worker.would_wait() > self.max_queue:
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
