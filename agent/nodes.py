"""The steps of the method, each a small function of the state.

``make_nodes`` binds them to one agent's backends and settings; every node returns
only the keys it changes, and ``timed`` records its name in the trace and its wall
time in ``timings``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from tools import boxes as box_ops
from tools.detections import Detections
from tools.errors import ModelOutputError
from tools.extraction.count import read_count
from tools.mllm.selection import MIN_OPTION_MASS
from tools.routing import count_instances, crs_candidates, difficulty_level

from .backends import Backends
from .configuration import Configuration
from .finishing import FinishPolicy, count_candidates, stated_count
from .finishing import finish as finish_answer
from .state import AgentState

Node = Callable[[AgentState], dict[str, Any]]
# The detector's boxes for the CRS expression a result keeps (before top-k and NMS): the authors'
# detector files hold ten, and their positive evaluator maps letters A-D onto the first four.
RECORDED_PROPOSALS = 10


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

    behaviour = config.behaviour
    policy = FinishPolicy.of(config)

    def focus_span(state: AgentState) -> tuple[int, int] | None:
        return state.get("target_span") if config.focus else None

    def crs_span(state: AgentState) -> tuple[int, int] | None:
        return state.get("target_span") if config.crs_focus else None

    def target_words(state: AgentState) -> str | None:
        """The target as routing and the focus prompt name it."""
        return state.get("target_answer") if behaviour.verbatim_target else state.get("target")

    def mllm_image(state: AgentState):
        """What the MLLM sees: the pixels as stored when the profile says so and they differ."""
        return state["mllm_image"] if state.get("mllm_image") is not None else state["image"]

    def between_frames(state: AgentState, detections: Detections, to_mllm: bool) -> Detections:
        """``detections`` rescaled from the detector's image to the MLLM's (or back): the MLLM's
        coordinates are read relative to the detector's frame, as the scripts read them with the
        annotation's width and height (it differs only on a photo its EXIF tag turns by 90 degrees)."""
        sizes = (state["image"].size, mllm_image(state).size)
        if sizes[0] == sizes[1] or not len(detections):
            return detections
        source, target = sizes if to_mllm else sizes[::-1]
        return replace(detections, boxes=box_ops.resize_boxes(detections.boxes, source, target))

    def extract_target(state: AgentState) -> dict[str, Any]:
        target, fallback = backends.extract(state["expression"], state.get("given_target"))
        update: dict[str, Any] = {"target": target.phrase, "target_span": target.span, "target_source": target.source}
        # The extractor's own words ("this tree." where the expression says "This tree"), which
        # the authors' scripts pass on verbatim; the heuristic has no words of its own.
        answer = target.answer if target.source == "model" and target.answer and target.answer.strip() else None
        update["target_answer"] = answer or target.phrase
        # How many objects the expression names: the extraction model's answer, else the words.
        update["count_source"] = "model" if target.count is not None else "heuristic"
        update["expected_count"] = target.count if target.count is not None else read_count(
            state["expression"], target.span)
        if fallback:
            update["fallbacks"] = [fallback]
        return update

    def route(state: AgentState) -> dict[str, Any]:
        queries = [(target_words(state), None)]
        if config.strategy == "sfa+crs":
            # Both paths after routing need the full expression too: one batched detector call
            # (the image backbone runs once for both texts).
            queries.append((state["expression"], focus_span(state)))
            queries.append((state["expression"], crs_span(state)))
        (detections, *_), memo = detect_all(state, queries)
        count = count_instances(detections, config.routing)
        return {"instance_count": count, "level": difficulty_level(count), "detector_memo": memo}

    def specialist(state: AgentState) -> dict[str, Any]:
        detections, memo = detect(state, state["expression"], focus_span(state))
        return {"path": "specialist", "answer": detections.sorted(), "detector_memo": memo}

    def mllm_ground(state: AgentState) -> dict[str, Any]:
        focus = target_words(state) if config.focus else None
        update: dict[str, Any] = {"path": "mllm"}
        try:
            # In the order the model wrote them: its first box is its answer.
            answer = between_frames(state, backends.ground(mllm_image(state), state["expression"], focus), False)
        except ModelOutputError as error:
            answer = Detections.empty()
            update["fallbacks"] = [f"the MLLM's answer was unusable: {error}"]
        update["answer"] = answer
        fallback = behaviour.grounding_fallback and config.uses_detector and not config.allow_none
        if len(answer) == 0 and fallback:
            # The MLLM wrote no usable box: the specialist's best box is the documented fallback.
            detections, memo = detect(state, state["expression"], focus_span(state))
            update.update(answer=detections.sorted()[:1], detector_memo=memo)
            note = "the MLLM gave no usable box: used the specialist's top box"
            update["fallbacks"] = update.get("fallbacks", []) + [note]
        return update

    def crs(state: AgentState) -> dict[str, Any]:
        detections, memo = detect(state, state["expression"], crs_span(state))
        candidates = crs_candidates(detections, state["image"].size, config.crs_rule,
                                    drop_empty=behaviour.drop_empty_candidates)
        update: dict[str, Any] = {"path": "crs", "candidates": candidates, "detector_memo": memo,
                                  "proposals": detections.sorted()[:RECORDED_PROPOSALS]}
        if config.crs_mode == "verify":
            return {**update, **verify(state, candidates)}
        try:
            asked = between_frames(state, candidates, True)
            selection = backends.select_in_orders(mllm_image(state), state["expression"], asked, config.allow_none,
                                                  config.crs_permutations)
            if asked is not candidates:  # asked in the MLLM's frame: the answer is the detector's boxes
                selection = replace(selection, candidates=candidates)
            update["selection"] = selection
            if selection.unread:
                text = selection.text if len(selection.text) <= 80 else selection.text[:80] + "..."
                update["fallbacks"] = [f"the CRS answer {text!r} names no option: the evaluators' zero box"]
            elif selection.text is None and selection.option_mass is not None and selection.option_mass < MIN_OPTION_MASS:
                update["fallbacks"] = [
                    f"the option letters had only {selection.option_mass:.0%} of the MLLM's next-token probability "
                    "(it wanted to write something else); the choice among them stands"
                ]
        except ModelOutputError as error:
            # No option could be read: the specialist's best candidate answers instead.
            update.update(selection=None, answer=candidates[:1])
            update["fallbacks"] = [f"the MLLM's CRS answer was unusable ({error}): used the top candidate"]
        return update

    def count_targets(state: AgentState) -> dict[str, Any]:
        candidates = count_candidates(state.get("path"), state, policy, config.crs_top_k)
        if not len(candidates) or (config.count_mode == "both" and stated_count(state.get("expected_count"))):
            return {}  # nothing to choose from, or the text's stated number decides: no pass spent
        try:
            counts = backends.count(mllm_image(state), state["expression"], between_frames(state, candidates, True))
        except ModelOutputError as error:
            return {"fallbacks": [f"the MLLM's count was unusable ({error}): counted from the text"]}
        return {"count_probabilities": [float(p) for p in counts]}

    def finish(state: AgentState) -> dict[str, Any]:
        finished = finish_answer(state, policy)
        update = {"detections": finished.detections, "decision_threshold": finished.threshold}
        if finished.count_source == "image":
            update["count_source"] = "image"
        return update

    def verify(state: AgentState, candidates: Detections) -> dict[str, Any]:
        try:
            return {"verification": backends.verify(mllm_image(state), state["expression"],
                                                    between_frames(state, candidates, True))}
        except ModelOutputError as error:
            return {"answer": candidates[:1],
                    "fallbacks": [f"the MLLM's verification was unusable ({error}): used the top candidate"]}

    steps = dict(extract_target=extract_target, route=route, specialist=specialist, mllm=mllm_ground, crs=crs,
                 count_targets=count_targets, finish=finish)
    return {name: timed(name, step) for name, step in steps.items()}
