"""The LangGraph state machine: nodes and edges only.

    START -> [extract_target] -> specialist | mllm | crs          (plain strategies)
    START -> extract_target -> route -> specialist   (Level 1)
                                     -> mllm         (Level 2, "sfa")
                                     -> crs          (Level 2, "sfa+crs")
    specialist | mllm | crs -> [count_targets] -> finish -> END

Each strategy's graph holds only the nodes it can visit.
"""

from __future__ import annotations

import functools

from langgraph.graph import END, START, StateGraph

from .configuration import Configuration
from .context import Context
from .nodes import NODES
from .state import AgentInput, AgentState

LEVEL_2_PATH = {"sfa": "mllm", "sfa+crs": "crs"}


def build_graph(config: Configuration):
    """The compiled graph of ``config``'s strategy: built once per shape and shared by every agent
    and settings variant (the settings and models reach the nodes as the run's ``Context``)."""
    return _compiled(config.strategy, config.uses_extractor, config.counts_from_image)


@functools.lru_cache(maxsize=None)
def _compiled(strategy: str, uses_extractor: bool, counts_from_image: bool):
    routed = strategy in LEVEL_2_PATH
    paths = ["specialist", LEVEL_2_PATH[strategy]] if routed else [strategy]
    first = "route" if routed else paths[0]

    graph = StateGraph(AgentState, context_schema=Context, input_schema=AgentInput)
    for name in (["extract_target"] if uses_extractor else []) + (["route"] if routed else []) + paths:
        graph.add_node(name, NODES[name])
    graph.add_node("finish", NODES["finish"])
    last = "finish"
    if counts_from_image:  # the MLLM counts the targets over the path's boxes first
        graph.add_node("count_targets", NODES["count_targets"])
        graph.add_edge("count_targets", "finish")
        last = "count_targets"
    if uses_extractor:
        graph.add_edge(START, "extract_target")
        graph.add_edge("extract_target", first)
    else:
        graph.add_edge(START, first)
    if routed:
        graph.add_conditional_edges("route", _by_level(paths), {path: path for path in paths})
    for path in paths:
        graph.add_edge(path, last)
    graph.add_edge("finish", END)
    return graph.compile()


def _by_level(paths: list[str]):
    fast, slow = paths

    def next_step(state: AgentState) -> str:
        return fast if state["level"] == 1 else slow

    return next_step


def mermaid(config: Configuration) -> str:
    """The graph of ``config`` as a Mermaid diagram (no models are loaded)."""
    return build_graph(config).get_graph().draw_mermaid()
