"""Token counts of the real prompts and typical answers, with the real vocabularies.

Qwen2 (the LLM of every Qwen VL) and bert-base-uncased (the detector's text side) come from
the fixtures in ``tests/fixtures/vocab`` (``tests/real_vocab.py``): Qwen2-VL's BPE with its
special tokens and chat template, and bert-base-uncased's WordPiece list. Counts are exact
for those vocabularies (Qwen2.5-VL and Qwen3-VL share Qwen2's).

Prompts are the library's own (``tools.mllm``, ``tools.extraction``), wrapped in the Qwen2-VL
chat template as ``QwenVL`` sends them.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from tools.mllm.families import QWEN2_5_VL, QWEN2_VL, ModelFamily

IMAGE_PAD = "<|image_pad|>"

# Typical greedy answers of each family to its grounding prompt, stop token included.
# Qwen2-VL writes 0..1000 integers; Qwen2.5-VL a JSON list in pixels of the resized input.
TYPICAL_GROUNDING_ANSWERS = {
    QWEN2_VL.name: "<|box_start|>(123,456),(789,999)<|box_end|><|im_end|>",
    QWEN2_5_VL.name: '```json\n[\n\t{"bbox_2d": [79, 217, 508, 475], "label": "the long snowboard"}\n]\n```<|im_end|>',
}


@lru_cache(maxsize=1)
def qwen_tokenizer():
    """The real Qwen2-VL tokenizer (unpacked once into a temporary folder)."""
    from transformers import AutoTokenizer

    from tests.real_vocab import unpack_qwen2_vl_tokenizer

    folder = unpack_qwen2_vl_tokenizer(Path(tempfile.mkdtemp(prefix="rex-qwen2-vl-tokenizer-")))
    return AutoTokenizer.from_pretrained(folder)


@lru_cache(maxsize=1)
def _bert_tokenizer():
    from tests.real_vocab import bert_tokenizer

    return bert_tokenizer()


def qwen_token_count(text: str) -> int:
    """Tokens of ``text`` (special tokens written out, e.g. ``<|im_end|>``) for Qwen2-VL."""
    return len(qwen_tokenizer().encode(text, add_special_tokens=False))


def bert_token_count(caption: str) -> int:
    """Tokens of a detector caption for bert-base-uncased, ``[CLS]`` and ``[SEP]`` included."""
    return len(_bert_tokenizer()(caption)["input_ids"])


def detector_caption(text: str) -> str:
    """The caption Grounding DINO sees: ``text`` stripped and ending with "." (as the detector does)."""
    from tools.detectors.base import caption_and_focus_tokens

    caption, _ = caption_and_focus_tokens(text, None, _bert_tokenizer(), max_tokens=10**6)
    return caption


def chat_text(prompt: str, with_image: bool) -> str:
    """The full model input text of a one-turn chat, as ``QwenVL`` builds it.

    With an image, the user turn is ``[image, text]`` (one ``<|image_pad|>`` placeholder that
    the processor expands to the image's tokens); without, a plain text turn as in
    ``QwenVL.chat`` (target extraction).
    """
    content = [{"type": "image"}, {"type": "text", "text": prompt}] if with_image else prompt
    return qwen_tokenizer().apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def cached_prefix_token_count(prompt: str, fixed_prefix: str) -> int:
    """Tokens of ``prompt``'s chat input that ``QwenVL`` serves from the KV cache of ``fixed_prefix``:
    those before the prefix's last token (which may merge with what follows)."""
    text = chat_text(prompt, with_image=False)
    end = text.index(fixed_prefix) + len(fixed_prefix)
    return qwen_token_count(text[:end]) - 1


def prompt_token_count(prompt: str, image_tokens: int = 0) -> int:
    """Input tokens of ``prompt`` in a chat turn, with one image of ``image_tokens`` tokens if > 0."""
    text = chat_text(prompt, with_image=image_tokens > 0)
    return qwen_token_count(text) + (image_tokens - text.count(IMAGE_PAD) if image_tokens else 0)


def typical_answer(family: ModelFamily) -> str:
    """A typical grounding answer of ``family``, for the decode steps of direct grounding."""
    return TYPICAL_GROUNDING_ANSWERS[family.name]
