"""``Selection``: the answer of a Candidate Region Selection (CRS) multiple-choice question."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..detections import Detections
from .reading import script_letter

# Below this total next-token probability of the option letters, the model wanted to write
# something other than a letter; the agent notes it in ``Result.fallbacks``.
MIN_OPTION_MASS = 0.5


@dataclass(frozen=True, eq=False)
class Selection:
    """Probabilities over the options offered for ``candidates``.

    ``letters[i]`` names option ``i``; options ``0..len(candidates)-1`` are the
    candidates in order and, when ``allow_none``, the last option is "None" (no box).
    ``probabilities`` has one entry per option and sums to 1.

    Backends that see the whole next-token distribution also fill ``option_mass``, the
    total probability of every spelling of every option letter under the full softmax
    (1 when the model meant to answer with a letter), and ``letter_logprobs``, each
    option's bare letter token's log-probability under the full softmax of the first
    generated step, after the logits processors of the checkpoint's generation config:
    what the authors' scripts record (``answer_prob_norm``, ``none_prob_norm``), ``nan``
    where unknown.

    A selection averaged over ``orders`` cyclic orders of the options (``average_orders``)
    records ``disagreement``: the share of orders whose own pick is not the averaged pick.

    A selection read from generated text (``reading.py``, the reference profile) records the
    ``text`` the model wrote and its first token's log-probability (the scripts' ``answer_prob_norm``:
    under the processed scores for a local model; as a server reports it); the chosen option is then the one the text names
    (``read_letter``), not the most probable one, and a text naming no offered option is
    ``unread``: the evaluators' zero box.
    """

    candidates: Detections
    letters: tuple[str, ...]
    probabilities: np.ndarray
    allow_none: bool = False
    option_mass: float | None = None
    letter_logprobs: Sequence[float] | None = None
    orders: int = 1
    disagreement: float | None = None
    text: str | None = None
    first_token_logprob: float | None = None

    def __post_init__(self) -> None:
        probabilities = np.array(self.probabilities, dtype=np.float64).reshape(-1)
        expected = len(self.candidates) + int(self.allow_none)
        if len(self.letters) != expected or len(probabilities) != expected:
            raise ValueError(
                f"Selection: {len(self.candidates)} candidates (allow_none={self.allow_none}) need "
                f"{expected} options, got {len(self.letters)} letters and {len(probabilities)} probabilities"
            )
        if expected and not np.isclose(probabilities.sum(), 1.0, atol=1e-6):
            raise ValueError(f"Selection: probabilities sum to {probabilities.sum():.6f}, not 1")
        probabilities.setflags(write=False)
        if self.letter_logprobs is not None:
            logprobs = tuple(float(v) for v in self.letter_logprobs)
            if len(logprobs) != expected:
                raise ValueError(f"Selection: {expected} options but {len(logprobs)} letter log-probabilities")
            object.__setattr__(self, "letter_logprobs", logprobs)
        if self.option_mass is not None:
            object.__setattr__(self, "option_mass", float(self.option_mass))
        if self.first_token_logprob is not None:
            object.__setattr__(self, "first_token_logprob", float(self.first_token_logprob))
        object.__setattr__(self, "letters", tuple(self.letters))
        object.__setattr__(self, "probabilities", probabilities)

    @property
    def read_letter(self) -> str | None:
        """The letter the generated ``text`` names, as the matching evaluator reads it (``None``
        without a text, or when it names none); it need not be an offered option."""
        return None if self.text is None else script_letter(self.text, self.allow_none)

    @property
    def option_index(self) -> int | None:
        """Index of the chosen option: the most probable one, or the one the generated text names;
        ``None`` when there are no options or the text names none of them."""
        if self.text is not None:
            letter = self.read_letter
            return self.letters.index(letter) if letter in self.letters else None
        return int(np.argmax(self.probabilities)) if len(self.probabilities) else None

    @property
    def unread(self) -> bool:
        """The generated text names no offered option."""
        return self.text is not None and self.option_index is None and len(self.letters) > 0

    @property
    def index(self) -> int | None:
        """Index of the chosen candidate, or ``None`` when "None" won (or nothing was offered)."""
        option = self.option_index
        return option if option is not None and option < len(self.candidates) else None

    @property
    def letter(self) -> str | None:
        option = self.option_index
        return None if option is None else self.letters[option]

    @property
    def probability(self) -> float:
        """Probability of the chosen option (0 when nothing was offered)."""
        option = self.option_index
        return 0.0 if option is None else float(self.probabilities[option])

    @property
    def none_probability(self) -> float | None:
        return float(self.probabilities[-1]) if self.allow_none else None

    @property
    def answer_logprob(self) -> float | None:
        """The chosen letter's log-probability as the authors' scripts record it (see the class docstring)."""
        if self.text is not None:
            return self.first_token_logprob
        option = self.option_index
        if option is None or self.letter_logprobs is None:
            return None
        return self.letter_logprobs[option]

    @property
    def none_logprob(self) -> float | None:
        """The "None" letter's log-probability as the authors' scripts record it."""
        if not self.allow_none or self.letter_logprobs is None:
            return None
        return self.letter_logprobs[-1]

    @property
    def box(self) -> np.ndarray | None:
        """The chosen candidate's ``xyxy`` box, or ``None``."""
        index = self.index
        return None if index is None else self.candidates.boxes[index]

    def to_detections(self) -> Detections:
        """The chosen box scored by its option probability (empty when "None" won; the evaluators'
        zero box, scored 0, when the generated text named no option)."""
        index = self.index
        if self.unread:
            return Detections(np.zeros((1, 4)), [0.0])
        if index is None:
            return Detections.empty()
        return Detections(self.candidates.boxes[[index]], [self.probabilities[index]])

    def to_dict(self) -> dict[str, Any]:
        return {
            "letters": list(self.letters),
            "probabilities": self.probabilities.tolist(),
            "letter": self.letter,
            "index": self.index,
            "allow_none": self.allow_none,
            "option_mass": self.option_mass,
            "letter_logprobs": None if self.letter_logprobs is None else [_finite(v) for v in self.letter_logprobs],
            "orders": self.orders,
            "disagreement": self.disagreement,
            "text": self.text,
            "read_letter": self.read_letter,
            "first_token_logprob": None if self.first_token_logprob is None else _finite(self.first_token_logprob),
        }


