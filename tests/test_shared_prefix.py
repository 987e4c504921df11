"""Verification's two passes (``tools/mllm/shared_prefix.py``): each query's image and question
prefix once, then one row per candidate continuing from its KV cache. On tiny checkpoints of every
local family the yes probabilities equal those of encoding every candidate's question in full."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tools.detections import Detections
from tools.mllm import load_local_mllm
from tools.mllm.shared_prefix import (common_prefix_length, continuation_inputs, drop_last_tokens, ends_with,
                                      left_padded_cat, plan_shared_prefix, positions_from_mask)
from tools.mllm.verify import verify_prompt, yes_probability

CANDIDATES = Detections(
    [[10, 40, 40, 100], [70, 40, 100, 100], [120, 40, 150, 100], [0, 0, 80, 60], [80, 60, 160, 120]],
    [0.9, 0.8, 0.7, 0.6, 0.5],
)
FAMILIES = ["tiny_qwen2_vl", "tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_internvl"]


@pytest.fixture(scope="module", params=FAMILIES)
def local_mllm(request):
    return load_local_mllm(str(request.getfixturevalue(request.param)), device="cpu")


def full_rows(model, image, expression, candidates) -> np.ndarray:
    """``p(yes)`` of each candidate with its whole question encoded: the reference the two passes must equal."""
    written = model.family.option_boxes(candidates.boxes, image.size, model.input_size(image.size))
    conversations = [model._conversation(image, verify_prompt(expression, box)) for box in written]
    logits, _ = model._next_token_logits(conversations)
    return np.array([yes_probability(row, model._yes_no_ids) for row in logits])


def record_passes(model, monkeypatch) -> list[tuple[int, bool]]:
    """``(rows, with pixels)`` of every forward pass ``model`` makes from now on."""
    passes = []
    original = model.model.forward

    def recording(*args, **kwargs):
        passes.append((kwargs["input_ids"].shape[0], kwargs.get("pixel_values") is not None))
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", recording)
    return passes


# ------------------------------------------------------------------ the pieces


def test_the_common_prefix_leaves_every_question_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token is each one's own
    assert common_prefix_length([[7, 8, 9]]) == 2
    assert common_prefix_length([[1, 2], [3, 4]]) == 0


def test_a_plan_gives_each_question_its_tail_and_owner():
    plan = plan_shared_prefix([[[1, 2, 3, 9], [1, 2, 4, 9]], [[5, 6]]])
    assert plan.tails == [[3, 9], [4, 9], [6]]
    assert plan.owners == [0, 0, 1]
    assert plan.dropped == [2, 1]


def test_dropping_the_tails_left_pads_every_per_token_tensor_again():
    inputs = {"input_ids": torch.tensor([[0, 5, 6, 7, 8], [1, 2, 3, 4, 9]]),
              "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]]),
              "pixel_values": torch.ones(3, 4)}
    cut = drop_last_tokens(inputs, [1, 3], pad_id=0)
    assert cut["input_ids"].tolist() == [[5, 6, 7], [0, 1, 2]]
    assert cut["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert cut["pixel_values"] is inputs["pixel_values"]
    assert ends_with(inputs["input_ids"], inputs["attention_mask"], [[8], [3, 4, 9]])
    assert not ends_with(inputs["input_ids"], inputs["attention_mask"], [[8], [3, 4, 8]])


def test_continuations_count_positions_over_real_tokens_only():
    prefix_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    inputs = continuation_inputs([[4, 5], [6], [7, 8]], [0, 0, 1], prefix_mask, pad_id=0)
    assert inputs["input_ids"].tolist() == [[4, 5], [0, 6], [7, 8]]
    assert inputs["attention_mask"].tolist() == [[0, 1, 1, 1, 1], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]]
    tail_mask = inputs["attention_mask"][:, 3:]
    assert positions_from_mask(tail_mask, torch.tensor([2, 2, 3])).tolist() == [[2, 3], [0, 2], [3, 4]]


def test_passes_of_different_widths_stack_padded_on_the_left():
    stacked = left_padded_cat([torch.tensor([[1, 2, 3]]), torch.tensor([[4], [5]])], pad_id=0)
    assert stacked.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 5]]


# ------------------------------------------------------------------ on tiny checkpoints


def test_two_passes_equal_full_rows(local_mllm, street_image):
    images = [street_image, street_image.resize((100, 60)), street_image.crop((0, 0, 90, 120))]
    texts = ["the red box", "the sky above the long road", "a"]
    boxes = [CANDIDATES, CANDIDATES[:2], CANDIDATES[3:4]]
    together = local_mllm.verify_batch(images, texts, boxes)
    for image, text, candidates, answer in zip(images, texts, boxes, together):
        np.testing.assert_allclose(answer, full_rows(local_mllm, image, text, candidates), rtol=0, atol=1e-6)


def test_the_image_runs_once_per_query_and_each_candidate_gets_a_row(local_mllm, street_image, monkeypatch):
    passes = record_passes(local_mllm, monkeypatch)
    local_mllm.verify_batch([street_image, street_image], ["the red box", "the sky"], [CANDIDATES, CANDIDATES[:2]])
    assert passes == [(2, True), (7, False)]  # the prefixes of both queries, then 5 + 2 candidate rows


def test_disagreeing_tokenisations_fall_back_to_full_rows(local_mllm, street_image, monkeypatch):
    import tools.mllm.candidates as candidates_module

    orders = [CANDIDATES, CANDIDATES[[1, 2, 3, 4, 0]]]
    expected = local_mllm.verify(street_image, "the red box", CANDIDATES)
    expected_orders = local_mllm.select_batch([street_image] * 2, ["the red box"] * 2, orders)
    monkeypatch.setattr(candidates_module, "ends_with", lambda *args: False)
    passes = record_passes(local_mllm, monkeypatch)
    np.testing.assert_allclose(local_mllm.verify(street_image, "the red box", CANDIDATES), expected, atol=1e-6)
    assert passes == [(len(CANDIDATES), True)]  # every question in full, the image in each row
    for full, shared in zip(local_mllm.select_batch([street_image] * 2, ["the red box"] * 2, orders),
                            expected_orders):
        np.testing.assert_allclose(full.probabilities, shared.probabilities, atol=1e-6)
        np.testing.assert_allclose(full.letter_logprobs, shared.letter_logprobs, atol=1e-5)


def test_option_orders_of_one_question_share_its_prefix(local_mllm, street_image, monkeypatch):
    from tools.mllm.selection import cyclic_orders

    # Qwen2-VL-7B-Instruct's repetition penalty: the reference's log-probabilities read the processed scores
    monkeypatch.setattr(local_mllm.model.generation_config, "repetition_penalty", 1.05)
    orders = cyclic_orders(len(CANDIDATES), 3)
    alone = [local_mllm.select(street_image, "the red box", CANDIDATES[order], allow_none=True) for order in orders]
    passes = record_passes(local_mllm, monkeypatch)
    together = local_mllm.select_batch([street_image] * 3, ["the red box"] * 3, [CANDIDATES[o] for o in orders],
                                       allow_none=True)
    assert passes == [(1, True), (3, False)]  # the image and expression once, then the three orders
    for single, shared in zip(alone, together):
        np.testing.assert_allclose(shared.probabilities, single.probabilities, rtol=0, atol=1e-6)
        np.testing.assert_allclose(shared.option_mass, single.option_mass, rtol=0, atol=1e-6)
        np.testing.assert_allclose(shared.letter_logprobs, single.letter_logprobs, rtol=0, atol=1e-5)
