"""Checks and cleaning of the text users send: expressions and the character spans inside them.

Light on purpose: the command line checks an expression before anything heavy loads.
"""

from __future__ import annotations

import unicodedata

from .errors import UserInputError

Span = tuple[int, int]  # [start, end) character offsets into a text
# Code points that are not text: control characters and lone surrogates (valid in JSON as
# "\ud800", unencodable as UTF-8, so every tokenizer fails on them).
NOT_TEXT = ("Cc", "Cs")


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


def clean_expression(expression: str) -> str:
    """The expression with control characters and lone surrogates replaced by spaces (one for
    one, so character spans keep their meaning); an empty or blank expression is a ``UserInputError``."""
    if not isinstance(expression, str):
        raise UserInputError(f"the expression must be text, got {type(expression).__name__}")
    cleaned = "".join(" " if unicodedata.category(c) in NOT_TEXT else c for c in expression)
    check_text(cleaned)
    return cleaned
