"""Multimodal LLM backends: the ``MLLM`` protocol and its implementations."""

from .base import MLLM
from .families import (
    FAMILIES,
    QWEN2_5_VL,
    QWEN2_VL,
    QWEN3_VL,
    BoxConfidence,
    ParsedAnswer,
    QwenFamily,
    box_token_confidence,
    family_for_model,
    get_family,
)
from .openai_compat import ChatCompletionsClient, OpenAICompatibleMLLM
from .qwen import GroundingOutput, QwenVL
from .selection import Selection

__all__ = [
    "FAMILIES",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "QWEN3_VL",
    "MLLM",
    "BoxConfidence",
    "ChatCompletionsClient",
    "GroundingOutput",
    "OpenAICompatibleMLLM",
    "ParsedAnswer",
    "QwenFamily",
    "QwenVL",
    "Selection",
    "box_token_confidence",
    "family_for_model",
    "get_family",
]
