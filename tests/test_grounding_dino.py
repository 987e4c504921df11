"""The transformers Grounding DINO backends on tiny random checkpoints.

Random weights make the boxes meaningless: these tests check scoring mechanics
against transformers' own post-processing and against hand computations.
"""

import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from tools import CheckpointNotFoundError, Detector, GroundingDinoDetector, UserInputError

TEXT = "the long snowboard right of the skis"
SNOWBOARD = (TEXT.index("long snowboard"), TEXT.index("long snowboard") + len("long snowboard"))


@pytest.fixture(scope="module", params=["mm", "original"])
def checkpoint(request, tiny_mm_grounding_dino, tiny_grounding_dino):
    return tiny_mm_grounding_dino if request.param == "mm" else tiny_grounding_dino


@pytest.fixture(scope="module")
def detector(checkpoint):
    return GroundingDinoDetector.from_pretrained(str(checkpoint), device="cpu")


def raw_outputs(checkpoint, image, caption):
    """Logits and boxes the plain transformers path gives, plus its post-processing."""
    processor = AutoProcessor.from_pretrained(checkpoint)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(checkpoint).eval()
    inputs = processor(images=image, text=caption, return_tensors="pt")
    with torch.inference_mode():
        outputs = model(**inputs)
    post = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[image.size[::-1]]
    )[0]
    return outputs, inputs, post


def test_loads_both_architectures_through_auto_classes(detector, checkpoint):
    expected = "MMGroundingDino" if "mm_" in str(checkpoint) else "GroundingDino"
    assert type(detector.model).__name__ == f"{expected}ForObjectDetection"
    assert isinstance(detector, Detector)


def test_unfocused_scores_equal_transformers_post_processing(detector, checkpoint, street_image):
    result = detector.detect(street_image, TEXT)
    _, _, post = raw_outputs(checkpoint, street_image, TEXT + ".")
    order = np.argsort(-post["scores"].numpy(), kind="stable")
    np.testing.assert_allclose(result.scores, post["scores"].numpy()[order], rtol=1e-5)
    # transformers leaves boxes overhanging the image; mmdetection (and REX) clamp them.
    width, height = street_image.size
    clamped = np.clip(post["boxes"].numpy(), 0, [width, height, width, height])
    np.testing.assert_allclose(result.boxes, clamped[order], rtol=1e-4, atol=1e-3)
    assert len(result) == detector.model.config.num_queries


@pytest.mark.parametrize("focus_score, reduce", [("mean", np.mean), ("max", np.max)])
def test_focused_scores_equal_hand_computation_over_the_span_tokens(checkpoint, street_image, focus_score, reduce):
    detector = GroundingDinoDetector.from_pretrained(str(checkpoint), focus_score=focus_score)
    result = detector.detect(street_image, TEXT, focus=SNOWBOARD)
    outputs, inputs, _ = raw_outputs(checkpoint, street_image, TEXT + ".")
    tokens = detector.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    # Every token of "long snowboard" counts, and nothing else.
    positions = list(range(tokens.index("long"), tokens.index("right")))
    assert [tokens[i] for i in positions] == ["long", "snowboard"]
    # mmdetection's convert_grounding_to_cls_scores: sigmoid, then the mean over the span.
    probs = reduce(torch.sigmoid(outputs.logits[0, :, positions].double()).numpy(), axis=-1)
    width, height = street_image.size
    boxes = outputs.pred_boxes[0].double().numpy()
    xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                     boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], axis=1)
    xyxy = np.clip(xyxy * [width, height, width, height], 0, [width, height, width, height])
    order = np.argsort(-probs, kind="stable")
    np.testing.assert_allclose(result.scores, probs[order], rtol=1e-5)
    np.testing.assert_allclose(result.boxes, xyxy[order], rtol=1e-4, atol=1e-3)
    assert not np.allclose(result.scores, detector.detect(street_image, TEXT).scores)


def test_an_unknown_focus_score_is_refused(checkpoint):
    with pytest.raises(UserInputError, match="focus_score"):
        GroundingDinoDetector.from_pretrained(str(checkpoint), focus_score="median")


def test_focus_span_is_shifted_with_leading_whitespace(detector, street_image):
    plain = detector.detect(street_image, TEXT, focus=SNOWBOARD)
    padded = detector.detect(street_image, "   " + TEXT, focus=(SNOWBOARD[0] + 3, SNOWBOARD[1] + 3))
    np.testing.assert_allclose(plain.scores, padded.scores)


