"""InternVL on a tiny random ``-hf`` checkpoint, on CPU, through the same loading path as real ones.

Random weights write gibberish: answers are steered with the hooks of ``test_mllm_qwen``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from agent import Agent
from tools.detections import Detections
from tools.errors import RexError, UserInputError
from tools.mllm import INTERNVL, MLLM, InternVL, QwenVL
from tools.mllm.auto import load_local_mllm, mllm_class
from tools.mllm.crs import crs_prompt

from tests.helpers import CANDIDATES, boosted_tokens, encode, scripted_answer, special


@pytest.fixture(scope="module")
def internvl(tiny_internvl):
    return load_local_mllm(str(tiny_internvl), device="cpu")


def test_the_checkpoint_config_chooses_the_class(internvl, tiny_internvl, tiny_qwen2_vl):
    assert type(internvl) is InternVL and isinstance(internvl, MLLM)
    # Six tiles, as InternVL's own RefCOCO evaluation cuts images (the tiny processor says 4).
    assert internvl.family is INTERNVL and internvl.max_patches == 6
    assert mllm_class(str(tiny_qwen2_vl)) is QwenVL
    with pytest.raises(UserInputError, match="not a Qwen VL one"):
        QwenVL.from_pretrained(str(tiny_internvl), device="cpu")
    with pytest.raises(UserInputError, match="not an InternVL one"):
        InternVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")


def test_options_of_the_other_family_are_ignored_with_a_warning(tiny_internvl):
    with pytest.warns(UserWarning, match="max_pixels applies to QwenVL"):
        model = load_local_mllm(str(tiny_internvl), device="cpu", max_pixels=1000, max_patches=1)
    assert model.max_patches == 1


def test_original_remote_code_checkpoints_are_pointed_to_vllm(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    for loader in (InternVL.from_pretrained, load_local_mllm):
        with pytest.raises(UserInputError, match="original InternVL checkpoint.*-hf conversion.*vllm serve"):
            loader(str(tmp_path), device="cpu")


def test_images_are_tiled_and_the_grid_is_the_input_size(street_image, tiny_internvl):
    internvl = InternVL.from_pretrained(str(tiny_internvl), device="cpu", max_patches=4)
    # 4:3 is closest to 1:1; of the 1x1 and 2x2 grids the larger wins while the image covers over
    # half of it (GotOcr2's tie-break) ...
    assert internvl.input_size((160, 120)) == (128, 128)
    assert internvl.input_size((60, 40)) == (64, 64)
    assert internvl.input_size((256, 64)) == (256, 64)  # ... and 4:1 gives four tiles side by side
    inputs, sizes = internvl._encode([internvl._conversation(street_image.resize((256, 64)), "?")])
    assert tuple(inputs["pixel_values"].shape) == (5, 3, 64, 64)  # 4 tiles + the thumbnail
    assert sizes == [(256, 64)]
    image_tokens = (inputs["input_ids"] == internvl.processor.image_token_id).sum().item()
    assert image_tokens == 5 * internvl.processor.image_seq_length
    one_tile = InternVL.from_pretrained(str(tiny_internvl), device="cpu", max_patches=1)
    inputs, _ = one_tile._encode([one_tile._conversation(street_image.resize((256, 64)), "?")])
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 64, 64)


def test_ground_reads_ref_box_answers_and_scores_the_coordinate_tokens(internvl, street_image):
    coordinates = encode(internvl, "[[100, 250, 500, 750]]")
    ref, ref_end, box, box_end, im_end = (special(internvl, token)
                                          for token in ("<ref>", "</ref>", "<box>", "</box>", "<|im_end|>"))
    script = [ref, *encode(internvl, "the red box"), ref_end, box, *coordinates, box_end, im_end]
    with scripted_answer(internvl, script) as returned:
        output = internvl.generate_grounding([street_image], ["the red box"])[0]
    assert output.prompt == INTERNVL.grounding_prompt("the red box")
    np.testing.assert_allclose(output.detections.boxes, [[16, 30, 80, 90]])
    assert output.detections.labels == ["the red box"]
    # The box's span is "[100, 250, 500, 750]": every coordinate token but the outer brackets' own.
    pieces = [internvl.tokenizer.decode([token]) for token in script]
    text = "".join(pieces)
    span = (text.index("[100"), text.index("750]") + 4)
    ends = np.cumsum([len(piece) for piece in pieces])
    covering = [i for i, end in enumerate(ends) if end - len(pieces[i]) < span[1] and end > span[0]]
    logprobs = [torch.log_softmax(returned[i][0].double(), -1)[script[i]].item() for i in covering]
    assert output.detections.scores[0] == pytest.approx(np.mean(np.exp(logprobs)), rel=1e-5)


def test_crs_options_are_written_in_internvl_box_language(internvl, street_image, monkeypatch):
    prompt, letters = crs_prompt("the red box", CANDIDATES[:2], street_image.size, family=INTERNVL)
    assert "A. [[62, 333, 250, 833]]" in prompt and "B. [[438, 333, 625, 833]]" in prompt

    def refuse(*args, **kwargs):
        raise AssertionError("select must not call generate")

    monkeypatch.setattr(internvl.model, "generate", refuse)
    selection = internvl.select(street_image, "the red box", CANDIDATES, allow_none=True)
    assert selection.letters == ("A", "B", "C", "D", "E", "F")
    assert selection.probabilities.sum() == pytest.approx(1.0)


def test_verify_reads_one_row_per_candidate_in_internvl_box_language(internvl, street_image, monkeypatch):
    forwards, questions = [], []
    original_forward, original_text = internvl.model.forward, internvl._prompt_text

    def counting(*args, **kwargs):
        forwards.append(kwargs["input_ids"].shape[0])
        return original_forward(*args, **kwargs)

    def spying(conversation):
        questions.append(conversation[0]["content"][1]["text"])
        return original_text(conversation)

    monkeypatch.setattr(internvl.model, "forward", counting)
    monkeypatch.setattr(internvl, "_prompt_text", spying)
    yes = internvl.verify(street_image, "the red box", CANDIDATES[:3])
    assert forwards == [1, 3] and yes.shape == (3,) and np.all((yes > 0) & (yes < 1))
    assert "Bounding box: [[62, 333, 250, 833]]" in questions[0] and len(set(questions)) == 3


@pytest.mark.parametrize("letter", ["A", "D"])
def test_the_boosted_letter_wins(internvl, street_image, letter):
    (spaced_id,) = encode(internvl, " " + letter)
    with boosted_tokens(internvl, [spaced_id]):
        selection = internvl.select(street_image, "the red box", CANDIDATES)
    assert selection.letter == letter and selection.probability > 0.99


def test_batches_equal_single_queries(internvl, street_image):
    images = [street_image, street_image.resize((256, 64)), street_image.crop((0, 0, 90, 120))]
    expressions = ["the red box", "the green box on the left", "sky"]
    candidates = [CANDIDATES, CANDIDATES[:2], CANDIDATES[1:4]]
    together = internvl.select_batch(images, expressions, candidates)
    for image, expression, boxes, batched in zip(images, expressions, candidates, together):
        alone = internvl.select(image, expression, boxes)
        np.testing.assert_allclose(batched.probabilities, alone.probabilities, atol=1e-4)
    grounded = internvl.generate_grounding(images, expressions, max_new_tokens=6)
    for image, expression, batched in zip(images, expressions, grounded):
        assert batched.text == internvl.generate_grounding([image], [expression], max_new_tokens=6)[0].text


def test_text_chat_and_clear_errors(internvl, street_image, monkeypatch):
    assert isinstance(internvl.generate_text("Say yes.", max_new_tokens=4), str)
    with pytest.raises(UserInputError, match="empty"):
        internvl.ground(street_image, "  ")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(internvl.model, "forward", out_of_memory)
    with pytest.raises(RexError, match="max_patches"):
        internvl.select(street_image, "the red box", CANDIDATES)


def test_lora_adapter_on_internvl_changes_select(tiny_internvl, internvl, street_image, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from finetune.train import lora_target_regex
    from finetune.train_settings import DEFAULT_LORA_TARGET

    base = AutoModelForImageTextToText.from_pretrained(tiny_internvl)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=lora_target_regex(DEFAULT_LORA_TARGET),
                        init_lora_weights=False)
    lora = get_peft_model(base, config)
    names = [name for name, _ in lora.named_modules() if name.endswith("lora_A")]
    assert names and all(".language_model." in name for name in names)  # never the vision tower
    lora.save_pretrained(tmp_path / "adapter")
    adapted = InternVL.from_pretrained(str(tiny_internvl), device="cpu", adapter=str(tmp_path / "adapter"))
    before = internvl.select(street_image, "the red box", CANDIDATES).probabilities
    after = adapted.select(street_image, "the red box", CANDIDATES).probabilities
    assert np.abs(after - before).max() > 1e-3


@pytest.mark.parametrize("strategy", ["mllm", "crs", "sfa", "sfa+crs"])
def test_agent_runs_every_mllm_strategy_on_an_internvl_folder(strategy, tiny_internvl, tiny_mm_grounding_dino,
                                                              street_image):
    agent = Agent(strategy, mllm=str(tiny_internvl), detector=str(tiny_mm_grounding_dino), llm="mllm",
                  device="cpu")
    result = agent.locate(street_image, "the red box on the left")
    assert isinstance(result.detections, Detections)
    assert type(agent.backends.mllm) is InternVL


def test_a_copied_folder_loads_the_same(tiny_internvl, tmp_path, internvl, street_image):
    # A user's local folder (what `hf download` leaves) takes the same path as the Hub id would.
    copy = shutil.copytree(tiny_internvl, tmp_path / "InternVL3-tiny-hf")
    again = load_local_mllm(str(copy), device="cpu")
    np.testing.assert_allclose(again.select(street_image, "x", CANDIDATES).probabilities,
                               internvl.select(street_image, "x", CANDIDATES).probabilities, atol=1e-6)
