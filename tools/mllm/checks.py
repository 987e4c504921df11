"""Checks of the inputs of the local MLLMs' batched calls."""

from __future__ import annotations

from typing import Sequence

from ..errors import UserInputError


def checked_text(text: str, what: str) -> str:
    """``text`` itself; a ``UserInputError`` when it is empty."""
    if not isinstance(text, str) or not text.strip():
        raise UserInputError(f"the {what} is empty")
    return text


def check_lengths(**sequences: Sequence) -> None:
    """Refuse batch inputs of different lengths, naming each."""
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise UserInputError("batch inputs differ in length: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))