def test_detect_many_equals_one_by_one(detector, street_image):
    texts, focuses = [TEXT, "the skis", "a red xylophone on the left"], [SNOWBOARD, None, (6, 15)]
    batched = detector.detect_many(street_image, texts, focuses)
    for one, text, focus in zip(batched, texts, focuses):
        alone = detector.detect(street_image, text, focus=focus)
        np.testing.assert_allclose(one.scores, alone.scores, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "text, focus, message",
    [
        ("", None, "empty"),
        ("   ", None, "empty"),
        (TEXT, (30, 99), "outside the text"),
        (TEXT, (5, 5), "outside the text"),
        (TEXT, (-1, 3), "outside the text"),
        (TEXT, (3, 4), "only whitespace"),
        (TEXT, ("a", 2), "pair of ints"),
    ],
)
def test_bad_text_or_focus_is_a_clear_error(detector, street_image, text, focus, message):
    with pytest.raises(UserInputError, match=message):
        detector.detect(street_image, text, focus=focus)


def test_long_text_is_truncated_with_a_warning_keeping_an_early_focus(detector, street_image):
    long_text = "the dog " + " ".join(["near the big red car"] * 12)
    with pytest.warns(UserWarning, match="over the detector's limit"):
        focused = detector.detect(street_image, long_text, focus=(4, 7))
    assert len(focused) == detector.model.config.num_queries
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        late_focus = detector.detect(street_image, long_text, focus=(len(long_text) - 3, len(long_text)))
        unfocused = detector.detect(street_image, long_text)
    assert any("truncated part" in str(w.message) for w in caught)
    np.testing.assert_allclose(late_focus.scores, unfocused.scores)


def test_boxes_lie_inside_the_input_image(detector, street_image):
    result = detector.detect(street_image, TEXT, focus=SNOWBOARD)
    width, height = street_image.size
    assert np.all(result.boxes >= 0)
    assert np.all(result.boxes[:, [0, 2]] <= width) and np.all(result.boxes[:, [1, 3]] <= height)


def test_max_detections_limits_the_output(checkpoint, street_image):
    detector = GroundingDinoDetector.from_pretrained(str(checkpoint), max_detections=5)
    assert len(detector.detect(street_image, TEXT)) == 5


def test_half_precision_loads_when_asked(checkpoint):
    detector = GroundingDinoDetector.from_pretrained(str(checkpoint), dtype="bf16")
    assert next(detector.model.parameters()).dtype == torch.bfloat16


def test_missing_local_checkpoint_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such file or folder"):
        GroundingDinoDetector.from_pretrained(str(tmp_path / "missing"))


def test_uncached_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointNotFoundError, match="HF_HUB_OFFLINE.*--detector PATH"):
        GroundingDinoDetector.from_pretrained("openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det",
                                              cache_dir=tmp_path)


def test_a_caption_of_exactly_the_limit_is_not_truncated(detector, street_image):
    tokenizer = detector.processor.tokenizer
    words = ["dog"] * (detector.max_text_len - 3)  # + [CLS], "." and [SEP]: exactly the limit
    text = " ".join(words)
    assert len(tokenizer(text + ".")["input_ids"]) == detector.max_text_len
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        detector.detect(street_image, text)
    with pytest.warns(UserWarning, match="over the detector's limit"):
        detector.detect(street_image, text + " dog")


def test_detect_many_runs_the_image_backbone_once(checkpoint, street_image, monkeypatch):
    detector = GroundingDinoDetector.from_pretrained(str(checkpoint))  # nothing kept from other tests
    encoder = detector.model.model.backbone.conv_encoder
    batches = []
    real_forward = encoder.forward

    def counting(pixel_values, *args, **kwargs):
        batches.append(pixel_values.shape[0])
        return real_forward(pixel_values, *args, **kwargs)

    monkeypatch.setattr(encoder, "forward", counting)
    texts = ["the skis", TEXT, "a red xylophone"]
    together = detector.detect_many(street_image, texts)
    assert batches == [1]
    for one, text in zip(together, texts):
        np.testing.assert_allclose(one.scores, detector.detect(street_image, text).scores, rtol=1e-4, atol=1e-6)


def test_the_backbone_of_the_last_image_is_reused_across_calls(checkpoint, street_image, monkeypatch):
    detector = GroundingDinoDetector.from_pretrained(str(checkpoint))
    encoder = detector.model.model.backbone.conv_encoder
    calls = []
    real_forward = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    router = detector.detect(street_image, "the skis")
    specialist = detector.detect(street_image, TEXT, focus=SNOWBOARD)
    assert len(calls) == 1  # SFA's two calls on one image: one backbone pass
    fresh = GroundingDinoDetector.from_pretrained(str(checkpoint))
    np.testing.assert_allclose(router.scores, fresh.detect(street_image, "the skis").scores, rtol=1e-5)
    fresh = GroundingDinoDetector.from_pretrained(str(checkpoint))
    np.testing.assert_allclose(specialist.scores, fresh.detect(street_image, TEXT, focus=SNOWBOARD).scores, rtol=1e-5)
    changed = street_image.copy()
    changed.paste((0, 0, 0), (0, 0, 80, 60))  # other pixels: computed again
    detector.detect(changed, "the skis")
    assert len(calls) == 2
