"""Small byte-level BPE vocabularies trained offline, for the CLIP and BART tokenizers of the
tiny OWLv2 and Florence-2 checkpoints (the real ones cannot be downloaded here).

Every byte is in the vocabulary (with and without CLIP's ``</w>`` end-of-word suffix), so any
text encodes; the corpus only decides which merges exist.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE

_CORPUS = [
    "a photo of a cat", "the red box on the left", "the man and the dog", "the green box", "a white box",
    "Locate the phrases in the caption: the red car", "Locate the red box in the image.",
] * 4


def byte_bpe(vocab_size: int = 400, end_of_word_suffix: str | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a byte-level BPE; ``end_of_word_suffix="</w>"`` gives CLIP's layout."""
    tokenizer = Tokenizer(BPE(end_of_word_suffix=end_of_word_suffix) if end_of_word_suffix else BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    options = {"end_of_word_suffix": end_of_word_suffix} if end_of_word_suffix else {}
    tokenizer.train_from_iterator(_CORPUS, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False, **options))
    model = json.loads(tokenizer.to_str())["model"]
    vocab = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for symbol in alphabet:
        for piece in (symbol, symbol + end_of_word_suffix) if end_of_word_suffix else (symbol,):
            vocab.setdefault(piece, len(vocab))
    return vocab, merges
