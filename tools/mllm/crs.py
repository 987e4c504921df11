"""Candidate Region Selection: the multiple-choice prompt and option probabilities.

Shared by every MLLM backend and the instruction-data builder, so the question reads the
same everywhere. The text is the authors' (``CRS/region_selection_{pos,neg}.py``): the
question, one line per option, then ``Answer with the option's letter from the given
choices directly.``, followed on the same line by the "None" sentence when it is offered.
Options are written in the MLLM family's own box language (``ModelFamily.option_boxes``).
"""

from __future__ import annotations

from typing import Sequence

from typing import TYPE_CHECKING

import numpy as np

from prompts import render_prompt

from ..defaults import OPTION_LETTERS
from ..detections import Detections
from ..errors import UserInputError
from .families import QWEN2_VL, ModelFamily

if TYPE_CHECKING:  # the prompt builders run without torch (data builders, the command line)
    import torch

LETTERS = OPTION_LETTERS
NONE_OPTION = "None"


def option_letters(num_candidates: int, allow_none: bool = False) -> list[str]:
    """``A, B, C, ...`` for the candidates, plus one more letter for "None" when allowed."""
    count = num_candidates + int(allow_none)
    if count > len(LETTERS):
        raise UserInputError(f"CRS offers at most {len(LETTERS)} options, got {count}")
    return list(LETTERS[:count])


def crs_prompt(
    expression: str,
    candidates: Detections,
    image_size: tuple[int, int],
    allow_none: bool = False,
    *,
    family: ModelFamily = QWEN2_VL,
    input_size: tuple[int, int] | None = None,
    prompts_dir: str | None = None,
) -> tuple[str, list[str]]:
    """The CRS question for ``candidates`` on an image of ``image_size`` ``(w, h)``.

    Boxes are written as ``family`` writes them (default Qwen2-VL: ``(x1,y1),(x2,y2)`` in
    ``round(v / size * 1000)``, the authors' text); a family answering in pixels of the
    resized input (Qwen2.5-VL) needs that ``input_size``. Returns the prompt text and the
    option letters, candidates first in their given order, then "None" when ``allow_none``.
    """
    letters = option_letters(len(candidates), allow_none)
    boxes = family.option_boxes(candidates.boxes, image_size, input_size) if len(candidates) else []
    lines = [f"{letter}. {box}" for letter, box in zip(letters, boxes)]
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
    none_instruction = render_prompt("crs_none_instruction", prompts_dir) if allow_none else ""
    return render_prompt(
        template, prompts_dir, expression=expression, options="\n".join(lines), none_instruction=none_instruction
    )


def letter_token_ids(tokenizer, letters: Sequence[str]) -> list[list[int]]:
    """For each letter, every vocabulary id that spells it as one token (``"A"``, ``" A"``, ...).

    Derived from the tokenizer, never hard-coded, so any vocabulary works. A letter
    with no single-token spelling, or an id shared by two letters, is an error.
    """
    return spelling_token_ids(tokenizer, [(letter, " " + letter) for letter in letters], names=letters)


def spelling_token_ids(tokenizer, spellings: Sequence[Sequence[str]], *, names: Sequence[str]) -> list[list[int]]:
    """For each answer (``names[i]``), the ids of its ``spellings[i]`` that are one token each.

    An answer with no single-token spelling, or an id shared by two answers, is an error.
    """
    ids_per_answer: list[list[int]] = []
    owner: dict[int, str] = {}
    for name, variants in zip(names, spellings, strict=True):
        ids: list[int] = []
        for spelling in variants:
            encoded = tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(int(encoded[0]))
        if not ids:
            raise ValueError(f"the tokenizer has no single token for the answer {name!r}")
        for token_id in ids:
            if owner.setdefault(token_id, name) != name:
                raise ValueError(f"token id {token_id} spells both {owner[token_id]!r} and {name!r}")
        ids_per_answer.append(ids)
    return ids_per_answer


def letter_distribution(logits: torch.Tensor, ids_per_letter: Sequence[Sequence[int]]) -> np.ndarray:
    """Softmax over the options from next-token ``logits`` of shape ``(vocab,)``.

    An option's logit is the log-sum-exp over its spellings, so the mass of ``"A"``
    and ``" A"`` both counts for A. The result sums to 1.
    """
    import torch

    logits = logits.detach().to(torch.float64)
    option_logits = torch.stack([torch.logsumexp(logits[list(ids)], dim=0) for ids in ids_per_letter])
    return torch.softmax(option_logits, dim=0).cpu().numpy()


def letter_mass(logits: torch.Tensor, ids_per_letter: Sequence[Sequence[int]]) -> float:
    """Total probability of every spelling of every option letter under the full softmax of ``logits``."""
    import torch

    logprobs = torch.log_softmax(logits.detach().to(torch.float64), dim=-1)
    ids = sorted({token for spellings in ids_per_letter for token in spellings})
    return float(torch.logsumexp(logprobs[ids], dim=0).exp())


def bare_letter_logprobs(logits: torch.Tensor, ids_per_letter: Sequence[Sequence[int]]) -> list[float]:
    """Each option's bare letter token (its first spelling, ``"A"``) log-probability under the
    full softmax of ``logits``: what the authors' scripts read (``none_prob_norm``)."""
    import torch

    logprobs = torch.log_softmax(logits.detach().to(torch.float64), dim=-1)
    return [float(logprobs[ids[0]]) for ids in ids_per_letter]
