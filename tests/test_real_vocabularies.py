"""The code against the real Qwen2-VL and bert-base-uncased vocabularies (``tests/real_vocab.py``)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.real_vocab import bert_tokenizer, reference_cases, unpack_qwen2_vl_tokenizer
from tools.detectors.base import caption_and_focus_tokens
from tools.mllm.crs import crs_prompt, letter_token_ids
from tools.mllm.families import QWEN2_VL, box_token_confidence
from tools.detections import Detections
from tests.helpers import QWEN2_VL_SPECIAL_IDS



@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(unpack_qwen2_vl_tokenizer(tmp_path_factory.mktemp("qwen2_vl_tokenizer")))


@pytest.fixture(scope="module")
def bert():
    return bert_tokenizer()


@pytest.mark.parametrize("name", ["qwen2_vl", "bert_base_uncased"])
def test_the_fixtures_tokenise_as_llama_cpp_says(name, qwen_tokenizer, bert):
    tokenizer = qwen_tokenizer if name == "qwen2_vl" else bert
    cases = reference_cases(name)
    assert len(cases) > 40
    for text, ids in cases:
        assert tokenizer.encode(text, add_special_tokens=False) == ids, text


def test_qwen2_vl_special_tokens_sit_at_their_published_ids(qwen_tokenizer):
    assert {token: qwen_tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL_IDS} == QWEN2_VL_SPECIAL_IDS
    assert len(qwen_tokenizer) == 151657
    assert (qwen_tokenizer.eos_token, qwen_tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_option_letter_ids_are_the_ones_the_reference_hard_codes(qwen_tokenizer):
    ids = letter_token_ids(qwen_tokenizer, list("ABCDEFGHIJ"))
    # region_selection_neg.py: {'A': 32, ..., 'J': 41}; " A" is 362.
    assert [spellings[0] for spellings in ids] == list(range(32, 42))
    assert ids[0] == [32, 362]
    assert all(len(spellings) == 2 for spellings in ids)


def test_a_real_box_answer_parses_and_scores_over_the_reference_tokens(qwen_tokenizer):
    ids = qwen_tokenizer.encode("<|box_start|>(123,456),(789,100)<|box_end|><|im_end|>", add_special_tokens=False)
    assert ids == [151648, 7, 16, 17, 18, 11, 19, 20, 21, 23547, 22, 23, 24, 11, 16, 15, 15, 8, 151649, 151645]
    texts = [qwen_tokenizer.decode([i]) for i in ids]
    parsed = QWEN2_VL.parse_answer("".join(texts), (1000, 500))
    # Inverted y corners are reordered; coordinates are 0..1000 of the image.
    np.testing.assert_allclose(parsed.boxes, [[123, 50, 789, 228]])
    # The tokens a box's confidence averages over are the reference's: strictly between
    # the first <|box_start|> and <|box_end|> (SFA/inference_QwenVL.py, get_score).
    logprobs = -np.arange(1, len(ids) + 1) / 100
    confidence = box_token_confidence(texts, logprobs, None, parsed.spans)
    start, end = ids.index(151648) + 1, ids.index(151649)
    assert confidence.mean_prob[0] == pytest.approx(np.exp(logprobs[start:end]).mean())
    assert confidence.prob_product[0] == pytest.approx(np.exp(logprobs[start:end].sum()))


def test_the_crs_question_renders_in_the_real_chat_template(qwen_tokenizer):
    candidates = Detections([[10, 20, 110, 220], [300, 40, 400, 90]], [0.9, 0.8])
    prompt, letters = crs_prompt("the red cup", candidates, (640, 480), allow_none=True)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    rendered = qwen_tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith(
        "<|vision_start|><|image_pad|><|vision_end|>Given a referring expression, select the best-matching bounding "
        "box from the options below. Referring expression: the red cup\nA. (16,42),(172,458)\nB. (469,83),(625,188)\n"
        "C. None\nAnswer with the option's letter from the given choices directly. If no suitable option exists, "
        "please select the option corresponding to 'None'.<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = qwen_tokenizer.encode(rendered, add_special_tokens=False)
    assert [i for i in ids if i >= 151643] == [151644, 151645, 151644, 151652, 151655, 151653, 151645, 151644]
    assert letters == ["A", "B", "C"]


def test_bert_ids_are_bert_base_uncased(bert):
    assert bert.convert_tokens_to_ids(["[CLS]", "[SEP]", "the", "red", "cup", "."]) == [101, 102, 1996, 2417, 2452, 1012]


def positive_map_tokens(tokenizer, caption: str, start: int, end: int) -> list[int]:
    """mmdetection's ``create_positive_map``: tokens char_to_token(start) .. char_to_token(end - 1)."""
    encoding = tokenizer(caption)
    first = encoding.char_to_token(start)
    last = encoding.char_to_token(end - 1)
    return list(range(first, last + 1))


