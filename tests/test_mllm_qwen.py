"""QwenVL on tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints, on CPU.

Random weights write gibberish, so tests that need a known answer steer the model with a
forward hook on ``lm_head``: it lifts the scripted token's logit just above the others
at every step, and records the logits it returned so confidences can be checked by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tools.detections import Detections
from tools.errors import CheckpointNotFoundError, RexError, UserInputError
from tools.mllm import MLLM, QWEN2_5_VL, QWEN2_VL, QWEN3_VL, QwenVL
from tools.mllm.crs import crs_prompt, letter_token_ids
from tests.helpers import CANDIDATES, boosted_tokens, encode, scripted_answer, special



@pytest.fixture(scope="module")
def qwen2(tiny_qwen2_vl):
    return QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")


@pytest.fixture(scope="module")
def qwen2_5(tiny_qwen2_5_vl):
    return QwenVL.from_pretrained(str(tiny_qwen2_5_vl), device="cpu")


@pytest.fixture(scope="module")
def qwen3(tiny_qwen3_vl):
    return QwenVL.from_pretrained(str(tiny_qwen3_vl), device="cpu")


@pytest.fixture(params=["qwen2", "qwen2_5", "qwen3"])
def any_qwen(request):
    return request.getfixturevalue(request.param)










# ------------------------------------------------------------------ loading


def test_from_pretrained_detects_the_family(qwen2, qwen2_5, qwen3):
    assert (qwen2.family, qwen2_5.family, qwen3.family) == (QWEN2_VL, QWEN2_5_VL, QWEN3_VL)
    assert isinstance(qwen2, MLLM)
    assert qwen2.device.type == "cpu" and qwen2.tokenizer.padding_side == "left"


def test_missing_or_unsupported_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointNotFoundError):
        QwenVL.from_pretrained(str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserInputError, match="not a supported MLLM"):
        QwenVL.from_pretrained(str(tmp_path), device="cpu")


# ------------------------------------------------------------------ every family runs


def test_ground_and_select_run(any_qwen, street_image):
    outputs = any_qwen.generate_grounding([street_image], ["the red box"], ["red box"], max_new_tokens=8)
    assert outputs[0].prompt.endswith("Please focus on red box.")
    assert isinstance(outputs[0].detections, Detections)
    assert (outputs[0].error is None) == (len(outputs[0].detections) > 0)
    selection = any_qwen.select(street_image, "the red box", CANDIDATES)
    assert selection.letters == ("A", "B", "C", "D", "E")
    assert selection.probabilities.sum() == pytest.approx(1.0)


# ------------------------------------------------------------------ CRS selection


def test_select_never_generates(qwen2, street_image, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("select must not call generate")

    monkeypatch.setattr(qwen2.model, "generate", refuse)
    selections = qwen2.select_batch([street_image] * 2, ["the red box", "the sky"], [CANDIDATES, CANDIDATES[:2]], True)
    for selection in selections:
        assert selection.probabilities.sum() == pytest.approx(1.0)
        assert np.all(selection.probabilities > 0)


@pytest.mark.parametrize("letter", ["A", "C", "E"])
def test_the_boosted_letter_wins(any_qwen, street_image, letter):
    # Only the " X" spelling is boosted: an implementation with hard-coded ids would miss it.
    (spaced_id,) = encode(any_qwen, " " + letter)
    with boosted_tokens(any_qwen, [spaced_id]):
        selection = any_qwen.select(street_image, "the red box", CANDIDATES)
    assert selection.letter == letter and selection.probability > 0.99
    np.testing.assert_array_equal(selection.box, CANDIDATES.boxes["ACE".index(letter) * 2])


def test_letter_ids_come_from_the_tokenizer(qwen2):
    letters = list("ABCDEFGHIJ")
    ids = letter_token_ids(qwen2.tokenizer, letters)
    # Read back through the vocabulary: each letter's ids spell it bare and after a space.
    assert [[qwen2.tokenizer.convert_ids_to_tokens(i) for i in pair] for pair in ids] == [
        [letter, "Ġ" + letter] for letter in letters]
    # The reference hard-codes A..J = 32..41, which misses the " A" spellings entirely.
    assert ids != [[32 + i] for i in range(10)]
    assert all(not 32 <= spaced < 42 for _, spaced in ids)


def test_none_is_the_last_option_and_means_no_box(qwen2, street_image):
    prompt, letters = crs_prompt("the red box", CANDIDATES[:3], street_image.size, allow_none=True)
    assert letters == ["A", "B", "C", "D"]
    assert "C. (750,333),(938,833)\nD. None\n" in prompt
    with boosted_tokens(qwen2, encode(qwen2, " D")):
        chosen_none = qwen2.select(street_image, "the red box", CANDIDATES[:3], allow_none=True)
    assert chosen_none.letters[-1] == "D" and chosen_none.letter == "D"
    assert chosen_none.index is None and chosen_none.box is None
    assert len(chosen_none.to_detections()) == 0
    assert chosen_none.none_probability == pytest.approx(chosen_none.probability)
    with boosted_tokens(qwen2, encode(qwen2, " B")):
        chosen_b = qwen2.select(street_image, "the red box", CANDIDATES[:3], allow_none=True)
    assert chosen_b.index == 1


def test_trivial_selections_skip_the_model(qwen2, street_image, monkeypatch):
    monkeypatch.setattr(qwen2.model, "forward", lambda *a, **k: pytest.fail("no question to ask"))
    assert qwen2.select(street_image, "x", Detections.empty()).index is None
    only_none = qwen2.select(street_image, "x", Detections.empty(), allow_none=True)
    assert only_none.letters == ("A",) and only_none.none_probability == 1.0


def test_select_batch_matches_single_queries(qwen2_5, street_image):
    # Different image sizes and prompt lengths: left padding must keep the last column right.
    tall = street_image.resize((60, 150))
    images, expressions, candidates = [street_image, tall], ["the red box", "a much longer expression here"], [
        CANDIDATES,
        Detections([[0, 0, 30, 30], [10, 10, 60, 150]], [0.5, 0.4]),
    ]
    batched = qwen2_5.select_batch(images, expressions, candidates)
    for selection, image, expression, boxes in zip(batched, images, expressions, candidates):
        single = qwen2_5.select(image, expression, boxes)
        np.testing.assert_allclose(selection.probabilities, single.probabilities, atol=1e-5)


def test_calls_longer_than_a_batch_are_ordered_by_length_and_answered_in_input_order(qwen2, street_image,
                                                                                     monkeypatch):
    images = [street_image.resize((320, 240)), street_image, street_image.resize((60, 150)), street_image]
    expressions = ["the red box", "the green box on the left", "a box", "the white box"]
    singles = [qwen2.ground(image, text) for image, text in zip(images, expressions)]
    encoded = []
    real_encode = qwen2._encode
    monkeypatch.setattr(qwen2, "_encode", lambda conversations: encoded.append(len(conversations))
                        or real_encode(conversations))
    monkeypatch.setattr(qwen2, "batch_size", 2)
    batched = qwen2.ground_batch(images, expressions)
    assert encoded == [2, 2]
    for one, together in zip(singles, batched):
        np.testing.assert_array_equal(one.boxes, together.boxes)
        np.testing.assert_allclose(one.scores, together.scores, atol=1e-4)
    # The two smallest inputs shared a forward pass, the two largest the other.
    assert qwen2._by_length(images, expressions, range(4)) == [2, 3, 1, 0]


# ------------------------------------------------------------------ grounding


def test_qwen2_ground_confidence_matches_a_hand_computation(qwen2, street_image):
    coordinates = encode(qwen2, "(100,250),(500,750)")
    box_start, box_end, im_end = (special(qwen2, token) for token in ("<|box_start|>", "<|box_end|>", "<|im_end|>"))
    script = [box_start, *coordinates, box_end, im_end]
    with scripted_answer(qwen2, script) as returned:
        detections = qwen2.ground(street_image, "the red box")
    np.testing.assert_allclose(detections.boxes, [[16, 30, 80, 90]])
    # Steps 1..len(coordinates) wrote the coordinate tokens (step 0 wrote <|box_start|>).
    steps = range(1, 1 + len(coordinates))
    logprobs = [torch.log_softmax(returned[s][0].double(), -1)[script[s]].item() for s in steps]
    logits = [returned[s][0, script[s]].item() for s in steps]
    assert detections.scores[0] == pytest.approx(np.mean(np.exp(logprobs)), rel=1e-5)
    assert detections.data["prob_product"][0] == pytest.approx(np.exp(np.sum(logprobs)), rel=1e-4)
    assert detections.data["mean_logit"][0] == pytest.approx(np.mean(logits), rel=1e-5)
    assert 0 < detections.scores[0] < 1


def test_qwen2_5_ground_rescales_from_the_resized_input(qwen2_5):
    image = Image.new("RGB", (640, 480), (40, 90, 140))
    answer = '```json\n[{"bbox_2d": [91, 63, 182, 126], "label": "the car"}]\n```'
    with scripted_answer(qwen2_5, [*encode(qwen2_5, answer), special(qwen2_5, "<|im_end|>")]):
        (output,) = qwen2_5.generate_grounding([image], ["the car"])
    # The tiny processor budget (128 tokens of 28x28 pixels) shrinks 640x480 to 364x252.
    assert output.input_size == (364, 252) == QWEN2_5_VL.input_size((640, 480), max_pixels=qwen2_5.max_pixels)
    assert output.text == answer and output.error is None
    np.testing.assert_allclose(output.detections.boxes, [[160, 120, 320, 240]])
    assert output.detections.labels == ["the car"]


def test_qwen3_ground_reads_relative_coordinates(qwen3):
    image = Image.new("RGB", (640, 480), (40, 90, 140))
    answer = '[{"bbox_2d": [250, 500, 750, 1000], "label": "car"}]'
    with scripted_answer(qwen3, [*encode(qwen3, answer), special(qwen3, "<|im_end|>")]):
        detections = qwen3.ground(image, "the car")
    np.testing.assert_allclose(detections.boxes, [[160, 240, 480, 480]])


def test_ground_batch_pads_on_the_left_and_converts_per_image(qwen2, street_image):
    small = street_image.resize((80, 60))
    script = [*encode(qwen2, "(0,0),(500,500)"), special(qwen2, "<|im_end|>")]
    with scripted_answer(qwen2, script):
        first, second = qwen2.ground_batch([street_image, small], ["the red box", "a box with a longer description"])
    np.testing.assert_allclose(first.boxes, [[0, 0, 80, 60]])
    np.testing.assert_allclose(second.boxes, [[0, 0, 40, 30]])
    assert second.labels == ["a box with a longer description"]


def test_unparseable_answer_gives_empty_detections_and_keeps_the_text(qwen2, street_image):
    with scripted_answer(qwen2, [*encode(qwen2, "no idea"), special(qwen2, "<|im_end|>")]):
        (output,) = qwen2.generate_grounding([street_image], ["the red box"])
    assert output.text == "no idea"
    assert len(output.detections) == 0 and "no box" in output.error


def test_smaller_pixel_budget_shrinks_the_input(qwen2, street_image):
    small_budget = QwenVL(qwen2.model, qwen2.processor, max_pixels=16 * 28 * 28)
    (output,) = small_budget.generate_grounding([street_image], ["the red box"], max_new_tokens=2)
    assert output.input_size[0] * output.input_size[1] <= 16 * 28 * 28
    with pytest.raises(UserInputError):
        QwenVL(qwen2.model, qwen2.processor, min_pixels=10_000, max_pixels=5_000)


def test_empty_expression_and_mismatched_batches_are_user_errors(qwen2, street_image):
    with pytest.raises(UserInputError, match="empty"):
        qwen2.ground(street_image, "  ")
    with pytest.raises(UserInputError, match="differ in length"):
        qwen2.ground_batch([street_image], ["a", "b"])


# ------------------------------------------------------------------ text, adapters, errors


def test_generate_text_serves_as_a_text_llm(qwen2):
    script = [*encode(qwen2, '{"1": "the white truck"}'), special(qwen2, "<|im_end|>")]
    with scripted_answer(qwen2, script):
        reply = qwen2.generate_text("Which object does the expression refer to?", max_new_tokens=40)
    assert reply == '{"1": "the white truck"}'
    with scripted_answer(qwen2, script):
        assert qwen2.chat([{"role": "user", "content": "hi"}]) == reply


def test_lora_adapter_changes_select(tiny_qwen2_vl, qwen2, street_image, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl)
    torch.manual_seed(0)
    # init_lora_weights=False: random B matrices, so the adapter is not a no-op.
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(base, config)
    lora.save_pretrained(tmp_path / "adapter")
    adapted = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", adapter=str(tmp_path / "adapter"))
    before = qwen2.select(street_image, "the red box", CANDIDATES).probabilities
    after = adapted.select(street_image, "the red box", CANDIDATES).probabilities
    assert after.sum() == pytest.approx(1.0)
    assert np.abs(after - before).max() > 1e-3


def test_out_of_memory_becomes_a_clear_error(qwen2, street_image, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(qwen2.model, "forward", out_of_memory)
    with pytest.raises(RexError, match="max_pixels.*fp16.*cpu"):
        qwen2.select(street_image, "the red box", CANDIDATES)


# ------------------------------------------------------------------ per-candidate verification


def test_verify_reads_one_row_per_candidate_and_never_generates(qwen2, street_image, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("verify must not call generate")

    forwards = []
    original = qwen2.model.forward

    def counting(*args, **kwargs):
        forwards.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(qwen2.model, "generate", refuse)
    monkeypatch.setattr(qwen2.model, "forward", counting)
    yes = qwen2.verify(street_image, "the red box", CANDIDATES)
    assert forwards == [1, len(CANDIDATES)]  # the image and question prefix once, then a row per candidate
    assert yes.shape == (5,) and np.all((yes > 0) & (yes < 1))


def test_yes_no_ids_come_from_the_tokenizer_and_boosting_yes_wins(qwen2, street_image):
    from tools.mllm.verify import yes_no_token_ids

    yes_ids, no_ids = yes_no_token_ids(qwen2.tokenizer)
    spelled = {qwen2.tokenizer.decode([i]) for i in yes_ids}
    assert spelled <= {"yes", "Yes", " yes", " Yes"} and {"yes", " yes"} & spelled
    assert {qwen2.tokenizer.decode([i]) for i in no_ids} <= {"no", "No", " no", " No"}
    with boosted_tokens(qwen2, no_ids):
        assert np.all(qwen2.verify(street_image, "the red box", CANDIDATES[:2]) < 0.01)


def test_verify_batch_matches_single_queries(qwen2_5, street_image):
    images = [street_image, street_image.resize((100, 60))]
    together = qwen2_5.verify_batch(images, ["the red box", "the sky"], [CANDIDATES, CANDIDATES[:2]])
    for image, text, boxes, batched in zip(images, ["the red box", "the sky"], [CANDIDATES, CANDIDATES[:2]], together):
        np.testing.assert_allclose(batched, qwen2_5.verify(image, text, boxes), atol=1e-4)
    assert qwen2_5.verify(street_image, "x", CANDIDATES[:0]).shape == (0,)
