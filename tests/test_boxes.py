"""Box maths: round trips (property-based) and agreement with torchvision."""

import numpy as np
import pytest
import torch
import torchvision.ops
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import boxes as box_ops

coordinate = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=64)
size = st.floats(min_value=1.0, max_value=1e4, allow_nan=False)


@st.composite
def xyxy_boxes(draw, min_size=1, max_size=12, extent=1000.0):
    """Valid xyxy boxes (x2 > x1, y2 > y1) inside a canvas of ``extent`` pixels."""
    n = draw(st.integers(min_size, max_size))
    rows = []
    for _ in range(n):
        x1 = draw(st.floats(0, extent - 1))
        y1 = draw(st.floats(0, extent - 1))
        rows.append([x1, y1, draw(st.floats(x1 + 0.5, extent)), draw(st.floats(y1 + 0.5, extent))])
    return np.array(rows)


@given(st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate), min_size=0, max_size=10))
def test_xywh_xyxy_round_trip(rows):
    boxes = np.array(rows, dtype=np.float64).reshape(-1, 4)
    np.testing.assert_allclose(box_ops.xyxy_to_xywh(box_ops.xywh_to_xyxy(boxes)), boxes, atol=1e-6)
    np.testing.assert_allclose(box_ops.xywh_to_xyxy(box_ops.xyxy_to_xywh(boxes)), boxes, atol=1e-6)


@given(xyxy_boxes(), size, size)
def test_pixels_relative_round_trip(boxes, width, height):
    relative = box_ops.scale_boxes(boxes, 1 / width, 1 / height)
    np.testing.assert_allclose(box_ops.scale_boxes(relative, width, height), boxes, rtol=1e-9, atol=1e-6)


@given(xyxy_boxes(extent=1.0), st.integers(1, 5000), st.integers(1, 5000))
def test_qwen_round_trip_is_within_half_a_step(relative, width, height):
    pixels = box_ops.scale_boxes(relative, width, height)
    qwen = box_ops.pixels_to_qwen(pixels, width, height)
    assert qwen.dtype == np.int64 and qwen.min() >= 0 and qwen.max() <= 1000
    back = box_ops.qwen_to_pixels(qwen, width, height)
    step = np.array([width, height, width, height]) / 1000
    assert np.all(np.abs(back - pixels) <= step / 2 + 1e-6)


def test_pixels_to_qwen_matches_reference_rounding():
    # round(v / size * 1000) as in the authors' scripts.
    assert box_ops.pixels_to_qwen([[10, 20, 320, 240]], 640, 480).tolist() == [[16, 42, 500, 500]]
    # Overhanging boxes are clipped into 0..1000.
    assert box_ops.pixels_to_qwen([[-5, -5, 700, 500]], 640, 480).tolist() == [[0, 0, 1000, 1000]]


@given(xyxy_boxes(), st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000))
def test_resize_round_trip(boxes, w1, h1, w2, h2):
    there = box_ops.resize_boxes(boxes, (w1, h1), (w2, h2))
    np.testing.assert_allclose(box_ops.resize_boxes(there, (w2, h2), (w1, h1)), boxes, rtol=1e-9, atol=1e-6)


def test_cxcywh_to_xyxy():
    np.testing.assert_allclose(box_ops.cxcywh_to_xyxy([[0.5, 0.5, 0.2, 0.4]]), [[0.4, 0.3, 0.6, 0.7]])


def test_clip_area_and_validity():
    boxes = np.array([[-10, 5, 50, 200], [30, 30, 10, 40], [0, 0, np.nan, 1]])
    np.testing.assert_allclose(box_ops.clip_boxes(boxes[:1], 40, 100), [[0, 5, 40, 100]])
    np.testing.assert_allclose(box_ops.box_area(boxes[:2]), [60 * 195, 0])
    assert box_ops.is_valid(boxes).tolist() == [True, False, False]


