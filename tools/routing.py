"""Difficulty routing (SFA): count distinct instances of the target phrase.

The paper's router detects with the target phrase alone, keeps the top-10 boxes,
drops scores below 0.2, applies NMS at IoU 0.7 and counts the survivors: at most one
instance means Level 1 (fast specialist path), more means Level 2 (slow MLLM path).
"""

from __future__ import annotations

from dataclasses import dataclass

from .detections import Detections


@dataclass(frozen=True)
class RoutingThresholds:
    top_k: int = 10
    score_threshold: float = 0.2
    iou_threshold: float = 0.7


def count_instances(detections: Detections, thresholds: RoutingThresholds = RoutingThresholds()) -> int:
    """How many distinct instances survive top-k, the score threshold and NMS."""
    kept = detections.top_k(thresholds.top_k).above(thresholds.score_threshold)
    return len(kept.nms(thresholds.iou_threshold))


def difficulty_level(instance_count: int) -> int:
    """Level 1 when at most one instance of the target is visible, else Level 2."""
    return 1 if instance_count <= 1 else 2
