"""Per-candidate verification: "is this box what the expression describes?", answered yes or no.

The alternative to letter selection for generalized REC (``crs_mode="verify"``): each
candidate is judged on its own, so zero, one or several can pass a threshold. The question
(``prompts/crs_verify.txt``) puts the image and the expression first and the candidate's box
(in the MLLM family's own box language) last, so every candidate's question shares the same
prefix. ``p(yes)`` is read from the first answer token: the probability of every spelling of
"yes" against every spelling of "no", derived from the tokenizer.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from prompts import render_prompt

from ..errors import ModelOutputError
from ..text import bare_token
from .crs import spelling_token_ids

if TYPE_CHECKING:
    import torch

ANSWERS = ("yes", "no")
# The spellings of each answer a model may start its reply with (one token each in real vocabularies).
SPELLINGS = tuple((word, word.capitalize(), " " + word, " " + word.capitalize()) for word in ANSWERS)


def verify_prompt(expression: str, box: str, prompts_dir: str | None = None) -> str:
    """The yes/no question for one candidate whose box is written ``box``."""
    return render_prompt("crs_verify", prompts_dir, expression=expression, box=box)


def yes_no_token_ids(tokenizer) -> list[list[int]]:
    """``[yes ids, no ids]``: every single-token spelling of each answer in this vocabulary."""
    return spelling_token_ids(tokenizer, SPELLINGS, names=ANSWERS)


def yes_probability(logits: "torch.Tensor", ids: Sequence[Sequence[int]]) -> float:
    """``p(yes)`` from next-token ``logits``: the log-sum-exp of each answer's spellings, softmaxed over the two."""
    import torch

    logits = logits.detach().to(torch.float64)
    yes, no = (torch.logsumexp(logits[list(spellings)], dim=0) for spellings in ids)
    return float(torch.sigmoid(yes - no))


def yes_probability_from_top(top_logprobs: Sequence[tuple[str, float]]) -> float | None:
    """``p(yes)`` from a server's ``(token, logprob)`` top list; ``None`` when neither answer is listed."""
    mass = {answer: 0.0 for answer in ANSWERS}
    for token, logprob in top_logprobs:
        word = bare_token(token).lower()
        if word in mass:
            mass[word] += math.exp(logprob)
    total = sum(mass.values())
    return None if total == 0 else mass["yes"] / total


def parse_yes_no(reply: str) -> float:
    """1.0 for a reply that says yes, 0.0 for no; ``ModelOutputError`` for anything else."""
    match = re.search(r"\b(yes|no)\b", reply or "", flags=re.IGNORECASE)
    if match is None:
        raise ModelOutputError(f"the model answered {reply.strip()[:80]!r}, neither yes nor no")
    return 1.0 if match.group(1).lower() == "yes" else 0.0


def as_yes_probabilities(value, count: int, source: str) -> np.ndarray:
    """A backend's verification answer as ``count`` probabilities in [0, 1]."""
    try:
        probabilities = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ModelOutputError(f"{source} must return {count} probabilities, got {value!r:.80}") from None
    if len(probabilities) != count or not np.all((probabilities >= 0) & (probabilities <= 1)):
        raise ModelOutputError(f"{source} must return {count} probabilities in [0, 1], got {probabilities.tolist()}")
    return probabilities
