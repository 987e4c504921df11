"""Difficulty routing: count of distinct instances after top-k, score threshold and NMS."""

import numpy as np
import pytest

from tools import Detections, RoutingThresholds, count_instances, difficulty_level


def box(x, size=10):
    return [x, 0, x + size, size]


def test_one_instance_with_duplicates_is_level_1():
    # Two near-identical boxes (IoU > 0.7) are one instance; a low score does not count.
    d = Detections([box(0), [0.5, 0, 10.5, 10], box(50)], [0.9, 0.8, 0.19])
    assert count_instances(d) == 1
    assert difficulty_level(count_instances(d)) == 1


def test_two_separate_instances_are_level_2():
    d = Detections([box(0), box(50)], [0.3, 0.25])
    assert count_instances(d) == 2 and difficulty_level(2) == 2


def test_score_threshold_is_inclusive_at_0_2():
    assert count_instances(Detections([box(0), box(50)], [0.2, 0.2])) == 2


def test_only_the_top_10_boxes_are_considered():
    # Eleven disjoint confident boxes: the 11th by score is outside the top-10.
    d = Detections([box(i * 20) for i in range(11)], np.linspace(0.9, 0.5, 11))
    assert count_instances(d) == 10
    assert count_instances(d, RoutingThresholds(top_k=3)) == 3


def test_nms_threshold_is_configurable():
    # IoU of these two boxes is 0.6: separate at 0.7, merged at 0.5.
    d = Detections([[0, 0, 10, 10], [0, 0, 10, 6]], [0.9, 0.9])
    assert count_instances(d) == 2
    assert count_instances(d, RoutingThresholds(iou_threshold=0.5)) == 1


@pytest.mark.parametrize("count, level", [(0, 1), (1, 1), (2, 2), (7, 2)])
def test_level_follows_the_count(count, level):
    assert difficulty_level(count) == level
