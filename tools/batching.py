"""Dynamic batching: the calls that concurrent queries make to one model become one batched call.

Queries that run together (``Agent.locate_batch``, ``agent-cli eval``, a server worker's
batch) each run their own graph in a thread of a ``BatchScope``. When a query reaches a
model call, it hands its arguments to that call's ``Coalescer`` and waits. A batch is run
as soon as it is full (``max_batch``) or every query of the scope is waiting: then nothing
more can arrive, so waiting longer would only add latency. One of the waiting queries runs
the batch and every query gets its own answer, or its own exception.

Outside a scope (one ``Agent.locate``) a coalescer calls the single-query function at once.
"""

from __future__ import annotations

import functools
import threading
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


class PartialBatchError(Exception):
    """Some items of a batched call failed: ``results`` holds the answers, with each failed
    item's exception in its place (``errors`` maps item index to exception)."""

    def __init__(self, results: list[Any]) -> None:
        self.results = results
        self.errors = {index: item for index, item in enumerate(results) if isinstance(item, BaseException)}
        first = next(iter(self.errors.values()), None)
        super().__init__(f"{len(self.errors)} of {len(results)} items failed; the first: {first}")


@dataclass
class _Entry:
    item: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    batch: list["_Entry"] | None = None  # set on the entry whose thread runs its batch


@dataclass
class _Pending:
    coalescer: "Coalescer"
    key: Any
    entries: list[_Entry] = field(default_factory=list)


class BatchScope:
    """The queries of one ``run_together`` call: how many are in flight, how many wait, and the
    batches waiting to run."""

    def __init__(self, queries: int, workers: int) -> None:
        self._lock = threading.Condition()
        self._unfinished = queries
        self._workers = workers
        self._waiting = 0  # queries waiting in a coalescer
        self._pending: dict[tuple[int, Any], _Pending] = {}

    @property
    def _active(self) -> int:
        """Queries running, or about to: a worker that finishes one takes the next at once."""
        return min(self._workers, self._unfinished)

    def _finished(self) -> None:
        with self._lock:
            self._unfinished -= 1
            self._flush_if_stalled()

    # ------------------------------------------------------------------ used by Coalescer

    def _submit(self, coalescer: "Coalescer", key: Any, item: Any) -> Any:
        entry = _Entry(item)
        with self._lock:
            pending = self._pending.setdefault((id(coalescer), key), _Pending(coalescer, key))
            pending.entries.append(entry)
            self._waiting += 1
            if len(pending.entries) >= coalescer.max_batch:
                self._start(pending)
            else:
                self._flush_if_stalled()
            while not entry.done and entry.batch is None:
                self._lock.wait()
        if entry.batch is not None:  # this thread runs the batch
            try:
                coalescer._run(key, entry.batch)
            except BaseException as error:  # KeyboardInterrupt and the like: every member gets it
                for member in entry.batch:
                    member.error = member.error or error
            finally:
                with self._lock:
                    for member in entry.batch:
                        member.done = True
                    self._flush_if_stalled()
                    self._lock.notify_all()
        if entry.error is not None:
            raise entry.error
        return entry.result

    def _start(self, pending: _Pending) -> None:
        """Hand the first ``max_batch`` entries to one of their threads (lock held)."""
        taken = pending.entries[: pending.coalescer.max_batch]
        del pending.entries[: len(taken)]
        if not pending.entries:
            del self._pending[(id(pending.coalescer), pending.key)]
        self._waiting -= len(taken)  # served now, not waiting
        taken[0].batch = taken
        self._lock.notify_all()

    def _flush_if_stalled(self) -> None:
        """Every active query waits: nothing more can arrive, so run the largest batch (lock held)."""
        if self._pending and self._waiting >= self._active:
            self._start(max(self._pending.values(), key=lambda pending: len(pending.entries)))


_SCOPE: ContextVar[BatchScope | None] = ContextVar("rex_batch_scope", default=None)


