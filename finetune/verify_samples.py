"""Yes/no verification samples (``finetune-data --task verify``): one line per expression.

::

    {"id": "grefcoco-7", "image": "/data/coco/7.jpg", "expression": "the two dogs",
     "candidates": [[10, 20, 110, 220], [150, 30, 200, 90]], "image_size": [640, 480],
     "answers": ["yes", "no"], "meta": {"ious": [0.83, 0.02]}}

Each candidate is one question, asked exactly as ``verify`` asks it at inference
(``tools.mllm.verify.verify_prompt``, the box in the family's box language): ``answers[i]`` is
"yes" when candidate ``i`` overlaps a ground-truth box with IoU above the build's ``min_iou``,
else "no" (every candidate of an expression without target is a "no"). Keeping an expression's
candidates on one line keeps an interrupted build's resume exact. The model is taught to reply
"Yes" or "No" (``REPLIES``), the spellings a chat model starts a reply with; ``verify`` reads
every spelling of both. ``agent-cli finetune`` trains on the questions one by one
(``VerifyQuestion``, the same fields the collator reads of a ``CRSSample``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tools.errors import UserInputError
from tools.text import clean_expression
from tools.mllm.families import QWEN2_VL, ModelFamily
from tools.mllm.verify import ANSWERS, verify_prompt, yes_no_token_ids

REPLIES = {"yes": "Yes", "no": "No"}  # what the model is taught to write for each answer


@dataclass(frozen=True)
class VerifySample:
    """The yes/no questions of one expression, one per candidate box."""

    id: str
    image: str
    expression: str
    candidates: tuple[tuple[float, float, float, float], ...]  # xyxy pixels
    image_size: tuple[int, int]
    answers: tuple[str, ...]  # "yes" or "no" per candidate
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.candidates) or not set(self.answers) <= set(ANSWERS):
            raise UserInputError(f"sample {self.id!r}: one answer per candidate, each of {', '.join(ANSWERS)}")

    def questions(self, prompts_dir: str | None = None, *, family: ModelFamily = QWEN2_VL,
                  input_size: tuple[int, int] | None = None) -> list[tuple[str, str]]:
        """``(question, answer)`` per candidate, as ``verify`` asks a model of ``family``."""
        boxes = family.option_boxes(np.asarray(self.candidates, dtype=np.float64).reshape(-1, 4), self.image_size,
                                    input_size)
        return [(verify_prompt(self.expression, box, prompts_dir), REPLIES[answer])
                for box, answer in zip(boxes, self.answers)]

    def split(self) -> list["VerifyQuestion"]:
        """One training item per candidate."""
        return [VerifyQuestion(self, index) for index in range(len(self.candidates))]

    def to_dict(self) -> dict[str, Any]:
        record = {"id": self.id, "image": self.image, "expression": self.expression,
                  "candidates": [list(box) for box in self.candidates], "image_size": list(self.image_size),
                  "answers": list(self.answers)}
        if self.meta:
            record["meta"] = dict(self.meta)
        return record

    @classmethod
    def from_dict(cls, record: Any, where: str = "sample") -> "VerifySample":
        """A checked sample from its JSON object; problems name ``where``."""
        try:
            sample = cls(str(record["id"]), str(record["image"]), str(record["expression"]),
                         tuple(tuple(float(v) for v in box) for box in record["candidates"]),
                         (int(record["image_size"][0]), int(record["image_size"][1])), tuple(record["answers"]),
                         dict(record.get("meta", {})))
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as error:
            raise UserInputError(f"{where}: not a verification sample ({type(error).__name__}: {error})") from None
        if not all(len(box) == 4 and box[0] < box[2] and box[1] < box[3] for box in sample.candidates):
            raise UserInputError(f"{where}: field 'candidates' must be [x1, y1, x2, y2] boxes with x1 < x2, y1 < y2")
        try:  # as locate cleans it: no control characters or markup, at most MAX_EXPRESSION_CHARS
            return replace(sample, expression=clean_expression(sample.expression))
        except UserInputError as error:
            raise UserInputError(f"{where}: field 'expression' is unusable: {error}") from None


@dataclass(frozen=True)
class VerifyQuestion:
    """One candidate's yes/no question, with what the training collator reads of a sample."""

    sample: VerifySample
    index: int

    options = ANSWERS  # option 0 "yes", option 1 "no"

    @property
    def id(self) -> str:
        return f"{self.sample.id}/{self.index}"

    @property
    def image(self) -> str:
        return self.sample.image

    @property
    def image_size(self) -> tuple[int, int]:
        return self.sample.image_size

    @property
    def answer(self) -> str:
        return REPLIES[self.sample.answers[self.index]]

    @property
    def answer_index(self) -> int:
        return ANSWERS.index(self.sample.answers[self.index])

    def option_token_ids(self, tokenizer) -> list[list[int]]:
        return yes_no_token_ids(tokenizer)

    def prompt(self, prompts_dir: str | None = None, *, family: ModelFamily = QWEN2_VL,
               input_size: tuple[int, int] | None = None) -> str:
        """The question ``verify`` asks of this candidate, for a model of ``family``."""
        box = family.option_boxes(np.asarray([self.sample.candidates[self.index]], dtype=np.float64),
                                  self.image_size, input_size)[0]
        return verify_prompt(self.sample.expression, box, prompts_dir)
