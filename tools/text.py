"""Checks and cleaning of the text users send: expressions and the character spans inside them.

Light on purpose: the command line checks an expression before anything heavy loads.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import UserInputError

Span = tuple[int, int]  # [start, end) character offsets into a text
# Code points that are not text: control characters and lone surrogates (valid in JSON as
# "\ud800", unencodable as UTF-8, so every tokenizer fails on them).
NOT_TEXT = ("Cc", "Cs")
# The longest expression any entry point takes (Python, command line, datasets, server, training
# samples): far above any benchmark's, far below what makes a model allocate gigabytes.
MAX_EXPRESSION_CHARS = 2000
# Text that a chat template, processor or tokenizer gives meaning to wherever it appears: the
# Qwen families' control tokens (<|im_end|>, <|image_pad|>, <|box_start|>, ...), and every
# angle-bracket tag, which covers InternVL's and LLaMA-Factory's placeholders (<IMG_CONTEXT>,
# <img>, <image>, <video>, <audio>), Florence-2's task, region and location tokens (<OD>, <od>,
# <ocr>, <poly>, <sep>, <loc_12>), the families' tags (<ref>, <box>, <think>, ...) and BART's
# special tokens (</s>, <pad>); then BERT's ([SEP], [CLS], ...). In user text they would be read
# as the real tokens. "x < y" and "<3" are no tags.
CONTROL_MARKUP = re.compile(
    r"<\|[^<>|\s]{1,64}\|>"
    r"|</?[A-Za-z_][A-Za-z0-9_]{0,63}>"
    r"|\[(?:CLS|SEP|PAD|MASK|UNK)\]"
)
# One look-alike per opening character, kept by NFKC (the normalisation tokenizers apply), so
# the markup reads as plain text and the text keeps its length.
LOOKALIKE = {"<": "\u2039", "[": "\u2045"}  # "‹", "⁅"


def check_text(text: str, focus: Span | None = None) -> None:
    """Raise ``UserInputError`` for an empty text or a focus span that is not inside it."""
    if not isinstance(text, str) or not text.strip():
        raise UserInputError("the expression is empty")
    if focus is None:
        return
    try:
        start, end = (int(v) for v in focus)
    except (TypeError, ValueError):
        raise UserInputError(f"focus must be a (start, end) pair of ints, got {focus!r}") from None
    if not 0 <= start < end <= len(text):
        raise UserInputError(f"focus span {(start, end)} lies outside the text (length {len(text)}): {text!r}")
    if not text[start:end].strip():
        raise UserInputError(f"focus span {(start, end)} covers only whitespace in {text!r}")


def clean_expression(expression: str, what: str = "expression") -> str:
    """The expression with control characters and lone surrogates replaced by spaces and control
    markup neutralised (``neutralise_markup``), one character for one, so character spans keep
    their meaning. An empty or blank expression, or one over ``MAX_EXPRESSION_CHARS``, is a
    ``UserInputError`` (``what`` names it: "expression", "target", ...)."""
    if not isinstance(expression, str):
        raise UserInputError(f"the {what} must be text, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UserInputError(f"the {what} is {len(expression)} characters long; the limit is "
                             f"{MAX_EXPRESSION_CHARS}")
    cleaned = "".join(" " if unicodedata.category(c) in NOT_TEXT else c for c in expression)
    if not cleaned.strip():
        raise UserInputError(f"the {what} is empty")
    return neutralise_markup(cleaned)


def neutralise_markup(text: str) -> str:
    """``text`` with every ``CONTROL_MARKUP`` match made plain text: its first character becomes
    a look-alike (``<|im_end|>`` -> ``‹|im_end|>``), so no model reads user text as a control
    or image token. Idempotent, and it keeps the text's length."""
    return CONTROL_MARKUP.sub(lambda match: LOOKALIKE[match.group()[0]] + match.group()[1:], text)


def bare_token(token: str) -> str:
    """A token's text without the byte-level BPE and SentencePiece word markers ("Ġ", "▁") that
    some servers leave in their log-probability lists, and without surrounding space."""
    return token.replace("\u0120", " ").replace("\u2581", " ").strip()
