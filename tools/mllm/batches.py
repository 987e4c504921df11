"""Checks and chunking of the batched calls of the local MLLMs."""

from __future__ import annotations

from typing import Iterator, Sequence

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


def chunks(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    """``indices`` in consecutive runs of ``size`` (at least 1)."""
    indices, size = list(indices), max(1, size)
    for start in range(0, len(indices), size):
        yield indices[start : start + size]
