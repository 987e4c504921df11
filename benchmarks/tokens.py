"""Token counts of the real prompts and typical answers, without the real tokenizers.

No real tokenizer can be downloaded here, so counts follow documented rules:

- **Qwen2** (the LLM of every Qwen VL): each special token (``<|im_start|>``, ...) counts 1;
  the rest is split with Qwen2's own pre-tokenizer regex (``PRETOKENIZE_REGEX``, what the
  real tokenizer applies before its BPE merges) and every piece counts 1. That is exact
  for special tokens, digits (Qwen2 writes numbers digit by digit), punctuation and
  whitespace, and for common English words (single tokens of the 151k vocabulary);
  a rare word that BPE splits further is undercounted.
- **BERT** (the detector's text side): the pieces of bert-base-uncased's basic tokenizer
  (words and punctuation) plus ``[CLS]`` and ``[SEP]``; a word that WordPiece splits
  (e.g. "snowboard") is undercounted.

Prompts are the library's own (``tools.mllm``), wrapped in the verbatim Qwen2-VL chat
template (``tests/tiny/_qwen_tokenizer.py``, the same for Qwen2.5-VL).
"""

from __future__ import annotations

import re
from functools import lru_cache

from tokenizers import Regex, pre_tokenizers

from tools.mllm.families import QWEN2_5_VL, QWEN2_VL, QwenFamily

IMAGE_PAD = "<|image_pad|>"
_SPECIAL_TOKEN = re.compile(r"<\|[a-z_]+\|>")

# Typical greedy answers of each family to its grounding prompt, stop token included.
# Qwen2-VL writes 0..1000 integers; Qwen2.5-VL a JSON list in pixels of the resized input.
TYPICAL_GROUNDING_ANSWERS = {
    QWEN2_VL.name: "<|box_start|>(123,456),(789,999)<|box_end|><|im_end|>",
    QWEN2_5_VL.name: '```json\n[\n\t{"bbox_2d": [79, 217, 508, 475], "label": "the long snowboard"}\n]\n```<|im_end|>',
}


@lru_cache(maxsize=1)
def _qwen_pre_tokenizer():
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    return pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)


def qwen_token_count(text: str) -> int:
    """Tokens of ``text`` for a Qwen2 tokenizer, by the rule in the module docstring."""
    count, start = 0, 0
    for special in _SPECIAL_TOKEN.finditer(text):
        count += _plain_qwen_tokens(text[start : special.start()]) + 1
        start = special.end()
    return count + _plain_qwen_tokens(text[start:])


def _plain_qwen_tokens(text: str) -> int:
    return len(_qwen_pre_tokenizer().pre_tokenize_str(text)) if text else 0


def bert_token_count(caption: str) -> int:
    """Tokens of a detector caption for bert-base-uncased, ``[CLS]`` and ``[SEP]`` included."""
    return len(pre_tokenizers.BertPreTokenizer().pre_tokenize_str(caption.lower())) + 2


def detector_caption(text: str) -> str:
    """The caption Grounding DINO sees: ``text`` stripped and ending with "." (as the detector does)."""
    from tools.detectors.base import caption_and_focus_tokens

    caption, _ = caption_and_focus_tokens(text, None, _WholeWordTokenizer(), max_tokens=10**6)
    return caption


class _WholeWordTokenizer:
    """Just enough of a tokenizer for ``caption_and_focus_tokens``: offsets of whitespace-separated words."""

    def __call__(self, text: str, return_offsets_mapping: bool = True) -> dict:
        return {"offset_mapping": [match.span() for match in re.finditer(r"\S+", text)]}


@lru_cache(maxsize=1)
def _chat_tokenizer():
    # The tiny test tokenizer carries the verbatim Qwen2-VL chat template; only its
    # template is used here, never its (tiny) vocabulary.
    from tests.tiny._qwen_tokenizer import build_qwen_tokenizer

    return build_qwen_tokenizer()


def chat_text(prompt: str, with_image: bool) -> str:
    """The full model input text of a one-turn chat, as ``QwenVL`` builds it.

    With an image, the user turn is ``[image, text]`` (one ``<|image_pad|>`` placeholder that
    the processor expands to the image's tokens); without, a plain text turn as in
    ``QwenVL.chat`` (target extraction).
    """
    content = [{"type": "image"}, {"type": "text", "text": prompt}] if with_image else prompt
    return _chat_tokenizer().apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def prompt_token_count(prompt: str, image_tokens: int = 0) -> int:
    """Input tokens of ``prompt`` in a chat turn, with one image of ``image_tokens`` tokens if > 0."""
    text = chat_text(prompt, with_image=image_tokens > 0)
    return qwen_token_count(text) + (image_tokens - text.count(IMAGE_PAD) if image_tokens else 0)


def typical_answer(family: QwenFamily) -> str:
    """A typical grounding answer of ``family``, for the decode steps of direct grounding."""
    return TYPICAL_GROUNDING_ANSWERS[family.name]
