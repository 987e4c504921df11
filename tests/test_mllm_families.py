"""MLLM family conventions (Qwen VL, InternVL): prompts, answer parsing, coordinate conversion, box confidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import boxes as box_ops
from tools.errors import ModelOutputError, UserInputError
from tools.mllm.families import (
    FAMILIES,
    QWEN2_5_VL,
    QWEN2_VL,
    QWEN3_VL,
    INTERNVL,
    BoxConfidence,
    box_token_confidence,
    family_for_model,
    get_family,
)

IMAGE = (640, 480)


# ------------------------------------------------------------------ lookup and prompts


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("qwen2_vl", QWEN2_VL),
        ("Qwen/Qwen2-VL-7B-Instruct", QWEN2_VL),
        ("qwen2_5_vl", QWEN2_5_VL),
        ("Qwen/Qwen2.5-VL-72B-Instruct", QWEN2_5_VL),
        ("qwen2.5-vl-7b-instruct", QWEN2_5_VL),
        ("qwen3_vl", QWEN3_VL),
        ("qwen3_vl_moe", QWEN3_VL),
        ("qwen3-vl-235b-a22b-instruct", QWEN3_VL),
        ("internvl", INTERNVL),
        ("internvl_chat", INTERNVL),
        ("OpenGVLab/InternVL3-8B-hf", INTERNVL),
        ("OpenGVLab/InternVL2_5-8B", INTERNVL),
    ],
)
def test_family_for_model_reads_model_types_and_names(name, family):
    assert family_for_model(name) is family


def test_get_family_accepts_spellings_and_rejects_unknown():
    assert get_family("Qwen2.5-VL") is QWEN2_5_VL
    assert get_family("qwen3-vl") is QWEN3_VL
    assert get_family("InternVL") is INTERNVL
    assert set(FAMILIES) == {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl"}
    with pytest.raises(UserInputError, match="Qwen2-VL"):
        get_family("llava")
    with pytest.raises(UserInputError, match="not a supported"):
        family_for_model("llava-hf/llava-1.5-7b-hf")


def test_grounding_prompts_follow_each_family():
    assert QWEN2_VL.grounding_prompt("the red car") == "Output the bounding box of the red car in the image."
    assert (
        QWEN2_VL.grounding_prompt("the red car left of the van", focus="the red car")
        == "Output the bounding box of the red car left of the van in the image. Please focus on the red car."
    )
    assert QWEN2_5_VL.grounding_prompt("the dog") == "Locate the dog, output its bbox coordinates using JSON format."
    assert QWEN3_VL.grounding_prompt("the dog", focus="dog") == (
        'Locate every object that matches the description "the dog" in the image. '
        "Report bbox coordinates in JSON format. Please focus on dog."
    )
    # OpenGVLab/InternVL internvl_chat/eval/refcoco/evaluate_grounding.py, word for word.
    assert INTERNVL.grounding_prompt("the dog", focus="dog") == (
        "Please provide the bounding box coordinate of the region this sentence describes: <ref>the dog</ref>"
        " Please focus on dog."
    )


def test_input_size_follows_smart_resize():
    # 28-pixel factor for Qwen2.5-VL: 640x480 rounds to 644x476 under the default budget ...
    assert QWEN2_5_VL.input_size(IMAGE) == (644, 476)
    # ... and shrinks to 364x252 under a 128-token budget (the tiny test checkpoints).
    assert QWEN2_5_VL.input_size(IMAGE, max_pixels=128 * 28 * 28) == (364, 252)
    assert QWEN3_VL.input_size((100, 50)) == (96, 64)  # 32-pixel factor
    with pytest.raises(UserInputError):
        QWEN2_5_VL.input_size((1, 1000))  # aspect ratio beyond Qwen's limit


# ------------------------------------------------------------------ Qwen2-VL answers


def test_qwen2_box_tokens_convert_from_1000_grid():
    text = "<|object_ref_start|>the car<|object_ref_end|><|box_start|>(100,200),(500,600)<|box_end|>"
    parsed = QWEN2_VL.parse_answer(text, IMAGE)
    np.testing.assert_allclose(parsed.boxes, [[64, 96, 320, 288]])
    assert parsed.labels == ("the car",)
    start, end = parsed.spans[0]
    assert text[start:end] == "(100,200),(500,600)"


def test_qwen2_boxes_without_special_tokens_and_several_boxes():
    text = "the car (10, 20), (30, 40) and the bus ( 500 ,500 ),( 1000,1000 )"
    parsed = QWEN2_VL.parse_answer(text, (1000, 1000))
    np.testing.assert_allclose(parsed.boxes, [[10, 20, 30, 40], [500, 500, 1000, 1000]])
    assert parsed.labels == (None, None)
    assert [text[s:e] for s, e in parsed.spans] == ["(10, 20), (30, 40)", "( 500 ,500 ),( 1000,1000 )"]


def test_qwen2_labels_pair_with_their_own_box():
    text = (
        "<|object_ref_start|>a<|object_ref_end|><|box_start|>(1,1),(5,5)<|box_end|>"
        "<|box_start|>(6,6),(9,9)<|box_end|><|object_ref_start|>c<|object_ref_end|><|box_start|>(1,1),(2,2)<|box_end|>"
    )
    assert QWEN2_VL.parse_answer(text, IMAGE).labels == ("a", None, "c")


# ------------------------------------------------------------------ InternVL answers


def test_internvl_ref_box_answer_from_1000_grid():
    # InternVL's evaluation divides by 1000 and multiplies by the original width and height.
    text = "<ref>the car</ref><box>[[100, 200, 500, 600]]</box>"
    parsed = INTERNVL.parse_answer(text, IMAGE)
    np.testing.assert_allclose(parsed.boxes, [[64, 96, 320, 288]])
    assert parsed.labels == ("the car",)
    assert [text[s:e] for s, e in parsed.spans] == ["[100, 200, 500, 600]"]


def test_internvl_several_boxes_in_one_box_tag_and_without_tags():
    text = "<ref>cars</ref><box>[[0, 0, 100, 100], [500, 500, 1000, 1000]]</box> and <ref>a bus</ref>[[1,1,9,9]]"
    parsed = INTERNVL.parse_answer(text, (1000, 1000))
    np.testing.assert_allclose(parsed.boxes, [[0, 0, 100, 100], [500, 500, 1000, 1000], [1, 1, 9, 9]])
    assert parsed.labels == ("cars", "cars", "a bus")
    assert INTERNVL.parse_answer("[[10, 20, 30, 40]]", (1000, 1000)).labels == (None,)


def test_internvl_options_are_written_as_it_writes_boxes():
    assert INTERNVL.option_boxes([[64, 96, 320, 288]], IMAGE) == ["[[100, 200, 500, 600]]"]
    with pytest.raises(ValueError, match="smart_resize"):
        INTERNVL.input_size(IMAGE)


# ------------------------------------------------------------------ Qwen2.5-VL / Qwen3-VL answers

FENCED = '```json\n[\n\t{{"bbox_2d": [{}], "label": "the car"}}\n]\n```'


def test_qwen2_5_rescales_from_the_resized_input():
    # The model saw 640x480 as 364x252 and answered in those pixels.
    parsed = QWEN2_5_VL.parse_answer(FENCED.format("91, 63, 182, 126"), IMAGE, input_size=(364, 252))
    np.testing.assert_allclose(parsed.boxes, [[160, 120, 320, 240]])
    assert parsed.labels == ("the car",)
    # Under the default budget the input is 644x476; its full extent is the full image.
    parsed = QWEN2_5_VL.parse_answer(FENCED.format("0, 0, 644, 476"), IMAGE, input_size=(644, 476))
    np.testing.assert_allclose(parsed.boxes, [[0, 0, 640, 480]])


def test_qwen2_5_needs_the_input_size():
    with pytest.raises(ValueError, match="input_size"):
        QWEN2_5_VL.parse_answer(FENCED.format("1, 2, 3, 4"), IMAGE)


def test_qwen2_5_rejects_original_image_pixels():
    # 640 lies beyond the 364-pixel-wide input: the model used another convention.
    with pytest.raises(ModelOutputError, match="outside"):
        QWEN2_5_VL.parse_answer(FENCED.format("320, 120, 640, 240"), IMAGE, input_size=(364, 252))


def test_qwen3_is_relative_1000_and_ignores_input_size():
    text = FENCED.format("250, 500, 750, 1000")
    for input_size in (None, (416, 288)):
        parsed = QWEN3_VL.parse_answer(text, IMAGE, input_size)
        np.testing.assert_allclose(parsed.boxes, [[160, 240, 480, 480]])


def test_json_labels_spans_and_truncation():
    text = '[{"label": "a \\"b\\"", "bbox_2d": [1, 2, 3, 4]}, {"bbox_2d": [5.5, 6, 7, 8]}, {"bbox_2d": [9, 9, 10, 10'
    parsed = QWEN3_VL.parse_answer(text, (1000, 1000))
    # The box cut off by max_new_tokens is incomplete ("10" may have become "100"): dropped.
    assert parsed.labels == ('a "b"', None)
    np.testing.assert_allclose(parsed.boxes[:, 0], [1, 5.5])
    assert [text[s:e] for s, e in parsed.spans] == ["[1, 2, 3, 4]", "[5.5, 6, 7, 8]"]


def test_bare_lists_are_read_when_no_bbox_2d_key():
    parsed = QWEN3_VL.parse_answer("The box is [100, 100, 200, 300].", (1000, 1000))
    np.testing.assert_allclose(parsed.boxes, [[100, 100, 200, 300]])


# ------------------------------------------------------------------ policy: reorder, clip, reject


@pytest.mark.parametrize(
    ("family", "text"),
    [(QWEN2_VL, "(500,600),(100,200)"), (QWEN3_VL, '[{"bbox_2d": [500, 600, 100, 200]}]')],
)
def test_inverted_boxes_are_reordered(family, text):
    np.testing.assert_allclose(family.parse_answer(text, (1000, 1000)).boxes, [[100, 200, 500, 600]])


def test_small_overshoot_is_clipped_large_is_rejected():
    parsed = QWEN2_VL.parse_answer("(-5,0),(1005,1000)", (1000, 1000))
    np.testing.assert_allclose(parsed.boxes, [[0, 0, 1000, 1000]])
    for text in ("(-20,0),(500,500)", "(0,0),(1011,500)", "(0,0),(5,5) (0,0),(99999999999999999999999,5)"):
        with pytest.raises(ModelOutputError, match="outside"):
            QWEN2_VL.parse_answer(text, (1000, 1000))


@pytest.mark.parametrize(
    ("family", "text"),
    [
        (QWEN2_VL, None),
        (QWEN2_VL, ""),
        (QWEN2_VL, "I cannot see a red car."),
        (QWEN2_VL, "<|box_start|>(1,2),(3<|box_end|>"),
        (QWEN2_VL, "(5,5),(5,9)"),  # no width
        (QWEN3_VL, '[{"bbox_2d": [1, 2, 3]}]'),
        (QWEN3_VL, '[{"bbox_2d": [1, 2, 3, 4, 5]}]'),
        (QWEN3_VL, '{"bbox_2d": "1, 2, 3, 4"}'),
        (QWEN3_VL, '[{"bbox_2d": [0, 5, 1000, 5]}]'),  # no height
        (QWEN2_5_VL, "```json\n[]\n```"),
    ],
)
def test_malformed_answers_raise_model_output_error(family, text):
    with pytest.raises(ModelOutputError):
        family.parse_answer(text, IMAGE, input_size=(364, 252))


_FRAGMENTS = st.sampled_from(
    ["<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<ref>", "</ref>", "<box>",
     "</box>", "(", ")", ",", "[", "]",
     "{", "}", '"bbox_2d"', '"label"', ":", '"', "\\", "-", ".", " ", "\n", "```json", "```", "x", "\u00e9", "1e5"]
)
_NUMBERS = st.one_of(st.integers(-3000, 3000), st.floats(allow_nan=True, allow_infinity=True)).map(str)
_ANSWERS = st.one_of(st.text(max_size=120), st.lists(st.one_of(_FRAGMENTS, _NUMBERS), max_size=40).map("".join))
_SIZES = st.tuples(st.integers(1, 4000), st.integers(1, 4000))


@settings(max_examples=300, deadline=None)
@given(family=st.sampled_from(list(FAMILIES.values())), text=_ANSWERS, image_size=_SIZES, input_size=_SIZES)
def test_parsers_raise_nothing_but_model_output_error(family, text, image_size, input_size):
    try:
        parsed = family.parse_answer(text, image_size, input_size)
    except ModelOutputError:
        return
    width, height = image_size
    assert len(parsed) >= 1 and parsed.boxes.shape == (len(parsed), 4)
    assert box_ops.is_valid(parsed.boxes).all()
    assert (parsed.boxes >= 0).all() and (parsed.boxes[:, [0, 2]] <= width).all()
    assert (parsed.boxes[:, [1, 3]] <= height).all()
    assert all(0 <= start < end <= len(text) for start, end in parsed.spans)


# ------------------------------------------------------------------ confidence


def test_box_token_confidence_by_hand():
    # "<|box_start|>" "(1" "0,2" "0)," "(3" "0,40)" "<|box_end|>" and a second box "(5,5),(9,9)"
    texts = ["<|box_start|>", "(1", "0,2", "0),", "(3", "0,40)", "<|box_end|>", " ", "(5,5),(9,9)"]
    logprobs = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9]
    logits = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    text = "".join(texts)
    first = text.index("(1")
    spans = [(first, first + len("(10,20),(30,40)")), (text.index("(5"), len(text))]
    confidence = box_token_confidence(texts, logprobs, logits, spans)
    box_tokens = [-0.2, -0.3, -0.4, -0.5, -0.6]
    np.testing.assert_allclose(confidence.mean_prob, [np.mean(np.exp(box_tokens)), math.exp(-0.9)])
    np.testing.assert_allclose(confidence.prob_product, [math.exp(sum(box_tokens)), math.exp(-0.9)])
    np.testing.assert_allclose(confidence.mean_logit, [6.0, 1.0])


def test_box_token_confidence_counts_partly_overlapping_tokens_and_allows_no_logits():
    texts = ['":', ' [', "1", ",", " 2", "]}"]  # the span "[1, 2]" starts inside ' [' and ends inside ']}'
    text = "".join(texts)
    span = (text.index("["), text.index("]") + 1)
    confidence = box_token_confidence(texts, [-9.0, -1.0, -1.0, -1.0, -1.0, -1.0], None, [span])
    np.testing.assert_allclose(confidence.prob_product, [math.exp(-5.0)])
    assert np.isnan(confidence.mean_logit).all()
    with pytest.raises(ValueError, match="token_logprobs"):
        box_token_confidence(texts, [-1.0], None, [span])
    with pytest.raises(ValueError, match="no token covers"):
        box_token_confidence(texts, [-1.0] * 6, None, [(100, 120)])


def test_parsed_answer_to_detections_carries_the_three_confidences():
    parsed = QWEN2_VL.parse_answer("<|box_start|>(0,0),(500,500)<|box_end|>", IMAGE)
    confidence = BoxConfidence(np.array([0.8]), np.array([0.3]), np.array([12.5]))
    detections = parsed.to_detections(confidence, default_label="the car")
    np.testing.assert_allclose(detections.scores, [0.8])
    assert detections.labels == ["the car"]
    np.testing.assert_allclose(detections.data["prob_product"], [0.3])
    np.testing.assert_allclose(detections.data["mean_logit"], [12.5])
    bare = parsed.to_detections()
    np.testing.assert_allclose(bare.scores, [1.0])
    assert bare.labels is None and bare.data == {}
