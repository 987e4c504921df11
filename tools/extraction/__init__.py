"""Target extraction for Slow-Fast Adaptation: which object does an expression refer to?

``OpenAIChatExtractor`` asks any OpenAI-compatible chat model, ``LocalChatExtractor``
any local text generator (e.g. the loaded Qwen MLLM), ``HeuristicExtractor`` no model
at all. Every extractor's ``extract(expressions)`` returns one phrase per expression;
the model-backed ones also offer ``extract_spans`` with the character span and whether
the model's answer or the heuristic fallback was used.
"""

from .align import align_target, heuristic_target, same_noun, singular_forms
from .base import ExtractedTarget, TargetExtractor
from .cache import ExtractionCache
from .extractors import (
    ChatExtractor,
    HeuristicExtractor,
    LocalChatExtractor,
    OpenAIChatExtractor,
    TextGenerator,
    heuristic_extraction,
)
from .parsing import extraction_prompt, parse_targets

__all__ = [
    "ChatExtractor",
    "ExtractedTarget",
    "ExtractionCache",
    "HeuristicExtractor",
    "LocalChatExtractor",
    "OpenAIChatExtractor",
    "TargetExtractor",
    "TextGenerator",
    "align_target",
    "extraction_prompt",
    "heuristic_extraction",
    "heuristic_target",
    "parse_targets",
    "same_noun",
    "singular_forms",
]
