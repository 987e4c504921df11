"""Difficulty routing (SFA) and CRS candidates: distinct boxes of a detector answer.

The paper's router detects with the target phrase alone, keeps the top-10 boxes, drops
scores below 0.2, applies NMS at IoU 0.7 and counts the survivors: at most one instance
means Level 1 (fast specialist path), more means Level 2 (slow MLLM path). CRS offers the
top-5 boxes of the full expression after NMS at 0.7. Both go through ``distinct_boxes``;
``crs_candidates`` is the one function that turns a detector answer into CRS options, for
the agent and the instruction-data builder alike.
"""

from __future__ import annotations

from . import boxes as box_ops
from .defaults import CRS_CANDIDATES, ROUTING, BoxFilter
from .detections import Detections

__all__ = ["CRS_CANDIDATES", "ROUTING", "BoxFilter", "count_instances", "crs_candidates",
           "difficulty_level", "distinct_boxes"]


def distinct_boxes(detections: Detections, rule: BoxFilter = ROUTING) -> Detections:
    """The boxes of ``detections`` that survive ``rule``, best first."""
    top = detections.top_k(rule.top_k)
    if rule.nms == "opencv":
        return top[box_ops.opencv_nms(top.boxes, top.scores, rule.score_threshold, rule.iou_threshold)]
    return top.above(rule.score_threshold).nms(rule.iou_threshold)


def count_instances(detections: Detections, thresholds: BoxFilter = ROUTING) -> int:
    """How many distinct instances survive top-k, the score threshold and NMS."""
    return len(distinct_boxes(detections, thresholds))


def difficulty_level(instance_count: int) -> int:
    """Level 1 when at most one instance of the target is visible, else Level 2."""
    return 1 if instance_count <= 1 else 2


def crs_candidates(
    detections: Detections,
    image_size: tuple[int, int],
    rule: BoxFilter = CRS_CANDIDATES,
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