def selection_from_dict(data: dict[str, Any], candidates: Detections) -> Selection:
    """The ``Selection`` a ``to_dict()`` record describes, over ``candidates`` (recorded apart)."""
    logprobs = data.get("letter_logprobs")
    return Selection(candidates, tuple(data["letters"]), np.asarray(data["probabilities"], dtype=np.float64),
                     bool(data["allow_none"]), option_mass=data.get("option_mass"),
                     letter_logprobs=None if logprobs is None else [math.nan if v is None else v for v in logprobs],
                     orders=int(data.get("orders", 1)), disagreement=data.get("disagreement"), text=data.get("text"),
                     first_token_logprob=data.get("first_token_logprob"))


def cyclic_orders(count: int, orders: int) -> list[np.ndarray]:
    """``orders`` cyclic shifts of ``0..count-1`` (at most ``count`` distinct ones), the identity first."""
    shifts = sorted({i * count // orders for i in range(orders)}) if count else [0]
    return [np.roll(np.arange(count), -shift) for shift in shifts]


def average_orders(candidates: Detections, selections: Sequence[Selection], orders: Sequence[np.ndarray]) -> Selection:
    """One ``Selection`` over ``candidates`` from selections asked with the candidates in ``orders``
    (``selections[i].candidates == candidates[orders[i]]``): each candidate's probability averaged
    over the orders, "None" (last) likewise, and how often an order's own pick differs from it."""
    count, allow_none = len(candidates), selections[0].allow_none
    averaged = np.zeros(count + int(allow_none))
    picks = []
    for selection, order in zip(selections, orders, strict=True):
        averaged[order] += selection.probabilities[:count]
        if allow_none:
            averaged[-1] += selection.probabilities[-1]
        picks.append(None if selection.index is None else int(order[selection.index]))
    averaged /= len(selections)
    result = Selection(candidates, selections[0].letters, averaged, allow_none, orders=len(selections))
    disagreement = float(np.mean([pick != result.index for pick in picks]))
    masses = [selection.option_mass for selection in selections]
    option_mass = None if any(mass is None for mass in masses) else float(np.mean(masses))
    return Selection(candidates, result.letters, averaged, allow_none, option_mass=option_mass,
                     orders=len(selections), disagreement=disagreement)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