def run_together(function: Callable[[Any], Any], items: Sequence[Any], workers: int) -> list[Any]:
    """``function(item)`` for every item, ``workers`` at a time in threads of one ``BatchScope``,
    so that their model calls are batched; answers in input order, an exception returned in
    its item's place. One worker (or one item) runs them one by one in this thread."""
    if workers <= 1 or len(items) <= 1:
        return [_answer(function, item) for item in items]
    scope = BatchScope(len(items), min(workers, len(items)))
    answers: list[Any] = [None] * len(items)
    todo = iter(range(len(items)))
    take = threading.Lock()
    left = [len(items)]
    all_done = threading.Event()

    def worker() -> None:
        _SCOPE.set(scope)  # in this thread's own copy of the caller's context
        while True:
            with take:
                index = next(todo, None)
            if index is None:
                return
            try:
                answers[index] = _answer(function, items[index])
            except BaseException as error:  # noqa: BLE001 - KeyboardInterrupt and the like, handed back
                answers[index] = error
            finally:
                scope._finished()
                with take:
                    left[0] -= 1
                    if not left[0]:
                        all_done.set()

    # Daemon threads: a second Ctrl-C ends the process at once, as it did without batching, instead
    # of waiting for the batch in flight (what it computed is lost; nothing was written from here).
    threads = [threading.Thread(target=copy_context().run, args=(worker,), daemon=True, name=f"rex-batch-{i}")
               for i in range(scope._workers)]
    for thread in threads:
        thread.start()
    while not all_done.wait(0.5):  # a timed wait keeps the main thread responsive to Ctrl-C
        pass
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, Exception):
            raise answer
    return answers


class Coalescer:
    """Turns single calls into batched calls of ``batch(key, items)`` within a ``BatchScope``.

    ``single(item)`` answers one item; ``batch(key, items)`` a list of items that share ``key``
    (e.g. CRS questions with the same ``allow_none``), returning one answer per item or
    raising ``PartialBatchError``. Any other exception of a batched call makes each of its
    items be answered alone, so an error reaches only the query it belongs to.
    """

    def __init__(self, single: Callable[[Any], Any], batch: Callable[[Any, list[Any]], list[Any]],
                 max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.single, self.batch, self.max_batch = single, batch, max_batch
        self.calls = 0  # batched calls made (a benchmark and test probe)

    def __call__(self, item: Any, key: Any = None) -> Any:
        scope = _SCOPE.get()
        if scope is None or self.max_batch == 1:
            return self.single(item)
        return scope._submit(self, key, item)

    def _run(self, key: Any, entries: list[_Entry]) -> None:
        items = [entry.item for entry in entries]
        try:
            if len(items) == 1:
                results = [_answer(self.single, items[0])]
            else:
                self.calls += 1
                results = list(self.batch(key, items))
                if len(results) != len(items):
                    raise ValueError(f"a batched call returned {len(results)} answers for {len(items)} items")
        except PartialBatchError as partial:
            results = partial.results
        except Exception:  # noqa: BLE001 - the batch as a whole failed: each item on its own
            results = [_answer(self.single, item) for item in items]
        for entry, result in zip(entries, results):
            if isinstance(result, BaseException):
                entry.error = result
            else:
                entry.result = result


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in consecutive lists of ``size`` (at least 1), the last one shorter; read lazily."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= max(1, size):
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def one_call_at_a_time(method: Callable) -> Callable:
    """Make a model method take turns (on ``self._lock``, an ``RLock``): a model keeps state
    between the steps of a call (caches, adapters switched off), so the threads of a batch of
    queries must not interleave there. Their work is batched before, by a ``Coalescer``."""

    @functools.wraps(method)
    def serialised(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return serialised


def _answer(function: Callable[[Any], Any], item: Any) -> Any:
    """``function(item)``, or the exception it raised (returned, not raised)."""
    try:
        return function(item)
    except Exception as error:  # noqa: BLE001 - handed back to the item's own query
        return error
