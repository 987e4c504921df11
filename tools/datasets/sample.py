"""``Sample``: one referring expression with its image and ground truth, whatever the benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import boxes as box_ops

# The fields of a FineCops-Ref negative, in the order the reference evaluator groups them.
NEGATIVE_FIELDS = ("negative_type", "negative_level", "negative_cate", "positive_id", "tuple_type")


@dataclass(frozen=True, eq=False)
class Sample:
    """A referring expression, the image it is about and the boxes it refers to.

    ``id`` is what predictions are matched on: the image entry's ``id`` in COCO-style
    files (FineCops-Ref, Ref-Adv, Ref-Reasoning, RefCOCO in the MDETR format, the GREC
    conversion of gRefCOCO) and the sentence id (``sent_id``) in gRefCOCO as released.
    ``boxes`` are ``xyxy`` pixels, float64, shape ``(N, 4)``; ``(0, 4)`` when nothing in
    the image is referred to (a FineCops-Ref negative, a gRefCOCO no-target expression).
    ``level`` is the annotated difficulty (FineCops-Ref: 1, 2 or 3; a negative carries
    its positive's level). ``negative`` is ``None`` for positives and, for FineCops-Ref
    negatives, maps each of :data:`NEGATIVE_FIELDS` to its value (``tuple_type`` may be
    ``None``).
    """

    id: int | str
    image_path: Path
    expression: str
    boxes: np.ndarray
    level: int | None = None
    negative: dict[str, Any] | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        boxes = np.array(box_ops.as_boxes(self.boxes))
        boxes.setflags(write=False)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "image_path", Path(self.image_path))

    @property
    def is_negative(self) -> bool:
        """A FineCops-Ref negative: the expression or the image was edited so the target is absent."""
        return self.negative is not None

    @property
    def has_target(self) -> bool:
        return len(self.boxes) > 0

    @property
    def negative_key(self) -> str | None:
        """``"<negative_type>/<negative_level>/<negative_cate>"``, the group Recall@k is reported by."""
        if self.negative is None:
            return None
        return "/".join(str(self.negative[name]) for name in NEGATIVE_FIELDS[:3])
