"""How many targets the image holds: the MLLM's count over the candidates, GREx's count head.

GREx (``seeds/grex-generalized-referring-expressions.txt``, Table 5) predicts how many objects an
expression refers to (0, 1, ..., 5, or more) and outputs that many boxes: 61.90 Pr@(F1=1) / 56.37
N-acc against 58.24 / 32.03 for thresholding. Here the MLLM answers the question of
``prompts/count_targets.txt`` (the expression and the candidate boxes in its own box language)
in one forward pass, and the probability of each answer in ``COUNT_ANSWERS`` is read from its
next-token distribution, every one-token spelling of an answer counted (ids from the tokenizer,
as the option letters are). ``image_count`` turns the probabilities into the decision.

Nothing here needs torch to import; the logit readers import it when called.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from prompts import render_prompt

from ..detections import Detections
from ..errors import ModelOutputError
from .crs import spelling_token_ids
from .families import QWEN2_VL, ModelFamily

if TYPE_CHECKING:
    import torch

MORE = "more"
COUNT_ANSWERS = ("0", "1", "2", "3", "4", "5", MORE)
ZERO = 0
PROMPT = "count_targets"


def count_prompt(expression: str, candidates: Detections, image_size: tuple[int, int], *,
                 family: ModelFamily = QWEN2_VL, input_size: tuple[int, int] | None = None,
                 prompts_dir: str | None = None) -> str:
    """The count question about ``expression`` with the ``candidates`` listed in ``family``'s box language."""
    boxes = family.option_boxes(candidates.boxes, image_size, input_size) if len(candidates) else []
    lines = "\n".join(f"- {box}" for box in boxes) or "(none)"
    return render_prompt(PROMPT, prompts_dir, expression=expression, candidates=lines)


def count_token_ids(tokenizer) -> list[list[int]]:
    """For each of ``COUNT_ANSWERS``, the ids of its one-token spellings ("2", " 2", "more", " More", ...)."""
    spellings = [(answer, " " + answer, answer.capitalize(), " " + answer.capitalize()) for answer in COUNT_ANSWERS]
    return spelling_token_ids(tokenizer, spellings, names=COUNT_ANSWERS)


def count_distribution(logits: torch.Tensor, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """The answers' probabilities from next-token ``logits`` (softmax over the answers' log-sum-exps)."""
    from .crs import letter_distribution

    return letter_distribution(logits, ids)


_NUMBER_WORDS = {"zero": 0, "none": 0, "no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_COUNT_IN_TEXT = re.compile(r"(\d+)\s*\+|\b(\d+|more|" + "|".join(_NUMBER_WORDS) + r")\b")


def count_from_text(reply: str) -> np.ndarray:
    """One-hot probabilities of the count a reply's text names (its first number, number word up to
    five, "none", "more"; "5+" and numbers over 5 are "more"); ``ModelOutputError`` when it names none."""
    match = _COUNT_IN_TEXT.search(reply.lower())
    if match is None:
        raise ModelOutputError(f"the model answered {reply.strip()[:80]!r}, which names no count")
    word = match.group(2) or match.group(1) + "+"
    if word == MORE or word.endswith("+"):
        index = COUNT_ANSWERS.index(MORE)
    else:
        number = _NUMBER_WORDS[word] if word in _NUMBER_WORDS else int(word)
        index = COUNT_ANSWERS.index(MORE) if number > 5 else number
    return np.eye(len(COUNT_ANSWERS))[index]


def as_count_probabilities(value: Any, source: str) -> np.ndarray:
    """A plug-in's count answer as probabilities over ``COUNT_ANSWERS``: the probabilities themselves
    (one per answer), or a count (0..5, a larger number or "more")."""
    if isinstance(value, str):
        if value.strip().lower() == MORE:
            return np.eye(len(COUNT_ANSWERS))[-1]
        value = value.strip()
        if not value.isdigit():
            raise ModelOutputError(f"{source} returned the count {value!r:.40}; expected 0..5, a number or 'more'")
        value = int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 0:
            raise ModelOutputError(f"{source} returned a negative count {value}")
        return np.eye(len(COUNT_ANSWERS))[min(int(value), len(COUNT_ANSWERS) - 1)]
    try:
        probabilities = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ModelOutputError(f"{source} must return a count or {len(COUNT_ANSWERS)} probabilities") from None
    total = probabilities.sum() if len(probabilities) == len(COUNT_ANSWERS) else math.nan
    if not math.isfinite(total) or total <= 0 or (probabilities < 0).any():
        raise ModelOutputError(f"{source} must return a count or {len(COUNT_ANSWERS)} probabilities over "
                               f"{', '.join(COUNT_ANSWERS)}, got {probabilities.tolist()!r:.80}")
    return probabilities / total


def image_count(probabilities: Sequence[float], zero_threshold: float | None = None, *,
                allow_zero: bool = True) -> int | str:
    """The count decided from the answers' ``probabilities``: 0 (no target) when it is the most probable
    answer, or, with ``zero_threshold``, when its probability reaches that; otherwise the most probable
    of 1..5 and "more" (``MORE``). ``allow_zero=False`` (a plain REC query always has a target) never
    gives 0."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if allow_zero:
        zero = (probabilities[ZERO] >= zero_threshold if zero_threshold is not None
                else int(np.argmax(probabilities)) == ZERO)
        if zero:
            return 0
    best = int(np.argmax(probabilities[1:])) + 1
    return MORE if COUNT_ANSWERS[best] == MORE else best
