"""What a query's nodes read besides its state: the settings and the models, through their
adapters (LangGraph's ``context_schema``; a node gets it as ``runtime.context``)."""

from __future__ import annotations

from dataclasses import dataclass

from .adapters import ExtractorAdapter, MLLMAdapter, QueryDetector
from .configuration import Configuration
from .finishing import FinishPolicy


@dataclass(frozen=True)
class Context:
    """One query's run: ``config`` (the agent's settings), the models it may call, and the
    finishing policy those settings make. ``detector`` is this query's own, so that a text asked
    twice (routing, then the path after it) is detected once."""

    config: Configuration
    detector: QueryDetector
    mllm: MLLMAdapter
    extractor: ExtractorAdapter
    policy: FinishPolicy
