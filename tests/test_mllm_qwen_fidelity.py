"""QwenVL where only real checkpoints would show a difference: processed scores, the CRS forward,
adapters during extraction, Thinking templates, fp16, and each family's option boxes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers import CANDIDATES, encode, scripted_answer, special
from tools.errors import UserInputError
from tools.mllm import QwenVL
from tools.mllm.crs import crs_prompt


@pytest.fixture
def penalised(tiny_qwen2_vl):
    """A tiny Qwen2-VL whose generation config switches a repetition penalty on (as Qwen2-VL-7B's does)."""
    model = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    model.model.generation_config.repetition_penalty = 1.3
    return model


def test_select_records_the_first_step_log_probabilities_generate_would_see(penalised, street_image):
    selection = penalised.select(street_image, "the red box", CANDIDATES[:3], allow_none=True)
    prompt, letters = crs_prompt("the red box", CANDIDATES[:3], street_image.size, allow_none=True)
    inputs, _ = penalised._encode([penalised._conversation(street_image, prompt)])
    with torch.inference_mode():
        out = penalised.model.generate(**inputs, max_new_tokens=1, do_sample=False, temperature=None, top_p=None,
                                       top_k=None, return_dict_in_generate=True, output_scores=True,
                                       output_logits=True)
    processed = torch.log_softmax(out.scores[0][0].double(), -1)
    raw = out.logits[0][0].double()
    bare_ids = penalised.tokenizer.convert_tokens_to_ids(letters)
    np.testing.assert_allclose(selection.letter_logprobs, processed[bare_ids].numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(processed[bare_ids].numpy(), torch.log_softmax(raw, -1)[bare_ids].numpy())
    # option_mass: every spelling of every letter under the raw softmax.
    spelled = bare_ids + [penalised.tokenizer.encode(" " + letter, add_special_tokens=False)[0] for letter in letters]
    assert selection.option_mass == pytest.approx(torch.softmax(raw, -1)[spelled].sum().item(), rel=1e-5)
    # The option probabilities themselves stay the model's own (raw) distribution.
    assert selection.probabilities.sum() == pytest.approx(1.0)


def test_the_crs_forward_builds_no_kv_cache(penalised, street_image, monkeypatch):
    seen = []
    forward = penalised.model.forward
    monkeypatch.setattr(penalised.model, "forward", lambda *a, **k: seen.append(k.get("use_cache")) or forward(*a, **k))
    penalised.select(street_image, "the red box", CANDIDATES[:3])
    assert seen == [False]


def test_grounding_scores_come_from_the_processed_scores_and_raw_ones_are_kept(penalised, street_image):
    script = [special(penalised, "<|box_start|>"), *encode(penalised, "(100,200),(300,400)"),
              special(penalised, "<|box_end|>"), special(penalised, "<|im_end|>")]
    with scripted_answer(penalised, script) as returned:
        output = penalised.generate_grounding([street_image], ["the red box"])[0]
    prompt_ids = penalised._encode([penalised._conversation(street_image, output.prompt)])[0]["input_ids"][0].tolist()
    raw_lp, processed_lp = [], []
    for step in range(1, 1 + len(encode(penalised, "(100,200),(300,400)"))):  # the coordinate tokens
        logits = returned[step][0].double()
        seen = set(prompt_ids + script[:step])
        penal = logits.clone()
        index = torch.tensor(sorted(seen))
        penal[index] = torch.where(penal[index] < 0, penal[index] * 1.3, penal[index] / 1.3)
        raw_lp.append(torch.log_softmax(logits, -1)[script[step]].item())
        processed_lp.append(torch.log_softmax(penal, -1)[script[step]].item())
    detections = output.detections
    assert detections.scores[0] == pytest.approx(np.exp(processed_lp).mean(), rel=1e-4)
    assert detections.data["prob_product"][0] == pytest.approx(np.exp(sum(processed_lp)), rel=1e-4)
    assert detections.data["raw_mean_prob"][0] == pytest.approx(np.exp(raw_lp).mean(), rel=1e-4)
    assert detections.data["raw_mean_prob"][0] != pytest.approx(detections.scores[0], rel=1e-3)


def test_target_extraction_runs_with_the_adapter_switched_off(tiny_qwen2_vl, street_image, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    plain = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    adapted = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", adapter=str(tmp_path / "adapter"))
    question = "Which object does each given expression refer to?"
    assert adapted.generate_text(question, max_new_tokens=12) == plain.generate_text(question, max_new_tokens=12)
    assert adapted.chat(question, max_new_tokens=12) != plain.chat(question, max_new_tokens=12)
    before = plain.select(street_image, "the red box", CANDIDATES).probabilities
    after = adapted.select(street_image, "the red box", CANDIDATES).probabilities
    assert np.abs(after - before).max() > 1e-3  # the adapter still answers CRS


def test_a_thinking_checkpoint_is_refused_in_one_line(tiny_qwen2_vl, tmp_path):
    folder = tmp_path / "thinking"
    shutil.copytree(tiny_qwen2_vl, folder)
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        template = template_file.read_text()
        template_file.write_text(template.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n"))
    else:
        config_file = folder / "chat_template.json"
        data = json.loads(config_file.read_text())
        data["chat_template"] = data["chat_template"].replace("<|im_start|>assistant\n",
                                                              "<|im_start|>assistant\n<think>\n")
        config_file.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="<think>.*Instruct"):
        QwenVL.from_pretrained(str(folder), device="cpu")


def test_qwen2_vl_in_float16_is_warned_about(tiny_qwen2_vl):
    with pytest.warns(UserWarning, match="float16.*bf16"):
        QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", dtype="fp16")


def test_each_family_reads_options_in_its_own_box_language(tiny_qwen2_vl, tiny_qwen2_5_vl, tiny_qwen3_vl,
                                                          street_image):
    boxes = CANDIDATES[:2]
    qwen2 = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    qwen2_5 = QwenVL.from_pretrained(str(tiny_qwen2_5_vl), device="cpu")
    qwen3 = QwenVL.from_pretrained(str(tiny_qwen3_vl), device="cpu")
    lines = {}
    for model in (qwen2, qwen2_5, qwen3):
        prompt, _ = crs_prompt("the red box", boxes, street_image.size, family=model.family,
                               input_size=model.input_size(street_image.size))
        lines[model.family.name] = prompt.split("\n")[1:3]
    # 160x120 image; box 1 is (10, 40, 40, 100).
    assert lines["qwen2_vl"] == ["A. (62,333),(250,833)", "B. (438,333),(625,833)"]  # round(62.5) == 62
    assert lines["qwen3_vl"] == ["A. [62, 333, 250, 833]", "B. [438, 333, 625, 833]"]
    width, height = qwen2_5.input_size(street_image.size)
    _, sizes = qwen2_5._encode([qwen2_5._conversation(street_image, "x")])
    assert sizes == [(width, height)]  # the size the options are written in is the size the model sees
    expected = [round(v) for v in (10 * width / 160, 40 * height / 120, 40 * width / 160, 100 * height / 120)]
    assert lines["qwen2_5_vl"][0] == f"A. {json.dumps(expected)}"


# ------------------------------------------------------------------ the extraction prompt's prefix cache

from tools.extraction import LocalChatExtractor  # noqa: E402
from tools.extraction.parsing import extraction_prompt, extraction_prompt_prefix  # noqa: E402

EXPRESSIONS = ["the white truck next to the tree", "which is the tallest giraffe", "a dog on the left"]


def forward_lengths(model: QwenVL, monkeypatch) -> list[int]:
    """Record the input length of every forward of ``model``."""
    lengths: list[int] = []
    forward = model.model.forward

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids")
        lengths.append(None if ids is None else ids.shape[1])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model.model, "forward", counting)
    return lengths


def test_a_cached_prefix_gives_the_uncached_tokens_at_the_cost_of_the_rest(tiny_qwen2_vl, street_image, monkeypatch):
    model = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    prefix = extraction_prompt_prefix()
    for expression in EXPRESSIONS:
        prompt = extraction_prompt([expression])
        model.ground(street_image, "the red box")  # leaves an image call's M-RoPE offsets behind
        plain = model.generate_text(prompt, max_new_tokens=24)
        model.ground(street_image, "the red box")
        assert model.generate_text(prompt, max_new_tokens=24, fixed_prefix=prefix) == plain
    assert len(model._prefix_caches) == 1
    lengths = forward_lengths(model, monkeypatch)
    full = model._encode([[{"role": "user", "content": extraction_prompt([EXPRESSIONS[0]])}]])[0]["input_ids"].shape[1]
    model.generate_text(extraction_prompt([EXPRESSIONS[0]]), max_new_tokens=3, fixed_prefix=prefix)
    cached = next(iter(model._prefix_caches))[0]
    # Nothing recomputes the prefix: the first forward sees only the request's own tokens.
    assert lengths[0] == full - len(cached) and all(n == 1 for n in lengths[1:])
    assert next(iter(model._prefix_caches.values())).get_seq_length() == len(cached)  # copies, never grown


def test_a_prefix_the_prompt_does_not_start_with_is_not_used(tiny_qwen2_vl):
    model = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    prompt = extraction_prompt([EXPRESSIONS[1]])
    plain = model.generate_text(prompt, max_new_tokens=12)
    assert model.generate_text(prompt, max_new_tokens=12, fixed_prefix="Something else entirely: ") == plain
    assert not model._prefix_caches


def test_prefix_caches_are_kept_apart_with_and_without_the_adapter(tiny_qwen2_vl, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    adapted = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", adapter=str(tmp_path / "adapter"))
    prompt, prefix = extraction_prompt([EXPRESSIONS[0]]), extraction_prompt_prefix()
    with_adapter = adapted.chat(prompt, max_new_tokens=12)
    assert adapted.chat(prompt, max_new_tokens=12, fixed_prefix=prefix) == with_adapter
    without = adapted.generate_text(prompt, max_new_tokens=12)
    assert adapted.generate_text(prompt, max_new_tokens=12, fixed_prefix=prefix) == without
    assert len(adapted._prefix_caches) == 2


def test_local_extraction_uses_the_prefix_cache_and_answers_as_without_it(tiny_qwen2_vl):
    model = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")

    class Uncached:  # the same model, through a generator that knows nothing of prefixes
        def generate_text(self, prompt, max_new_tokens=256):
            return model.generate_text(prompt, max_new_tokens=max_new_tokens)

    cached = LocalChatExtractor(model, max_new_tokens=24).extract_spans(EXPRESSIONS)
    assert len(model._prefix_caches) == 1
    assert cached == LocalChatExtractor(Uncached(), max_new_tokens=24).extract_spans(EXPRESSIONS)
    one_by_one = [LocalChatExtractor(model, max_new_tokens=24).extract_spans([e])[0] for e in EXPRESSIONS]
    assert len(model._prefix_caches) == 1  # single-query prompts share the same prefix
    assert one_by_one == [LocalChatExtractor(Uncached(), max_new_tokens=24).extract_spans([e])[0] for e in EXPRESSIONS]
