"""Batched execution: queries run together share batched model calls, and answer as if alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from agent import Agent
from tests.fake_openai_server import FakeChatServer, completion, error, token
from tools.batching import Coalescer, PartialBatchError, run_together
from tools.detections import Detections
from tools.errors import RemoteServiceError
from tools.mllm.openai_compat import OpenAICompatibleMLLM
from tools.openai_client import RetryPolicy
from tests.helpers import without_timings

EXPRESSION = "the red car left of the tree"


class Recorder:
    """A batch function that records each batch it is given."""

    def __init__(self, fail_on=None) -> None:
        self.batches: list[list] = []
        self.singles: list = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def single(self, item):
        with self.lock:
            self.singles.append(item)
        if item == self.fail_on:
            raise ValueError(f"bad item {item}")
        return item * 10

    def batch(self, key, items):
        with self.lock:
            self.batches.append(list(items))
        if self.fail_on in items:
            raise RuntimeError("the whole batch failed")
        return [item * 10 for item in items]


def test_queries_run_together_share_one_batched_call_and_answer_in_order():
    recorder = Recorder()
    coalescer = Coalescer(recorder.single, recorder.batch, max_batch=8)
    answers = run_together(lambda item: coalescer(item) + 1, list(range(8)), workers=8)
    assert answers == [item * 10 + 1 for item in range(8)]
    assert len(recorder.batches) == 1 and sorted(recorder.batches[0]) == list(range(8))
    assert recorder.singles == []


def test_batches_are_capped_and_later_queries_fill_the_freed_workers():
    recorder = Recorder()
    coalescer = Coalescer(recorder.single, recorder.batch, max_batch=3)
    answers = run_together(coalescer, list(range(10)), workers=4)
    assert answers == [item * 10 for item in range(10)]
    assert all(len(batch) <= 3 for batch in recorder.batches)
    assert sorted(item for batch in recorder.batches for item in batch) + sorted(recorder.singles) == sorted(
        list(range(10)))


def test_a_query_that_never_calls_the_model_does_not_hold_the_others_up():
    recorder = Recorder()
    coalescer = Coalescer(recorder.single, recorder.batch, max_batch=8)

    def query(item):
        if item % 2:
            time.sleep(0.05)
            return -1  # answered without the model, after the others started waiting
        return coalescer(item)

    assert run_together(query, list(range(6)), workers=6) == [0, -1, 20, -1, 40, -1]
    assert recorder.batches == [[0, 2, 4]] or sorted(recorder.batches[0]) == [0, 2, 4]


def test_one_failing_item_answers_its_own_query_only():
    recorder = Recorder(fail_on=3)
    coalescer = Coalescer(recorder.single, recorder.batch, max_batch=8)
    answers = run_together(coalescer, list(range(5)), workers=5)
    assert isinstance(answers[3], ValueError) and [answers[i] for i in (0, 1, 2, 4)] == [0, 10, 20, 40]
    # The failed batch was answered item by item.
    assert len(recorder.batches) == 1 and sorted(recorder.singles) == list(range(5))

    def partial(key, items):  # a batch method that answers some items and not others
        raise PartialBatchError([ValueError("no") if item == 1 else item for item in items])

    singles = []
    coalescer = Coalescer(lambda item: singles.append(item) or item, partial, max_batch=4)
    answers = run_together(coalescer, [0, 1, 2], workers=3)
    assert answers[0] == 0 and isinstance(answers[1], ValueError) and answers[2] == 2
    assert singles == []  # the answered items are not asked again


def test_calls_with_different_keys_are_not_mixed():
    seen = []
    coalescer = Coalescer(lambda item: item, lambda key, items: seen.append((key, sorted(items))) or list(items),
                          max_batch=8)
    run_together(lambda item: coalescer(item, key=item % 2), list(range(6)), workers=6)
    assert sorted(seen) == [(0, [0, 2, 4]), (1, [1, 3, 5])]


def test_outside_a_scope_the_single_call_is_made():
    recorder = Recorder()
    assert Coalescer(recorder.single, recorder.batch, max_batch=8)(4) == 40
    assert recorder.singles == [4] and recorder.batches == []


# ------------------------------------------------------------------ the agent, with plug-ins


class Detector:
    def detect(self, image, text, focus=None):
        offset = len(text) % 7
        return [[10 + offset, 10, 60, 60], [80, 20, 120, 90]], [0.9, 0.5]


class BatchingMLLM:
    """Answers like a deterministic model; counts its calls by kind."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = {"ground": [], "ground_batch": [], "select": [], "select_batch": []}

    def ground(self, image, expression, focus=None):
        self.calls["ground"].append(1)
        return self._box(expression)

    def ground_batch(self, images, expressions, focuses):
        self.calls["ground_batch"].append(len(images))
        return [self._box(expression) for expression in expressions]

    def select(self, image, expression, candidates, allow_none=False):
        self.calls["select"].append(1)
        return self._choice(expression, candidates, allow_none)

    def select_batch(self, images, expressions, candidates, allow_none=False):
        self.calls["select_batch"].append(len(images))
        return [self._choice(e, c, allow_none) for e, c in zip(expressions, candidates)]

    @staticmethod
    def _box(expression):
        return [[len(expression), 5, 50, 40]], [0.8]

    @staticmethod
    def _choice(expression, candidates, allow_none):
        count = len(candidates) + allow_none
        weights = np.arange(1, count + 1, dtype=float) + len(expression) % 3
        return list(weights / weights.sum())


