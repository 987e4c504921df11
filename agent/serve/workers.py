"""Running queries for the server: one agent per device, one query at a time on each.

A GPU given several forward passes at once only slows each of them and risks running out
of memory, so every device has one worker thread and a FIFO queue in front of it. The
pool sends a query to the device with the shortest queue and refuses it (``QueueFull``,
answered 503) when every queue already holds ``max_queue`` waiting queries.
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


class DeviceWorker:
    """One device's agent and the queue in front of it.

    Queries may ask for other method settings (strategy, focus, ...): their agents are made
    with ``Agent.with_settings`` and so share the device's models. Everything that touches
    the models runs on the worker's one thread; the counters are only changed on the event
    loop's thread.
    """

    def __init__(self, agent: Agent, name: str | None = None) -> None:
        self.agent = agent
        self.name = name or agent.config.device
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rex-{self.name}")
        self._variants: dict[tuple, Agent] = {}
        self.pending = 0  # queries queued or running
        self.served = 0

    @property
    def waiting(self) -> int:
        return max(0, self.pending - 1)

    async def locate(self, image: Image.Image, expression: str, settings: dict[str, Any]) -> Result:
        """``Agent.locate`` with ``settings`` on this device, after the queries queued before it.

        The result's timings gain ``queue``: the seconds spent waiting for the device.
        """
        queued_at = time.perf_counter()
        self.pending += 1
        try:
            result, waited = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._locate, image, expression, settings, queued_at
            )
        finally:
            self.pending -= 1
        self.served += 1
        return replace(result, timings={"queue": waited, **result.timings})

    def _locate(self, image, expression, settings, queued_at) -> tuple[Result, float]:
        waited = time.perf_counter() - queued_at
        return self._agent_for(settings).locate(image, expression), waited

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

    def status(self) -> dict[str, Any]:
        return {"device": self.name, "running": min(self.pending, 1), "waiting": self.waiting, "served": self.served}


class WorkerPool:
    """The devices' workers; a query goes to the one with the shortest queue."""

    def __init__(self, workers: Sequence[DeviceWorker], max_queue: int = 32) -> None:
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self.max_queue = max_queue

    @classmethod
    def of(cls, agents: Sequence[Agent], max_queue: int = 32) -> "WorkerPool":
        return cls([DeviceWorker(agent) for agent in agents], max_queue)

    async def locate(self, image: Image.Image, expression: str, settings: dict[str, Any]) -> Result:
        worker = min(self.workers, key=lambda candidate: candidate.pending)
        if worker.pending > self.max_queue:  # it would wait behind pending queries, one of them running
            raise QueueFull(f"all {len(self.workers)} device queue(s) hold {self.max_queue} waiting queries")
        return await worker.locate(image, expression, settings)

    def load_models(self, strategies: Sequence[str] = STRATEGIES) -> None:
        for worker in self.workers:
            worker.load_models(strategies)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()

    def status(self) -> list[dict[str, Any]]:
        return [worker.status() for worker in self.workers]
