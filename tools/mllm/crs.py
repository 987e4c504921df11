"""Candidate Region Selection: the multiple-choice prompt and option probabilities.

Shared by every MLLM backend so the option list reads the same to every model.
"""

from __future__ import annotations

import string
from typing import Sequence

import numpy as np
import torch

from prompts import render_prompt

from .. import boxes as box_ops
from ..detections import Detections
from ..errors import UserInputError

LETTERS = string.ascii_uppercase
NONE_OPTION = "None"


def option_letters(num_candidates: int, allow_none: bool = False) -> list[str]:
    """``A, B, C, ...`` for the candidates, plus one more letter for "None" when allowed."""
    count = num_candidates + int(allow_none)
    if count > len(LETTERS):
        raise UserInputError(f"CRS offers at most {len(LETTERS)} options, got {count}")
    return list(LETTERS[:count])


def format_box(box_qwen: Sequence[int]) -> str:
    """The Qwen2-VL box text ``(x1,y1),(x2,y2)`` for 0..1000 integer coordinates."""
    x1, y1, x2, y2 = (int(v) for v in box_qwen)
    return f"({x1},{y1}),({x2},{y2})"


def crs_prompt(
    expression: str,
    candidates: Detections,
    image_size: tuple[int, int],
    allow_none: bool = False,
    *,
    prompts_dir: str | None = None,
) -> tuple[str, list[str]]:
    """The CRS question for ``candidates`` on an image of ``image_size`` ``(w, h)``.

    Returns the prompt text and the option letters, candidates first in their given
    order, then the "None" option when ``allow_none``.
    """
    letters = option_letters(len(candidates), allow_none)
    coords = box_ops.pixels_to_qwen(candidates.boxes, *image_size)
    lines = [f"{letter}. {format_box(box)}" for letter, box in zip(letters, coords)]
    return _question("crs_select", expression, lines, letters, allow_none, prompts_dir), letters


def crs_marks_prompt(
    expression: str, num_candidates: int, allow_none: bool = False, *, prompts_dir: str | None = None
) -> tuple[str, list[str]]:
    """The CRS question when the candidates are drawn on the image as lettered marks
    (Set-of-Mark style, for models that cannot read coordinates): options are letters only."""
    letters = option_letters(num_candidates, allow_none)
    lines = list(letters[:num_candidates])
    return _question("crs_select_marks", expression, lines, letters, allow_none, prompts_dir), letters


def _question(template, expression, candidate_lines, letters, allow_none, prompts_dir) -> str:
    lines = list(candidate_lines)
    if allow_none:
        lines.append(f"{letters[-1]}. {NONE_OPTION}")
    none_instruction = render_prompt("crs_none_instruction", prompts_dir) + "\n" if allow_none else ""
    return render_prompt(
        template, prompts_dir, expression=expression, options="\n".join(lines), none_instruction=none_instruction
    )


def letter_token_ids(tokenizer, letters: Sequence[str]) -> list[list[int]]:
    """For each letter, every vocabulary id that spells it as one token (``"A"``, ``" A"``, ...).

    Derived from the tokenizer, never hard-coded, so any vocabulary works. A letter
    with no single-token spelling, or an id shared by two letters, is an error.
    """
    ids_per_letter: list[list[int]] = []
    owner: dict[int, str] = {}
    for letter in letters:
        ids: list[int] = []
        for spelling in (letter, " " + letter):
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        if not ids:
            raise ValueError(f"the tokenizer has no single token for option letter {letter!r}")
        for token_id in ids:
            if owner.setdefault(token_id, letter) != letter:
                raise ValueError(f"token id {token_id} spells both {owner[token_id]!r} and {letter!r}")
        ids_per_letter.append(ids)
    return ids_per_letter


def option_probabilities(logits: torch.Tensor, ids_per_letter: Sequence[Sequence[int]]) -> np.ndarray:
    """Softmax over the options from next-token ``logits`` of shape ``(vocab,)``.

    An option's logit is the log-sum-exp over its spellings, so the mass of ``"A"``
    and ``" A"`` both counts for A. The result sums to 1.
    """
    logits = logits.detach().to(torch.float64)
    option_logits = torch.stack([torch.logsumexp(logits[list(ids)], dim=0) for ids in ids_per_letter])
    return torch.softmax(option_logits, dim=0).cpu().numpy()
