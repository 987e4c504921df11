"""The steps of the method, each a function of the state and the run's ``Runtime[Context]``.

As in LangGraph's templates, a node reads what it needs from the state, the settings and the
models from ``runtime.context`` (``agent.context.Context``), and returns only the keys it
changes; ``timed`` records its name in the trace and its wall time in ``timings``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from typing import Any, Callable

from langgraph.runtime import Runtime

from tools import boxes as box_ops
from tools.detections import Detections
from tools.errors import ModelOutputError
from tools.extraction.count import read_count
from tools.mllm.selection import MIN_OPTION_MASS
from tools.routing import count_instances, crs_candidates, difficulty_level

from .context import Context
from .finishing import count_candidates, stated_count
from .finishing import finish as finish_answer
from .state import AgentState

Update = dict[str, Any]
Node = Callable[[AgentState, Runtime[Context]], Update]
# The detector's boxes for the CRS expression a result keeps (before top-k and NMS): the authors'
# detector files hold ten, and their positive evaluator maps letters A-D onto the first four.
RECORDED_PROPOSALS = 10


def timed(node: Node) -> Node:
    @functools.wraps(node)
    def run(state: AgentState, runtime: Runtime[Context]) -> Update:
        start = time.perf_counter()
        update = node(state, runtime)
        update.setdefault("trace", []).insert(0, node.__name__)
        update["timings"] = {**update.get("timings", {}), node.__name__: time.perf_counter() - start}
        return update

    return run


# ---------------------------------------------------------------- what the nodes share

def focus_span(state: AgentState, context: Context) -> tuple[int, int] | None:
    return state.get("target_span") if context.config.focus else None


def crs_span(state: AgentState, context: Context) -> tuple[int, int] | None:
    return state.get("target_span") if context.config.crs_focus else None


def target_words(state: AgentState, context: Context) -> str | None:
    """The target as routing and the focus prompt name it."""
    return state.get("target_answer") if context.config.profile_rules.verbatim_target else state.get("target")


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


def detect(state: AgentState, context: Context, text: str, span: tuple[int, int] | None) -> Detections:
    return context.detector.detect_many(state["image"], [(text, span)])[0]


# ---------------------------------------------------------------- the nodes

@timed
def extract_target(state: AgentState, runtime: Runtime[Context]) -> Update:
    target, fallback = runtime.context.extractor.extract(state["expression"], state.get("given_target"))
    update: Update = {"target": target.phrase, "target_span": target.span, "target_source": target.source}
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


@timed
def route(state: AgentState, runtime: Runtime[Context]) -> Update:
    context = runtime.context
    queries = [(target_words(state, context), None)]
    if context.config.strategy == "sfa+crs":
        # Both paths after routing need the full expression too: one batched detector call
        # (the image backbone runs once for both texts); the detector adapter keeps the answers.
        queries.append((state["expression"], focus_span(state, context)))
        queries.append((state["expression"], crs_span(state, context)))
    detections = context.detector.detect_many(state["image"], queries)[0]
    count = count_instances(detections, context.config.routing)
    return {"instance_count": count, "level": difficulty_level(count)}


@timed
def specialist(state: AgentState, runtime: Runtime[Context]) -> Update:
    detections = detect(state, runtime.context, state["expression"], focus_span(state, runtime.context))
    return {"path": "specialist", "answer": detections.sorted()}


@timed
def mllm(state: AgentState, runtime: Runtime[Context]) -> Update:
    context, config = runtime.context, runtime.context.config
    focus = target_words(state, context) if config.focus else None
    update: Update = {"path": "mllm"}
    try:
        # In the order the model wrote them: its first box is its answer.
        written = context.mllm.ground(mllm_image(state), state["expression"], focus)
        answer = between_frames(state, written, False)
    except ModelOutputError as error:
        answer = Detections.empty()
        update["fallbacks"] = [f"the MLLM's answer was unusable: {error}"]
    update["answer"] = answer
    fallback = config.profile_rules.grounding_fallback and config.uses_detector and not config.allow_none
    if len(answer) == 0 and fallback:
        # The MLLM wrote no usable box: the specialist's best box is the documented fallback.
        update["answer"] = detect(state, context, state["expression"], focus_span(state, context)).sorted()[:1]
        note = "the MLLM gave no usable box: used the specialist's top box"
        update["fallbacks"] = update.get("fallbacks", []) + [note]
    return update


@timed
def crs(state: AgentState, runtime: Runtime[Context]) -> Update:
    context, config = runtime.context, runtime.context.config
    detections = detect(state, context, state["expression"], crs_span(state, context))
    candidates = crs_candidates(detections, state["image"].size, config.crs_rule,
                                drop_empty=config.profile_rules.drop_empty_candidates)
    update: Update = {"path": "crs", "candidates": candidates,
                      "proposals": detections.sorted()[:RECORDED_PROPOSALS]}
    if config.crs_mode == "verify":
        return {**update, **verify(state, context, candidates)}
    try:
        asked = between_frames(state, candidates, True)
        selection = context.mllm.select_in_orders(mllm_image(state), state["expression"], asked, config.allow_none,
                                                  config.crs_permutations)
    except ModelOutputError as error:
        # No option could be read: the specialist's best candidate answers instead.
        return {**update, "selection": None, "answer": candidates[:1],
                "fallbacks": [f"the MLLM's CRS answer was unusable ({error}): used the top candidate"]}
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
    return update


def verify(state: AgentState, context: Context, candidates: Detections) -> Update:
    try:
        asked = between_frames(state, candidates, True)
        return {"verification": context.mllm.verify(mllm_image(state), state["expression"], asked)}
    except ModelOutputError as error:
        return {"answer": candidates[:1],
                "fallbacks": [f"the MLLM's verification was unusable ({error}): used the top candidate"]}


@timed
def count_targets(state: AgentState, runtime: Runtime[Context]) -> Update:
    context, config = runtime.context, runtime.context.config
    candidates = count_candidates(state.get("path"), state, context.policy, config.crs_top_k)
    if not len(candidates) or (config.count_mode == "both" and stated_count(state.get("expected_count"))):
        return {}  # nothing to choose from, or the text's stated number decides: no pass spent
    try:
        counts = context.mllm.count(mllm_image(state), state["expression"], between_frames(state, candidates, True))
    except ModelOutputError as error:
        return {"fallbacks": [f"the MLLM's count was unusable ({error}): counted from the text"]}
    return {"count_probabilities": [float(p) for p in counts]}


@timed
def finish(state: AgentState, runtime: Runtime[Context]) -> Update:
    finished = finish_answer(state, runtime.context.policy)
    update = {"detections": finished.detections, "decision_threshold": finished.threshold}
    if finished.count_source == "image":
        update["count_source"] = "image"
    return update


NODES: dict[str, Node] = {node.__name__: node for node in
                          (extract_target, route, specialist, mllm, crs, count_targets, finish)}
