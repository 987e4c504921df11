"""Multimodal LLM backends: the ``MLLM`` protocol and its implementations."""

from ..lazy import lazy_exports

_EXPORTS = {
    "MLLM": ".base",
    "FAMILIES": ".families",
    "QWEN2_5_VL": ".families",
    "QWEN2_VL": ".families",
    "QWEN3_VL": ".families",
    "BoxConfidence": ".families",
    "ParsedAnswer": ".families",
    "ModelFamily": ".families",
    "box_token_confidence": ".families",
    "family_for_model": ".families",
    "get_family": ".families",
    "ChatCompletionsClient": "..openai_client",
    "OpenAICompatibleMLLM": ".openai_compat",
    "RetryPolicy": "..openai_client",
    "GroundingOutput": ".local",
    "INTERNVL": ".families",
    "InternVL": ".internvl",
    "LocalVLM": ".local",
    "load_local_mllm": ".auto",
    "QwenVL": ".qwen",
    "Selection": ".selection",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
