"""Target extraction for Slow-Fast Adaptation: which object does an expression refer to?

``OpenAIChatExtractor`` asks any OpenAI-compatible chat model, ``LocalChatExtractor``
any local text generator (e.g. the loaded Qwen MLLM), ``HeuristicExtractor`` no model
at all; ``ReferenceExtractor`` sends the authors' messages and reads replies as their script
does (``profile="reference"``). Every extractor's ``extract(expressions)`` returns one phrase
per expression; the model-backed ones also offer ``extract_spans`` with the character span
and whether the model's answer or the heuristic fallback was used.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "align_target": ".align",
    "heuristic_target": ".align",
    "same_noun": ".align",
    "singular_forms": ".align",
    "ExtractedTarget": ".base",
    "TargetExtractor": ".base",
    "ExtractionCache": ".cache",
    "MANY": ".count",
    "parse_count": ".count",
    "read_count": ".count",
    "ChatExtractor": ".extractors",
    "HeuristicExtractor": ".extractors",
    "LocalChatExtractor": ".extractors",
    "OpenAIChatExtractor": ".extractors",
    "TextGenerator": ".extractors",
    "heuristic_extraction": ".extractors",
    "extraction_prompt": ".parsing",
    "parse_answers": ".parsing",
    "parse_targets": ".parsing",
    "ReferenceExtractor": ".reference",
    "find_positive": ".reference",
    "reference_messages": ".reference",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
