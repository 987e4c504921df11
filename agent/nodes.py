"""The steps of the method, each a small function of the state.

``make_nodes`` binds them to one agent's backends and settings; every node returns
only the keys it changes, and ``timed`` records its name in the trace and its wall
time in ``timings``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from tools.detections import Detections
from tools.errors import ModelOutputError
from tools.routing import RoutingThresholds, count_instances, difficulty_level

from .backends import Backends
from .configuration import Configuration
from .state import AgentState

Node = Callable[[AgentState], dict[str, Any]]


def timed(name: str, node: Node) -> Node:
    def run(state: AgentState) -> dict[str, Any]:
        start = time.perf_counter()
        update = node(state)
        update.setdefault("trace", []).insert(0, name)
        update["timings"] = {**update.get("timings", {}), name: time.perf_counter() - start}
        return update

    run.__name__ = name
    return run


def make_nodes(backends: Backends, config: Configuration) -> dict[str, Node]:
    """The graph's nodes, bound to ``backends`` and ``config``."""

    def detect_all(state: AgentState, queries: list[tuple[str, tuple[int, int] | None]]) -> tuple[list, dict]:
        """The detector's answers for ``(text, focus)`` queries: each computed at most once per
        query, the missing ones in one batched call. Returns the answers and the memo update."""
        memo = state.get("detector_memo", {})
        missing = [query for query in dict.fromkeys(queries) if query not in memo]
        computed = dict(zip(missing, backends.detect_many(state["image"], missing))) if missing else {}
        return [computed[query] if query in computed else memo[query] for query in queries], computed

    def detect(state: AgentState, text: str, span: tuple[int, int] | None) -> tuple[Detections, dict]:
        (detections,), memo = detect_all(state, [(text, span)])
        return detections, memo

    def focus_span(state: AgentState) -> tuple[int, int] | None:
        return state.get("target_span") if config.focus else None

    def extract_target(state: AgentState) -> dict[str, Any]:
        target, fallback = backends.extract(state["expression"])
        update: dict[str, Any] = {"target": target.phrase, "target_span": target.span, "target_source": target.source}
        if fallback:
            update["fallbacks"] = [fallback]
        return update

    def route(state: AgentState) -> dict[str, Any]:
        queries = [(state["target"], None)]
        if config.strategy == "sfa+crs":
            # Both paths after routing need the full expression too: one batched detector call
            # (it saves a round trip, not the image backbone, which runs once per text).
            queries.append((state["expression"], focus_span(state)))
        (detections, *_), memo = detect_all(state, queries)
        thresholds = RoutingThresholds(config.router_top_k, config.router_score_threshold, config.router_iou_threshold)
        count = count_instances(detections, thresholds)
        return {"instance_count": count, "level": difficulty_level(count), "detector_memo": memo}

    def specialist(state: AgentState) -> dict[str, Any]:
        detections, memo = detect(state, state["expression"], focus_span(state))
        return {"path": "specialist", "answer": detections.sorted(), "detector_memo": memo}

    def mllm_ground(state: AgentState) -> dict[str, Any]:
        focus = state.get("target") if config.focus else None
        update: dict[str, Any] = {"path": "mllm"}
        try:
            answer = backends.ground(state["image"], state["expression"], focus).sorted()
        except ModelOutputError as error:
            answer = Detections.empty()
            update["fallbacks"] = [f"the MLLM's answer was unusable: {error}"]
        update["answer"] = answer
        if len(answer) == 0 and config.uses_detector and not config.allow_none:
            # The MLLM wrote no usable box: the specialist's best box is the documented fallback.
            detections, memo = detect(state, state["expression"], focus_span(state))
            update.update(answer=detections.sorted()[:1], detector_memo=memo)
            note = "the MLLM gave no usable box: used the specialist's top box"
            update["fallbacks"] = update.get("fallbacks", []) + [note]
        return update

    def crs(state: AgentState) -> dict[str, Any]:
        detections, memo = detect(state, state["expression"], focus_span(state))
        candidates = detections.top_k(config.crs_top_k).nms(config.crs_iou_threshold)
        update: dict[str, Any] = {"path": "crs", "candidates": candidates, "detector_memo": memo}
        try:
            update["selection"] = backends.select(state["image"], state["expression"], candidates, config.allow_none)
        except ModelOutputError as error:
            # No option could be read: the specialist's best candidate answers instead.
            update.update(selection=None, answer=candidates[:1])
            update["fallbacks"] = [f"the MLLM's CRS answer was unusable ({error}): used the top candidate"]
        return update

    def finish(state: AgentState) -> dict[str, Any]:
        if state["path"] == "crs" and state.get("selection") is not None:
            return {"detections": finish_selection(state["selection"], config)}
        if state["path"] == "crs":
            return {"detections": state["answer"]}
        threshold = config.specialist_threshold if state["path"] == "specialist" else config.mllm_threshold
        return {"detections": finish_boxes(state["answer"], config, threshold)}

    steps = dict(
        extract_target=extract_target, route=route, specialist=specialist, mllm=mllm_ground, crs=crs, finish=finish
    )
    return {name: timed(name, step) for name, step in steps.items()}


def finish_boxes(answer: Detections, config: Configuration, threshold: float) -> Detections:
    """Apply the generalized-REC policy to a specialist or MLLM answer (sorted, best first).

    ``allow_none``: boxes below ``threshold`` do not count, so an unsure answer is
    "no target". ``multi``: every distinct box above ``threshold`` is kept (at least
    the best one unless ``allow_none``); otherwise only the best box.
    """
    confident = answer.above(threshold) if config.allow_none else answer
    if config.multi:
        kept = confident.above(threshold).nms(config.crs_iou_threshold)
        return kept if len(kept) or config.allow_none else confident[:1]
    return confident[:1]


def finish_selection(selection, config: Configuration) -> Detections:
    """The chosen candidate(s) of a CRS selection, scored by their option probability.

    "None" winning gives no box. With ``multi``, every candidate whose probability is
    at least ``multi_ratio`` times the best option's is kept, best first.
    """
    if selection.index is None:
        return Detections.empty()
    if not config.multi:
        return selection.to_detections()
    probabilities = selection.probabilities[: len(selection.candidates)]
    keep = np.flatnonzero(probabilities >= config.multi_ratio * selection.probability)
    return Detections(selection.candidates.boxes[keep], probabilities[keep]).sorted()
