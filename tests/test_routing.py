"""Difficulty routing: count of distinct instances after top-k, score threshold and NMS."""

import numpy as np
import pytest

from tools import Detections, BoxFilter, UserInputError, count_instances, difficulty_level
from tools import boxes as box_ops
from tools.routing import crs_candidates


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
    assert count_instances(d, BoxFilter(top_k=3)) == 3


def test_nms_threshold_is_configurable():
    # IoU of these two boxes is 0.6: separate at 0.7, merged at 0.5.
    d = Detections([[0, 0, 10, 10], [0, 0, 10, 6]], [0.9, 0.9])
    assert count_instances(d) == 2
    assert count_instances(d, BoxFilter(iou_threshold=0.5)) == 1


@pytest.mark.parametrize("count, level", [(0, 1), (1, 1), (2, 2), (7, 2)])
def test_level_follows_the_count(count, level):
    assert difficulty_level(count) == level


# ---------------------------------------------------------------- the reference's OpenCV NMS
# Expected outputs below are worked out by hand from OpenCV's NMSFast_ (modules/dnn/src/nms.inl.hpp):
# scores > threshold (float32), stable descending sort, a box dropped when 1 - jaccardDistance
# with a kept box exceeds the NMS threshold; the boxes read as (x, y, w, h).


def test_opencv_reads_xyxy_as_xywh_and_merges_far_boxes():
    # True IoU 800 / 2400 = 0.33: two instances. OpenCV sees x 300..640 and 320..680 (y 300..640):
    # intersection 320 * 340 = 108800, union 115600 + 122400 - 108800 = 129200, overlap 0.842 > 0.7.
    d = Detections([[300, 300, 340, 340], [320, 300, 360, 340]], [0.9, 0.8])
    assert count_instances(d) == 2
    assert count_instances(d, BoxFilter(nms="opencv")) == 1
    assert box_ops.opencv_nms(d.boxes, d.scores, 0.2, 0.7).tolist() == [0]


def test_opencv_keeps_near_duplicates_near_the_origin():
    # True IoU 81 / 100 = 0.81: one instance. OpenCV: rectangles 0..10 and 1..11, 81 / 119 = 0.681 <= 0.7.
    d = Detections([[0, 0, 10, 10], [1, 1, 10, 10]], [0.9, 0.8])
    assert count_instances(d) == 1
    assert count_instances(d, BoxFilter(nms="opencv")) == 2


def test_opencv_score_threshold_is_strict_in_float32():
    boxes = [[0, 0, 10, 10], [50, 0, 60, 10]]
    assert box_ops.opencv_nms(boxes, [0.2, 0.2], 0.2, 0.7).tolist() == []
    # 0.2 + 1e-10 is 0.2 in float32: still not above the threshold.
    assert box_ops.opencv_nms(boxes, [0.2 + 1e-10, 0.21], 0.2, 0.7).tolist() == [1]
    assert count_instances(Detections(boxes, [0.2, 0.2]), BoxFilter(nms="opencv")) == 0


def test_opencv_suppresses_only_above_the_threshold():
    # Rectangles (0,0,2,2) and (0,0,2,1): intersection 2, union 4, overlap exactly 0.5.
    boxes, scores = [[0, 0, 2, 2], [0, 0, 2, 1]], [0.9, 0.8]
    assert box_ops.opencv_nms(boxes, scores, 0.0, 0.5).tolist() == [0, 1]
    assert box_ops.opencv_nms(boxes, scores, 0.0, 0.49).tolist() == [0]


def test_opencv_orders_by_score_with_stable_ties_and_compares_with_kept_boxes_only():
    far = [[0, 0, 5, 5], [100, 0, 105, 5], [200, 0, 205, 5]]
    assert box_ops.opencv_nms(far, [0.5, 0.9, 0.9], 0.0, 0.7).tolist() == [1, 2, 0]
    # Rectangles x 0..10, 2..12, 4..14 (height 10): A-B 80/120 = 0.67 > 0.6 drops B;
    # A-C 60/140 = 0.43 keeps C, although C overlaps the dropped B by 0.67.
    chain = [[0, 0, 10, 10], [2, 0, 10, 10], [4, 0, 10, 10]]
    assert box_ops.opencv_nms(chain, [0.9, 0.8, 0.7], 0.0, 0.6).tolist() == [0, 2]


def test_opencv_on_real_xywh_boxes_is_true_iou_nms():
    # Given what it expects (x, y, w, h), OpenCV's NMS is ordinary NMS: a cross-check of both.
    rng = np.random.default_rng(0)
    for _ in range(200):
        corners = rng.uniform(0, 100, size=(8, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(5, 40, size=(8, 2))], axis=1)
        scores = rng.permutation(np.arange(1, 9)) / 10
        threshold = float(rng.uniform(0.2, 0.8))
        expected = box_ops.nms(boxes, scores, threshold).tolist()
        assert box_ops.opencv_nms(box_ops.xyxy_to_xywh(boxes), scores, 0.0, threshold).tolist() == expected


def test_an_unknown_nms_method_is_refused():
    with pytest.raises(UserInputError, match="NMS method"):
        BoxFilter(nms="soft")


# ---------------------------------------------------------------- CRS candidates


def test_crs_candidates_clip_drop_empty_then_top_k_and_nms():
    d = Detections(
        [[-20, 5, 30, 40], [200, 0, 260, 30], [40, 40, 80, 80], [41, 41, 80, 80], [90, 10, 120, 60]],
        [0.9, 0.85, 0.8, 0.7, 0.6],
    )
    # On a 160x120 image the second box lies outside: no area once clipped, so it is dropped
    # before top-k and the fifth box moves up; NMS then merges the third and fourth.
    options = crs_candidates(d, (160, 120), BoxFilter(top_k=4, score_threshold=0.0, iou_threshold=0.7))
    assert options.boxes.tolist() == [[0, 5, 30, 40], [40, 40, 80, 80], [90, 10, 120, 60]]
    kept_empty = crs_candidates(d, (160, 120), BoxFilter(top_k=4, score_threshold=0.0, iou_threshold=0.7),
                                drop_empty=False)
    assert kept_empty.boxes.tolist() == [[0, 5, 30, 40], [160, 0, 160, 30], [40, 40, 80, 80]]


def test_crs_candidates_under_the_reference_nms_keep_the_scripts_order():
    d = Detections([[300, 300, 340, 340], [320, 300, 360, 340], [10, 10, 30, 30]], [0.9, 0.8, 0.7])
    rule = BoxFilter(top_k=5, score_threshold=0.0, iou_threshold=0.7, nms="opencv")
    assert crs_candidates(d, (640, 480), rule, drop_empty=False).scores.tolist() == [0.9, 0.7]
