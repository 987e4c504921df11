"""Yes/no verification samples (``finetune-data --task verify``): one line per expression.

::

    {"id": "grefcoco-7", "image": "/data/coco/7.jpg", "expression": "the two dogs",
     "candidates": [[10, 20, 110, 220], [150, 30, 200, 90]], "image_size": [640, 480],
     "answers": ["yes", "no"], "meta": {"ious": [0.83, 0.02]}}

Each candidate is one question, asked exactly as ``verify`` asks it at inference
(``tools.mllm.verify.verify_prompt``, the box in the family's box language): ``answers[i]`` is
"yes" when candidate ``i`` overlaps a ground-truth box with IoU above the build's ``min_iou``,
else "no" (every candidate of an expression without target is a "no"). Keeping an expression's
candidates on one line keeps an interrupted build's resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tools.errors import UserInputError
from tools.mllm.families import QWEN2_VL, ModelFamily
from tools.mllm.verify import ANSWERS, verify_prompt


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
        return [(verify_prompt(self.expression, box, prompts_dir), answer) for box, answer in zip(boxes, self.answers)]

    def to_dict(self) -> dict[str, Any]:
        record = {"id": self.id, "image": self.image, "expression": self.expression,
                  "candidates": [list(box) for box in self.candidates], "image_size": list(self.image_size),
                  "answers": list(self.answers)}
        if self.meta:
            record["meta"] = dict(self.meta)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "VerifySample":
        return cls(str(record["id"]), record["image"], record["expression"],
                   tuple(tuple(float(v) for v in box) for box in record["candidates"]),
                   (int(record["image_size"][0]), int(record["image_size"][1])), tuple(record["answers"]),
                   dict(record.get("meta", {})))
