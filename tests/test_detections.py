"""The Detections type: validation, immutability, selection and ordering."""

import numpy as np
import pytest

from tools import Detections


def make(scores, labels=None):
    boxes = [[i, i, i + 10, i + 10] for i in range(len(scores))]
    return Detections(boxes, scores, labels)


def test_shapes_and_dtypes_are_normalised():
    d = Detections([[0, 0, 1, 1]], [0.5])
    assert d.boxes.shape == (1, 4) and d.boxes.dtype == np.float64 and d.scores.dtype == np.float64
    assert len(Detections.empty()) == 0 and Detections.empty().boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(boxes=[[0, 0, 1, 1]], scores=[0.1, 0.2]), "1 boxes but 2 scores"),
        (dict(boxes=[[0, 0, 1, 1]], scores=[0.1], labels=["a", "b"]), "1 boxes but 2 labels"),
        (dict(boxes=[[0, 0, 1, 1]], scores=[0.1], data={"x": [1, 2]}), "data\\['x'\\]"),
    ],
)
def test_mismatched_lengths_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Detections(**kwargs)


def test_arrays_are_frozen_without_freezing_the_callers():
    boxes = np.array([[0.0, 0, 1, 1]])
    d = Detections(boxes, [1.0])
    boxes[0, 0] = 5  # the caller's array stays writable and independent
    assert d.boxes[0, 0] == 0
    with pytest.raises(ValueError):
        d.boxes[0, 0] = 3


def test_sorted_is_stable_and_top_k_cuts():
    d = make([0.2, 0.9, 0.2, 0.5], labels=list("abcd"))
    assert d.sorted().labels == ["b", "d", "a", "c"]
    assert d.top_k(2).scores.tolist() == [0.9, 0.5]
    assert len(d.top_k(0)) == 0 and len(d.top_k(10)) == 4


def test_indexing_by_int_slice_array_and_mask_keeps_labels_and_data():
    d = Detections([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], [0.1, 0.2, 0.3], list("abc"), {"k": [10, 20, 30]})
    assert d[1].labels == ["b"] and d[-1].data["k"].tolist() == [30]
    assert d[1:].labels == ["b", "c"]
    assert d[[2, 0]].data["k"].tolist() == [30, 10]
    assert d[np.array([True, False, True])].labels == ["a", "c"]
    with pytest.raises(IndexError):
        d[np.array([True, False])]


def test_above_nms_clip_and_concat():
    d = Detections([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 60, 60]], [0.9, 0.8, 0.1])
    assert d.above(0.5).scores.tolist() == [0.9, 0.8]
    assert d.nms(0.5).scores.tolist() == [0.9, 0.1]
    assert d.clip(30, 30).boxes[2].tolist() == [20, 20, 30, 30]
    joined = Detections.concat([d[:1], d[2:]])
    assert joined.scores.tolist() == [0.9, 0.1] and joined.labels is None
    assert len(Detections.concat([])) == 0


def test_to_dict_is_plain_python():
    d = Detections([[0, 0, 1, 1]], [0.5], ["x"], {"prob_product": [0.25]})
    assert d.to_dict() == {"boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": ["x"], "prob_product": [0.25]}
    assert "0.500" in repr(d)


# ------------------------------------------------------------------ supervision interop


def test_to_and_from_supervision_round_trip():
    sv = pytest.importorskip("supervision")
    detections = Detections([[1, 2, 30, 40], [5, 5, 9, 9], [0, 0, 4, 4]], [0.9, 0.5, 0.2], ["cat", "dog", "cat"],
                            {"prob_product": np.array([0.8, 0.4, 0.1])})
    converted = detections.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == 3
    np.testing.assert_array_equal(converted.xyxy, detections.boxes)
    np.testing.assert_array_equal(converted.confidence, detections.scores)
    assert converted.class_id.tolist() == [0, 1, 0] and converted.data["class_name"].tolist() == ["cat", "dog", "cat"]
    back = Detections.from_supervision(converted)
    np.testing.assert_array_equal(back.boxes, detections.boxes)
    np.testing.assert_array_equal(back.scores, detections.scores)
    assert back.labels == detections.labels
    np.testing.assert_array_equal(back.data["prob_product"], detections.data["prob_product"])
    # supervision's own slicing keeps everything aligned.
    assert Detections.from_supervision(converted[converted.confidence > 0.3]).labels == ["cat", "dog"]


def test_supervision_annotators_draw_rex_detections():
    sv = pytest.importorskip("supervision")
    image = np.zeros((60, 80, 3), dtype=np.uint8)
    detections = Detections([[10, 10, 50, 40]], [0.9], ["the red box"]).to_supervision()
    drawn = sv.BoxAnnotator().annotate(image.copy(), detections)
    drawn = sv.LabelAnnotator().annotate(drawn, detections)
    assert drawn.shape == image.shape and drawn.any()


def test_from_supervision_without_confidence_or_names():
    sv = pytest.importorskip("supervision")
    plain = sv.Detections(xyxy=np.array([[0.0, 0, 5, 5], [1, 1, 2, 2]]), class_id=np.array([3, 7]),
                          tracker_id=np.array([11, 12]))
    converted = Detections.from_supervision(plain)
    assert converted.scores.tolist() == [1.0, 1.0] and converted.labels == ["3", "7"]
    assert converted.data["tracker_id"].tolist() == [11, 12]
    assert len(Detections.from_supervision(sv.Detections.empty())) == 0
    assert Detections.empty().to_supervision().xyxy.shape == (0, 4)


def test_to_supervision_without_the_package_says_how_to_install(monkeypatch):
    import sys

    from tools.errors import UserInputError

    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(UserInputError, match=r"pip install 'rex-agent\[supervision\]'"):
        Detections([[0, 0, 1, 1]], [1.0]).to_supervision()