@settings(max_examples=50)
@given(xyxy_boxes(max_size=8), xyxy_boxes(max_size=8))
def test_iou_and_giou_agree_with_torchvision(a, b):
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(box_ops.box_iou(a, b), torchvision.ops.box_iou(ta, tb).numpy())
    np.testing.assert_allclose(box_ops.generalized_box_iou(a, b), torchvision.ops.generalized_box_iou(ta, tb).numpy())


def test_iou_of_empty_sets_has_the_right_shape():
    assert box_ops.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)


@settings(max_examples=50)
@given(xyxy_boxes(max_size=20), st.floats(0.05, 0.95), st.data())
def test_nms_agrees_with_torchvision_on_distinct_scores(boxes, threshold, data):
    scores = np.array(data.draw(st.lists(st.floats(0, 1), min_size=len(boxes), max_size=len(boxes), unique=True)))
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
    np.testing.assert_array_equal(box_ops.nms(boxes, scores, threshold), expected)


def test_nms_breaks_score_ties_by_input_order():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]])
    assert box_ops.nms(boxes, [0.5, 0.5, 0.5], 0.5).tolist() == [0, 2]
    assert box_ops.nms(boxes[[1, 0, 2]], [0.5, 0.5, 0.5], 0.5).tolist() == [0, 2]


def test_bad_shapes_and_sizes_are_errors():
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        box_ops.as_boxes([[1, 2, 3]])
    with pytest.raises(ValueError, match="positive"):
        box_ops.pixels_to_qwen([[0, 0, 1, 1]], 0, 10)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        box_ops.nms(np.zeros((3, 4)), [1, 2], 0.5)


def test_padded_square_to_pixels_by_hand():
    # A 200x100 image is padded to 200x200: a box centred at (0.25, 0.25) of side 0.1 of the square.
    np.testing.assert_allclose(box_ops.padded_square_to_pixels([[0.25, 0.25, 0.1, 0.1]], 200, 100),
                               [[40.0, 40.0, 60.0, 60.0]])
    np.testing.assert_allclose(box_ops.padded_square_to_pixels([[0.5, 0.5, 1.0, 1.0]], 100, 300),
                               [[0.0, 0.0, 300.0, 300.0]])


def test_location_bins_to_pixels_by_hand():
    # Bin i covers [i, i+1) thousandths of the side; its centre, truncated: (100 + 0.5) * 640 / 1000 = 64.32 -> 64.
    np.testing.assert_array_equal(box_ops.location_bins_to_pixels([[100, 200, 500, 999]], 640, 480),
                                  [[64.0, 96.0, 320.0, 479.0]])


def test_iou_and_giou_are_torchvisions_bit_for_bit():
    """The metrics compute overlaps in numpy with torchvision's arithmetic (the evaluators' numbers):
    random, degenerate and inverted boxes give exactly what torchvision.ops gives."""
    rng = np.random.default_rng(0)
    for trial in range(500):
        a, b = rng.uniform(0, 100, (rng.integers(1, 6), 4)), rng.uniform(0, 100, (rng.integers(1, 6), 4))
        if trial % 2:  # proper boxes, some overlapping
            a[:, 2:], b[:, 2:] = a[:, :2] + rng.uniform(0, 30, (len(a), 2)), b[:, :2] + rng.uniform(0, 30, (len(b), 2))
        if trial % 5 == 0:
            a[0] = [5, 5, 5, 5]  # no area
            b[0] = a[0]
        for ours, theirs in ((box_ops.box_iou, torchvision.ops.box_iou),
                             (box_ops.generalized_box_iou, torchvision.ops.generalized_box_iou)):
            expected = theirs(torch.tensor(a), torch.tensor(b)).numpy()
            assert np.array_equal(ours(a, b), expected, equal_nan=True)
    assert box_ops.box_iou(np.zeros((0, 4)), [[0, 0, 1, 1]]).shape == (0, 1)