class PlainMLLM:
    def __init__(self) -> None:
        self.calls = 0

    def ground(self, image, expression, focus=None):
        self.calls += 1
        return BatchingMLLM._box(expression)

    def select(self, image, expression, candidates, allow_none=False):
        self.calls += 1
        return BatchingMLLM._choice(expression, candidates, allow_none)


def queries(count: int):
    images = [Image.new("RGB", (160, 120), (10 * i, 90, 40)) for i in range(count)]
    return images, [f"{EXPRESSION} number {i}" for i in range(count)]



@pytest.mark.parametrize("strategy, batched", [("crs", "select_batch"), ("mllm", "ground_batch")])
def test_locate_batch_sends_a_batch_of_queries_in_one_call_with_the_same_results(strategy, batched):
    images, expressions = queries(8)
    together = BatchingMLLM()
    agent = Agent(strategy, detector=Detector(), mllm=together, extractor="heuristic", batch_size=8)
    results = agent.locate_batch(images, expressions)
    assert together.calls[batched] == [8]
    alone = BatchingMLLM()
    one_by_one = Agent(strategy, detector=Detector(), mllm=alone, extractor="heuristic", batch_size=1)
    expected = one_by_one.locate_batch(images, expressions)
    assert sum(alone.calls[batched]) == 0 and len(alone.calls[batched.replace("_batch", "")]) == 8
    assert [without_timings(r) for r in results] == [without_timings(r) for r in expected]
    assert all(r.trace[-1] == "finish" for r in results)


def test_sfa_batches_the_mllm_calls_of_level_2_queries_only():
    images, expressions = queries(6)
    mllm = BatchingMLLM()
    agent = Agent("sfa", detector=Detector(), mllm=mllm, extractor="heuristic", batch_size=6)
    results = agent.locate_batch(images, expressions)
    level_2 = sum(result.path == "mllm" for result in results)
    assert sum(mllm.calls["ground_batch"]) + len(mllm.calls["ground"]) == level_2


def test_a_plug_in_without_batch_methods_is_called_per_query():
    images, expressions = queries(5)
    mllm = PlainMLLM()
    results = Agent("crs", detector=Detector(), mllm=mllm, extractor="heuristic", batch_size=5).locate_batch(
        images, expressions)
    assert mllm.calls == 5 and len(results) == 5


def test_a_bad_query_in_a_batch_fails_alone():
    images, expressions = queries(4)
    expressions[2] = "   "
    agent = Agent("crs", detector=Detector(), mllm=BatchingMLLM(), extractor="heuristic", batch_size=4)
    results = agent.locate_batch(images, expressions, return_exceptions=True)
    assert "expression is empty" in str(results[2]) and all(r.found for i, r in enumerate(results) if i != 2)
    with pytest.raises(Exception, match="expression is empty"):
        agent.locate_batch(images, expressions)


# ------------------------------------------------------------------ the tiny Qwen2-VL


@pytest.mark.parametrize("strategy", ["crs", "mllm"])
def test_tiny_qwen_batched_equals_one_at_a_time(strategy, tiny_mm_grounding_dino, tiny_qwen2_vl):
    images, expressions = queries(4)
    settings = dict(detector=str(tiny_mm_grounding_dino), mllm=str(tiny_qwen2_vl), llm="heuristic", device="cpu")
    together = Agent(strategy, batch_size=4, **settings)
    alone = together.with_settings(batch_size=1)  # the same loaded models
    batched, single = together.locate_batch(images, expressions), alone.locate_batch(images, expressions)
    for a, b in zip(batched, single):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        if strategy == "crs":
            np.testing.assert_allclose(a.selection.probabilities, b.selection.probabilities, atol=1e-4)


