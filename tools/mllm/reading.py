"""How a CRS answer is read: the option letters' probabilities, or the generated text as the
authors' evaluators parse it.

``profile="reference"`` answers CRS as ``CRS/region_selection_{pos,neg}.py`` do: greedy
generation (``GENERATED_ANSWER_TOKENS`` new tokens at most, the checkpoint's logits processors
applied), the text decoded without special tokens, then the parse of the evaluator that scores
that script's answers:

- ``evaluation_CRS_pos.py`` (no "None" option): the text upper-cased; one character is the
  option itself, otherwise the **last** standalone ``A``-``D`` (so a lower-case article "a" is
  ``A``, and ``E`` counts only alone);
- ``evaluation_CRS_neg.py`` (with "None"): the text without full stops; one character is the
  option itself, otherwise the **first** standalone ``A``-``F``, case as written. The script
  fails on a text that names none; REX counts it as naming no option.

A letter that names no offered option is the evaluators' zero box (a miss on positives and
negatives alike).
"""

from __future__ import annotations

import re

READINGS = ("letter", "generated")
GENERATED_ANSWER_TOKENS = 128  # the scripts' max_new_tokens
_LAST_OF_A_TO_D = re.compile(r"\b([A-D])\b")
_FIRST_OF_A_TO_F = re.compile(r"\b[A-F]\b")


def positive_script_letter(text: str) -> str | None:
    """The option ``evaluation_CRS_pos.py`` reads from ``text`` (``None``: none)."""
    option = text.upper()
    if len(option) == 1:
        return option
    matches = _LAST_OF_A_TO_D.findall(option)
    return matches[-1] if matches else None


def negative_script_letter(text: str) -> str | None:
    """The option ``evaluation_CRS_neg.py`` reads from ``text`` (``None``: none, where the script fails)."""
    option = text.replace(".", "")
    if len(option) == 1:
        return option
    match = _FIRST_OF_A_TO_F.search(option)
    return match.group() if match else None


def script_letter(text: str, allow_none: bool) -> str | None:
    """The letter the evaluator of the matching script reads: the negative one when "None" was offered."""
    return negative_script_letter(text) if allow_none else positive_script_letter(text)


def check_reading(reading: str) -> str:
    if reading not in READINGS:
        raise ValueError(f"unknown CRS reading {reading!r}; choose one of {', '.join(READINGS)}")
    return reading