@pytest.mark.parametrize(
    "text, target, expected_tokens",
    [
        ("the Red cup on the left", "Red cup", ["red", "cup"]),  # lower-cased
        ("a snowboarder's helmet", "snowboarder's helmet", ["snow", "##board", "##er", "'", "s", "helmet"]),
        ("the mug, left of the kettle", "mug", ["mug"]),  # the comma stays out
        ("this tree", "this tree", ["this", "tree"]),  # the appended "." separator stays out
        ("  the cup-holder.", "cup-holder", ["cup", "-", "holder"]),  # leading spaces shift the span
    ],
)
def test_grounding_dino_focus_tokens_with_the_real_bert_vocabulary(bert, text, target, expected_tokens):
    start = text.index(target)
    caption, positions = caption_and_focus_tokens(text, (start, start + len(target)), bert, max_tokens=256)
    assert caption.endswith(".") and caption == caption.strip()
    tokens = bert.convert_ids_to_tokens(bert(caption)["input_ids"])
    assert [tokens[i] for i in positions] == expected_tokens
    lead = len(text) - len(text.lstrip())
    assert positions == positive_map_tokens(bert, caption, start - lead, start - lead + len(target))


def test_focus_tokens_equal_mmdetections_positive_map_on_random_word_spans(bert):
    rng = random.Random(0)
    words = "the tall man's red umbrella , left of a snow-covered bench near two giraffes .".split()
    for _ in range(200):
        chosen = words[: rng.randint(3, len(words))]
        text = " ".join(chosen)
        first = rng.randrange(len(chosen))
        last = rng.randrange(first, len(chosen))
        start = len(" ".join(chosen[:first])) + (1 if first else 0)
        end = len(" ".join(chosen[: last + 1]))
        if not text[start:end].strip(" ,.") or text[start:end] in (",", "."):
            continue
        _, positions = caption_and_focus_tokens(text, (start, end), bert, max_tokens=256)
        caption = text if text.endswith(".") else text + "."
        assert positions == positive_map_tokens(bert, caption, start, end), text[start:end]


def test_internvl_answers_on_its_real_language_model_vocabulary(qwen_tokenizer):
    """InternVL3's -hf tokenizer is Qwen2's with its own tokens appended (transformers'
    convert_internvl_weights_to_hf.py); the answer convention on those real ids."""
    from transformers import AutoTokenizer

    from tools.mllm.families import INTERNVL

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer.name_or_path)
    added = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
    tokenizer.add_tokens(added, special_tokens=True)
    # Appended after Qwen's vocabulary, so the option letters keep the reference's ids.
    assert [tokenizer.convert_tokens_to_ids(token) for token in added] == list(range(151657, 151666))
    assert letter_token_ids(tokenizer, list("ABCDE")) == letter_token_ids(qwen_tokenizer, list("ABCDE"))
    ids = tokenizer.encode("<ref>the red cup</ref><box>[[123, 456, 789, 100]]</box><|im_end|>", add_special_tokens=False)
    texts = [tokenizer.decode([i]) for i in ids]
    parsed = INTERNVL.parse_answer("".join(texts), (1000, 500))
    np.testing.assert_allclose(parsed.boxes, [[123, 50, 789, 228]])
    assert parsed.labels == ("the red cup",)
    # The confidence averages the tokens between <box> and </box>: "[[", the digits, ", ", "]]".
    logprobs = -np.arange(1, len(ids) + 1) / 100
    confidence = box_token_confidence(texts, logprobs, None, parsed.spans)
    start, end = ids.index(tokenizer.convert_tokens_to_ids("<box>")) + 1, ids.index(tokenizer.convert_tokens_to_ids("</box>"))
    assert texts[start] == "[[" and texts[end - 1] == "]]"
    assert confidence.mean_prob[0] == pytest.approx(np.exp(logprobs[start:end]).mean())


def test_yes_and_no_have_every_spelling_as_one_token_in_the_real_vocabulary(qwen_tokenizer):
    from tools.mllm.verify import yes_no_token_ids

    yes_ids, no_ids = yes_no_token_ids(qwen_tokenizer)
    assert sorted(qwen_tokenizer.decode([i]) for i in yes_ids) == sorted(["yes", "Yes", " yes", " Yes"])
    assert sorted(qwen_tokenizer.decode([i]) for i in no_ids) == sorted(["no", "No", " no", " No"])