# ------------------------------------------------------------------ a slow OpenAI-compatible server


class InFlight:
    """Counts the requests a fake server is answering at once (each held for a moment)."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    def hold(self, seconds: float = 0.2) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1


def test_openai_batch_methods_send_requests_concurrently_and_keep_the_others_when_one_fails():
    in_flight = InFlight()

    def respond(body, number):
        text = next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
        in_flight.hold()
        if "number 5" in text:
            return error(400, "bad request")
        return completion("A", [token("A", -0.1, [("A", -0.1), ("B", -2.5)])])

    with FakeChatServer(respond) as server:
        mllm = OpenAICompatibleMLLM("m", base_url=server.base_url, api_key="k", concurrency=4,
                                    retry=RetryPolicy(max_retries=0, timeout=5))
        images, expressions = queries(8)
        candidates = [Detections([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8])] * 8
        with pytest.raises(PartialBatchError) as failure:
            mllm.select_batch(images, expressions, candidates)
    assert 1 < in_flight.most <= 4  # concurrent, within the bound
    assert list(failure.value.errors) == [5] and isinstance(failure.value.errors[5], RemoteServiceError)
    answers = failure.value.results
    assert all(answers[i].letter == "A" for i in range(8) if i != 5)


def test_the_openai_extractor_asks_its_prompts_concurrently():
    from tools.extraction import OpenAIChatExtractor

    in_flight = InFlight()

    def respond(body, number):
        in_flight.hold(0.1)
        return completion('{"1": "the car"}')

    with FakeChatServer(respond) as server:
        extractor = OpenAIChatExtractor("m", base_url=server.base_url, api_key="k", per_prompt=1, concurrency=3)
        targets = extractor.extract([f"the car number {i}" for i in range(6)])
    assert targets == ["the car"] * 6 and len(server.requests) == 6 and 1 < in_flight.most <= 3


# ------------------------------------------------------------------ the server


class FailsOnSeven(Detector):
    def detect(self, image, text, focus=None):
        if "number 7" in text:
            raise ValueError("this one query's detector failed")
        return super().detect(image, text, focus)


def test_concurrent_clients_share_the_servers_batches_and_fail_alone():
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from agent.serve import ServerOptions, create_app
    from tests.helpers import png

    mllm = BatchingMLLM()
    agent = Agent("crs", detector=FailsOnSeven(), mllm=mllm, extractor="heuristic", batch_size=8)
    with TestClient(create_app(agent, ServerOptions(batch_wait_ms=300))) as client:
        def ask(number):
            files = {"image": ("scene.png", png(), "image/png")}
            return client.post("/locate", data={"expression": f"{EXPRESSION} number {number}"}, files=files)

        with ThreadPoolExecutor(8) as clients:
            answers = list(clients.map(ask, range(8)))
    assert [answer.status_code for answer in answers] == [200] * 7 + [500]
    assert answers[7].json()["detail"] == "internal error"
    # The seven that reached CRS shared batched calls (how many per batch depends on arrival).
    assert sum(mllm.calls["select_batch"]) + len(mllm.calls["select"]) == 7
    assert max(mllm.calls["select_batch"], default=0) > 1


def test_an_interrupt_inside_a_batch_reaches_every_query_of_it_and_nothing_hangs():
    def interrupted(key, items):
        raise KeyboardInterrupt

    raised = []

    def query(item):
        try:
            return coalescer(item)
        except KeyboardInterrupt:  # each query sees it (the server turns it into its own error)
            raised.append(item)
            return "interrupted"

    coalescer = Coalescer(lambda item: item, interrupted, max_batch=4)
    assert run_together(query, [0, 1, 2, 3], workers=4) == ["interrupted"] * 4
    assert sorted(raised) == [0, 1, 2, 3]


def test_ctrl_c_returns_without_waiting_for_the_batch_in_flight():
    import _thread

    release = threading.Event()
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_together(lambda item: release.wait(30), [1, 2], workers=2)
        # The queries' threads are still inside their calls: the main thread did not wait for them,
        # and as daemon threads they do not keep the process alive.
        running = [t for t in threading.enumerate() if t.name.startswith("rex-batch") and t.is_alive()]
        assert len(running) == 2 and all(t.daemon for t in running)
    finally:
        release.set()
        timer.cancel()
