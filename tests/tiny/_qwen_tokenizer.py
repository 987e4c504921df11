"""Offline stand-in for the Qwen2 byte-level BPE tokenizer, shared by the tiny VL checkpoints.

The real tokenizer (151k tokens) cannot be downloaded in the test environment, so we train a
small byte-level BPE in memory with the *same* pre-tokenizer regex, normaliser and decoder as
``Qwen2Tokenizer`` and wrap it in that class. What matters for the tests is preserved:

* every byte is a token, so any text (digits, JSON punctuation, unicode) encodes and
  ``decode(encode(text)) == text``;
* ``"A"`` .. ``"Z"`` and ``" A"`` .. ``" Z"`` are single tokens, as in real Qwen2 vocabularies, and so
  are "yes" and "no" in the spellings a reply starts with, the digits and "more" (count answers);
* the Qwen special tokens exist as added special tokens, in the real relative order;
* pad = ``<|endoftext|>``, eos = ``<|im_end|>``, and a Qwen2-VL chat template.
"""

from __future__ import annotations

import json
import string

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

# Same order as the real checkpoints (151643..151656) so relative ids look familiar.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Verbatim chat template of Qwen/Qwen2-VL-7B-Instruct (Qwen2.5-VL ships the same one).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Small corpus in the style of agent prompts/answers; it only shapes which merges exist
# (shorter sequences => faster tests), correctness never depends on it.
_CORPUS = [
    "You are a helpful assistant.",
    "system user assistant",
    "Describe the image. What is shown in the picture?",
    "Answer with a single letter. The answer is A. The answer is B.",
    "Answer with yes or no. Yes. No. yes no Yes No",
    "How many? 0, 1, 2, 3, 4, 5 or more. More than five.",
    'Click the button. {"action": "click", "x": 120, "y": 45}',
    '{"action": "type", "text": "hello world"} {"action": "scroll", "direction": "down"}',
    '[{"bbox_2d": [10, 20, 300, 400], "label": "the red button"}]',
    "click(x=0.25, y=0.75) point (123, 456) box [(10,20),(30,40)]",
    "The quick brown fox jumps over the lazy dog. Thank you, done.",
    "0123456789 +-*/=<>()[]{}:;,.!?'\"@#$%^&_|\\~`",
] * 4


def _train_backend(vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with Qwen2's exact pre-tokenisation pipeline."""
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # The alphabet seeds all 256 byte symbols, so nothing is ever out-of-vocabulary.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok


def build_qwen_tokenizer(vocab_size: int = 512, added_tokens: tuple[str, ...] = (),
                         named_tokens: dict[str, str] | None = None) -> Qwen2Tokenizer:
    """Return a ``Qwen2Tokenizer`` (v5: the tokenizers-backed class) built fully offline.

    Deterministic (fixed corpus). ``vocab_size`` is an upper bound for the BPE part (the tiny
    corpus yields ~470 tokens); the 14 special tokens are appended after it, then ``added_tokens``
    (a derived model's own special tokens). ``named_tokens`` (``{"start_image_token": "<img>"}``)
    become tokenizer attributes, as ``extra_special_tokens`` in a ``tokenizer_config.json``.
    """
    backend = _train_backend(vocab_size)
    vocab = dict(backend.get_vocab())
    merges = _merges_of(backend)

    # Guarantee " A".." Z" are single tokens like in real Qwen2 ("Ġ" is the byte-level space;
    # "A".."Z" alone are byte tokens already). Appended merges have the lowest priority, so
    # they never change how the trained merges split other words.
    for letter in string.ascii_uppercase:
        piece = "\u0120" + letter
        if piece not in vocab:
            vocab[piece] = len(vocab)
            merges.append(("\u0120", letter))

    specials = QWEN_SPECIAL_TOKENS + [token for token in added_tokens if token not in QWEN_SPECIAL_TOKENS]
    for token in specials:
        vocab[token] = len(vocab)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=named_tokens or [t for t in specials if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
        padding_side="left",
    )
    if named_tokens:  # the attributes took the extra_special_tokens slot: add the specials by list
        tokenizer.add_tokens([t for t in specials if t not in ("<|endoftext|>", "<|im_end|>")], special_tokens=True)
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def _merges_of(backend: Tokenizer) -> list[tuple[str, str]]:
    """Merges of a trained BPE, read back from its JSON (the python API does not expose them)."""
    raw = json.loads(backend.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw]
