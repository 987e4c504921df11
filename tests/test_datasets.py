"""Benchmark readers on small hand-written annotation files."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest

from tools.datasets import read_finecops_ref, read_grec, read_grefcoco, read_refcoco
from tools.evaluation.formats import FORMATS, read_dataset
from tools.errors import UserInputError
from tests.helpers import annotation, grefcoco_files, image_entry, negative_fields, write_json










FINECOPS = {
    "images": [image_entry(1, "the red cup"), image_entry(2, "the blue cup"), image_entry(11, "the green cup")],
    "annotations": [
        annotation(100, 1, [10, 20, 30, 40], level=1),
        annotation(101, 2, [0, 0, 5, 5], level=3),
        annotation(102, 11, [10, 20, 30, 40], level=1, **negative_fields(1)),
    ],
}


def test_finecops_ref_reads_positives_and_negatives(tmp_path):
    path = write_json(tmp_path, "finecops.json", FINECOPS)
    samples = list(read_finecops_ref(path, image_root=tmp_path / "images"))
    assert [s.id for s in samples] == [1, 2, 11]
    first = samples[0]
    np.testing.assert_array_equal(first.boxes, [[10, 20, 40, 60]])  # xywh -> xyxy
    assert first.expression == "the red cup" and first.level == 1 and first.negative is None
    assert first.image_path == tmp_path / "images" / "1.jpg" and first.image_size == (100, 100)
    negative = samples[2]
    assert negative.is_negative and not negative.has_target and negative.boxes.shape == (0, 4)
    assert negative.level == 1 and negative.negative["positive_id"] == 1
    assert negative.negative_key == "attribute/1/text"


def test_negative_fields_may_sit_on_the_image_entry(tmp_path):
    data = {"images": [image_entry(5, **negative_fields(1, "relation", 2, "image"), level=2)],
            "annotations": [annotation(1, 5, [0, 0, 1, 1])]}
    (sample,) = read_finecops_ref(write_json(tmp_path, "a.json", data))
    assert sample.level == 2 and sample.negative_key == "relation/2/image"


def test_readers_stream_lazily(tmp_path):
    samples = read_dataset("finecops-ref", write_json(tmp_path, "f.json", FINECOPS))
    assert isinstance(samples, Iterator)
    assert next(samples).id == 1


def test_ref_adv_makes_level_optional(tmp_path):
    data = {"images": [image_entry(1)], "annotations": [annotation(1, 1, [0, 0, 2, 2])]}
    (sample,) = read_dataset("ref-adv", write_json(tmp_path, "adv.json", data))
    assert sample.level is None
    with pytest.raises(UserInputError, match=r"adv\.json: annotations\[0\] \(id 1\): field 'level' is missing"):
        list(read_dataset("finecops-ref", tmp_path / "adv.json"))


def test_refcoco_mdetr_format(tmp_path):
    data = {
        "images": [image_entry(0, "man in yellow", original_id=380440, tokens_positive_eval=[[[0, 3]], [[7, 13]]])],
        "annotations": [annotation(9, 0, [1, 2, 3, 4])],
    }
    (sample,) = read_refcoco(write_json(tmp_path, "final_refcoco_testA.json", data))
    assert (sample.id, sample.expression, sample.image_path.name) == (0, "man in yellow", "0.jpg")
    np.testing.assert_array_equal(sample.boxes, [[1, 2, 4, 6]])


def test_grec_coco_multi_and_no_target(tmp_path):
    data = {
        "images": [image_entry(0, "two cups"), image_entry(1, "the flying cup"), image_entry(2, "nothing listed")],
        "annotations": [
            annotation(0, 0, [0, 0, 10, 10]),
            annotation(1, 0, [20, 0, 10, 10]),
            annotation(2, 1, [0, 0, 0, 0], category_id=-1),
        ],
    }
    samples = list(read_grec(write_json(tmp_path, "grec.json", data)))
    np.testing.assert_array_equal(samples[0].boxes, [[0, 0, 10, 10], [20, 0, 30, 10]])
    assert not samples[1].has_target and not samples[2].has_target


def test_grec_refuses_a_no_target_marker_among_targets(tmp_path):
    data = {"images": [image_entry(0)], "annotations": [annotation(0, 0, [0, 0, 1, 1]),
                                                        annotation(1, 0, [0, 0, 0, 0], category_id=-1)]}
    with pytest.raises(UserInputError, match=r"images\[0\] \(id 0\): field 'annotations' mix a no-target marker"):
        list(read_grec(write_json(tmp_path, "grec.json", data)))




def test_grefcoco_release_one_sample_per_sentence(tmp_path):
    refs = grefcoco_files(tmp_path)
    samples = list(read_grefcoco(refs, image_root=tmp_path, split="val"))
    assert [s.id for s in samples] == [10, 11, 12]
    np.testing.assert_array_equal(samples[1].boxes, [[0, 0, 10, 10], [5, 5, 6, 7]])
    assert not samples[2].has_target
    assert samples[0].image_path == tmp_path / "COCO_train2014_000000000007.jpg"
    assert samples[0].image_size == (640, 480)
    everything = list(read_dataset("grefcoco", tmp_path))  # the folder holding both files
    assert [s.id for s in everything] == [10, 11, 12, 13]
    np.testing.assert_array_equal(everything[3].boxes, [[5, 5, 6, 7]])  # a single ann_id, not a list


def test_grefcoco_unknown_split_and_missing_annotation(tmp_path):
    refs = grefcoco_files(tmp_path)
    with pytest.raises(UserInputError, match=r"no split 'testA'; the file has train, val"):
        list(read_grefcoco(refs, split="testA"))
    data = json.loads(refs.read_text())
    data[0]["ann_id"] = [5, 99]
    refs.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match=r"entry 0 \(ref id 1\): field 'ann_id' refers to annotation 99"):
        list(read_grefcoco(refs))


def test_read_dataset_checks_format_and_split(tmp_path):
    assert set(FORMATS) == {"finecops-ref", "ref-adv", "ref-reasoning", "refcoco", "grefcoco", "grec"}
    with pytest.raises(UserInputError, match="unknown dataset format 'coco'"):
        read_dataset("coco", tmp_path / "x.json")
    with pytest.raises(UserInputError, match="a split applies to grefcoco only"):
        read_dataset("refcoco", tmp_path / "x.json", split="val")


def _broken(mutate):
    data = json.loads(json.dumps(FINECOPS))
    mutate(data)
    return data


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] \(id 100\): field 'bbox' is missing"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"\[1\] \(id 101\): field 'bbox' must be four"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, -3, 4]), r"field 'bbox' has a negative width"),
        (lambda d: d["annotations"][0].update(level=4), r"\[0\] \(id 100\): field 'level' must be one of 1, 2, 3"),
        (lambda d: d["annotations"][2].update(negative_cate="audio"), r"\(id 102\): field 'negative_cate' must be"),
        (lambda d: d["annotations"][2].pop("positive_id"), r"\(id 102\): field 'positive_id' is missing"),
        (lambda d: d["images"][0].pop("caption"), r"images\[0\] \(id 1\): field 'caption' is missing"),
        (lambda d: d["images"][2].update(id=1), r"images\[2\] \(id 1\): field 'id' repeats the id 1"),
        (lambda d: d["images"][1].update(width=0), r"images\[1\] \(id 2\): field 'width' must be positive"),
        (lambda d: d["annotations"].append(annotation(7, 1, [0, 0, 1, 1], level=1)), r"\(id 1\): has 2 annotations"),
        (lambda d: d["annotations"].append(annotation(8, 99, [0, 0, 1, 1])), r"field 'image_id' refers to image 99"),
        (lambda d: d.pop("images"), r"missing top-level field 'images'"),
    ],
)
def test_malformed_finecops_files_name_the_record_and_field(tmp_path, mutate, message):
    path = write_json(tmp_path, "broken.json", _broken(mutate))
    with pytest.raises(UserInputError, match=message) as error:
        list(read_finecops_ref(path))
    assert str(error.value).startswith(str(path))


def test_unreadable_files(tmp_path):
    with pytest.raises(UserInputError, match="no such file"):
        list(read_finecops_ref(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(UserInputError, match=r"bad\.json: not valid JSON .* at line 1"):
        list(read_finecops_ref(bad))
