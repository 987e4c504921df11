"""Difficulty routing (SFA) and CRS candidates: distinct boxes of a detector answer.

The paper's router detects with the target phrase alone, keeps the top-10 boxes, drops
scores below 0.2, applies NMS at IoU 0.7 and counts the survivors: at most one instance
means Level 1 (fast specialist path), more means Level 2 (slow MLLM path). CRS offers the
top-5 boxes of the full expression after NMS at 0.7. Both go through ``distinct_boxes``;
``crs_candidates`` is the one function that turns a detector answer into CRS options, for
the agent and the instruction-data builder alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import boxes as box_ops
from .detections import Detections
from .errors import UserInputError
from .profiles import NMS_METHODS


@dataclass(frozen=True)
class RoutingThresholds:
    """Top-k, then boxes scoring at least ``score_threshold`` (strictly above it with
    ``nms="opencv"``, as OpenCV does), then NMS at ``iou_threshold`` by ``nms`` (see
    ``tools.profiles.NMS_METHODS``)."""

    top_k: int = 10
    score_threshold: float = 0.2
    iou_threshold: float = 0.7
    nms: str = "iou"

    def __post_init__(self) -> None:
        if self.nms not in NMS_METHODS:
            raise UserInputError(f"unknown NMS method {self.nms!r}; choose one of {', '.join(NMS_METHODS)}")
        if self.top_k < 1:
            raise UserInputError(f"top_k must be at least 1, got {self.top_k}")


ROUTING = RoutingThresholds()
# The authors' CRS: top-5, NMS 0.7, and a score threshold of 0 (OpenCV keeps scores above it).
CRS_CANDIDATES = RoutingThresholds(top_k=5, score_threshold=0.0, iou_threshold=0.7)


def distinct_boxes(detections: Detections, rule: RoutingThresholds = ROUTING) -> Detections:
    """The boxes of ``detections`` that survive ``rule``, best first."""
    top = detections.top_k(rule.top_k)
    if rule.nms == "opencv":
        return top[box_ops.opencv_nms(top.boxes, top.scores, rule.score_threshold, rule.iou_threshold)]
    return top.above(rule.score_threshold).nms(rule.iou_threshold)


def count_instances(detections: Detections, thresholds: RoutingThresholds = ROUTING) -> int:
    """How many distinct instances survive top-k, the score threshold and NMS."""
    return len(distinct_boxes(detections, thresholds))


def difficulty_level(instance_count: int) -> int:
    """Level 1 when at most one instance of the target is visible, else Level 2."""
    return 1 if instance_count <= 1 else 2


def crs_candidates(
    detections: Detections,
    image_size: tuple[int, int],
    rule: RoutingThresholds = CRS_CANDIDATES,
    *,
    drop_empty: bool = True,
) -> Detections:
    """The CRS options for a detector answer on an image of ``image_size`` ``(w, h)``, in option order.

    Boxes are clipped to the image (plug-in and cached answers may overhang it); with
    ``drop_empty`` those left without area are dropped before top-k, since an option
    nobody can point at only dilutes the question. Then ``distinct_boxes(rule)``.
    """
    clipped = detections.clip(*image_size)
    if drop_empty:
        clipped = clipped[box_ops.is_valid(clipped.boxes)]
    return distinct_boxes(clipped, rule)
