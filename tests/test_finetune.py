"""CRS instruction tuning on the tiny Qwen2-VL: data format, label masking, LoRA training, resume.

The synthetic task is built so that a randomly initialised 64-wide model can learn it in a
dozen steps: each image is filled with the colour its expression names ("the red box"), the
candidates are one small rectangle per colour, always listed in the same order (red A,
green B, blue C), and a grey image with "the yellow box" is answered "None" (D). So the
answer letter shows in all 48 image tokens. Measured on this model: when the answer could
only be read from the box coordinates or from the one colour word among ~250 tokens, or
from only 12 image tokens, accuracy stayed at chance after hundreds of steps.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from finetune.cli import finetune
from finetune.collate import IGNORE_INDEX, CRSCollator
from finetune.samples import (CRSSample, export_llama_factory, parse_sample, read_samples, sample_conversation,
                              write_samples)
from finetune.train import TrainConfig, lora_target_regex, train
from tools.cli_runner import run_command
from tools.detections import Detections
from tools.errors import UserInputError
from tools.mllm.crs import crs_prompt
from tools.mllm.qwen import QwenVL

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}
SIZE = (224, 168)  # (w, h): 48 image tokens on the tiny model


def make_dataset(folder, images_per_colour: int = 2) -> list[CRSSample]:
    """Solid-colour images with one small rectangle per colour; see the module docstring."""
    rng = np.random.default_rng(0)
    samples = []
    scenes = [(name, fill) for name, fill in COLOURS.items() for _ in range(images_per_colour)]
    scenes += [("yellow", (128, 128, 128))] * images_per_colour
    for number, (name, fill) in enumerate(scenes):
        image = Image.new("RGB", SIZE, fill)
        boxes = []
        for colour in COLOURS.values():
            x, y = int(rng.integers(0, SIZE[0] - 24)), int(rng.integers(0, SIZE[1] - 18))
            image.paste(colour, (x, y, x + 24, y + 18))
            boxes.append((x, y, x + 24, y + 18))
        path = folder / f"scene{number}.png"
        image.save(path)
        none_answer = name == "yellow"
        allow_none = none_answer or number % 2 == 0
        answer = "D" if none_answer else "ABC"[list(COLOURS).index(name)]
        samples.append(CRSSample(f"s{number}", str(path), f"the {name} box", tuple(boxes), SIZE, allow_none, answer))
    return samples


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crs_data")
    samples = make_dataset(folder)
    return write_samples(samples, folder / "train.jsonl"), samples


@pytest.fixture(scope="module")
def collator(tiny_qwen2_vl):
    from transformers import AutoProcessor

    return CRSCollator(AutoProcessor.from_pretrained(tiny_qwen2_vl))


def config_for(tiny_qwen2_vl, train_file, output_dir, **overrides) -> TrainConfig:
    settings = dict(model=str(tiny_qwen2_vl), train_file=str(train_file), output_dir=str(output_dir),
                    batch_size=4, grad_accum=2, learning_rate=1e-2, warmup_ratio=0.1, lora_rank=8,
                    lora_dropout=0.1, save_every=0, seed=0)
    return TrainConfig(**{**settings, **overrides})


# ------------------------------------------------------------------ the sample format


def test_jsonl_round_trip_resolves_relative_images(dataset, tmp_path):
    path, samples = dataset
    lines = path.read_text().splitlines()
    assert len(lines) == len(samples)
    for line in lines:
        assert set(json.loads(line)) == {"id", "image", "expression", "candidates", "image_size", "allow_none",
                                         "answer"}
    moved = tmp_path / "elsewhere" / "samples.jsonl"
    moved.parent.mkdir()
    relative = [sample.to_dict() | {"image": os.path.relpath(sample.image, moved.parent)} for sample in samples]
    moved.write_text("".join(json.dumps(record) + "\n" for record in relative))
    assert read_samples(path) == samples
    assert [os.path.samefile(a.image, b.image) for a, b in zip(read_samples(moved), samples)] == [True] * len(samples)


@pytest.mark.parametrize("change, message", [
    ({"answer": "E"}, "field 'answer' must be one of A, B, C, got 'E'"),
    ({"candidates": [[5, 5, 2, 9], [0, 0, 4, 4]]}, "field 'candidates' item 0 is not x1 < x2"),
    ({"candidates": [[0, 0, 4, 4]], "allow_none": False}, "field 'candidates' give at least 2 options"),
    ({"image_size": [0, 10]}, "field 'image_size' must be [width, height]"),
    ({"answers": "A"}, "unknown field(s) 'answers'"),
    ({"expression": " "}, "field 'expression' must be a non-empty string"),
])
def test_reader_names_line_and_field(dataset, tmp_path, change, message):
    _, samples = dataset
    records = [samples[0].to_dict(), samples[1].to_dict() | change]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(record) + "\n" for record in records))
    with pytest.raises(UserInputError, match=r"bad\.jsonl: line 2: ") as error:
        read_samples(bad)
    assert message in str(error.value)


def test_reader_rejects_broken_json_and_repeated_ids(dataset, tmp_path):
    _, samples = dataset
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(samples[0].to_dict()) + "\n\n{not json\n")
    with pytest.raises(UserInputError, match=r"broken\.jsonl: line 3: not valid JSON"):
        read_samples(broken)
    twice = tmp_path / "twice.jsonl"
    twice.write_text((json.dumps(samples[0].to_dict()) + "\n") * 2)
    with pytest.raises(UserInputError, match=r"twice\.jsonl: line 2: field 'id' 's0' repeats line 1"):
        read_samples(twice)
    with pytest.raises(UserInputError, match="missing"):
        parse_sample({"id": "x"})


def test_command_line_answers_mistakes_with_exit_code_2(tmp_path, capsys):
    args = ["--model", "m", "--train", str(tmp_path / "none.jsonl"), "--output", str(tmp_path)]
    assert run_command(finetune, args, "finetune") == 2
    assert "no CRS sample file" in capsys.readouterr().err


def test_conversation_is_the_inference_question(dataset, collator, tiny_qwen2_vl):
    _, samples = dataset
    sample = samples[0]
    turns = sample_conversation(sample)
    expected, _ = crs_prompt(sample.expression, Detections(np.array(sample.candidates), np.ones(3)), SIZE,
                             sample.allow_none)
    assert turns[0]["content"][1]["text"] == expected
    assert turns[1] == {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]}
    # Token for token, the training prompt is what QwenVL.select feeds the model.
    qwen = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    picture = Image.open(sample.image).convert("RGB")
    inference_inputs, _ = qwen._encode([qwen._conversation(picture, expected)])
    batch = collator([sample])
    answer_length = batch["logits_to_keep"] - 1
    prompt_ids = batch["input_ids"][0, :-answer_length]
    assert torch.equal(prompt_ids, inference_inputs["input_ids"][0])
    assert torch.equal(batch["pixel_values"], inference_inputs["pixel_values"])


def test_internvl_training_prompt_is_its_inference_question(dataset, tiny_internvl):
    from transformers import AutoProcessor

    from tools.mllm import INTERNVL, InternVL

    _, samples = dataset
    sample = samples[1]
    collator = CRSCollator(AutoProcessor.from_pretrained(tiny_internvl), family=INTERNVL)
    model = InternVL.from_pretrained(str(tiny_internvl), device="cpu")
    question, _ = crs_prompt(sample.expression, sample.detections(), SIZE, sample.allow_none, family=INTERNVL)
    assert "A. [[" in question  # the options in InternVL's own box language
    inference_inputs, _ = model._encode([model._conversation(Image.open(sample.image).convert("RGB"), question)])
    batch = collator([sample])
    answer_length = batch["logits_to_keep"] - 1
    assert torch.equal(batch["input_ids"][0, :-answer_length], inference_inputs["input_ids"][0])
    assert torch.equal(batch["pixel_values"], inference_inputs["pixel_values"])
    assert collator.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX]) == (
        sample.answer + "<|im_end|>")


def test_internvl_trains_and_its_adapter_serves_select(dataset, tiny_internvl, tmp_path):
    from tools.mllm import InternVL

    train_file, samples = dataset
    summary = train(config_for(tiny_internvl, train_file, tmp_path, max_steps=3))
    assert training_steps(tmp_path / "log.jsonl") == [1, 2, 3]
    base = InternVL.from_pretrained(str(tiny_internvl), device="cpu")
    tuned = InternVL.from_pretrained(str(tiny_internvl), device="cpu", adapter=summary["adapter_dir"])
    before, after = select_all(base, samples[:4]), select_all(tuned, samples[:4])
    assert not np.allclose(before[0].probabilities, after[0].probabilities, atol=1e-4)


def test_labels_cover_only_the_answer_letter_and_end_of_turn(dataset, collator):
    _, samples = dataset
    batch = collator(samples[:5])
    tokenizer = collator.tokenizer
    labels = batch["labels"]
    assert labels.shape == batch["input_ids"].shape
    for row, sample in enumerate(samples[:5]):
        labelled = labels[row][labels[row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled) == sample.answer + "<|im_end|>"
        assert len(labelled) == batch["logits_to_keep"] - 1 == 2
    padding = batch["attention_mask"] == 0
    assert padding.any() and (labels[padding] == IGNORE_INDEX).all()  # left padding, unlabelled
    assert batch["answer_options"] == [sample.answer_index for sample in samples[:5]]


def test_llama_factory_export(dataset, tmp_path):
    _, samples = dataset
    (tmp_path / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    data_file = export_llama_factory(samples, tmp_path, "crs_demo", relative_images=True)
    records = json.loads(data_file.read_text())
    assert len(records) == len(samples)
    for record, sample in zip(records, samples):
        assert set(record) == {"messages", "images"}
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant == {"role": "assistant", "content": sample.answer}
        assert user["content"] == "<image>" + sample.prompt()
        assert user["content"].count("<image>") == len(record["images"]) == 1
        assert not record["images"][0].startswith("/") and (tmp_path / record["images"][0]).is_file()
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["mine"] == {"file_name": "mine.json"}
    assert info["crs_demo"] == {
        "file_name": "crs_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


# ------------------------------------------------------------------ LoRA targets


@pytest.mark.parametrize("family", ["tiny_qwen2_vl", "tiny_qwen2_5_vl", "tiny_qwen3_vl", "tiny_internvl"])
def test_default_lora_targets_the_language_model_only(family, request):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(request.getfixturevalue(family))
    layers = model.config.text_config.num_hidden_layers
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=lora_target_regex(TrainConfig.lora_target)))
    adapted = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A")]
    assert len(adapted) == 7 * layers
    assert all(".language_model.layers." in name for name in adapted)
    assert all(not p.requires_grad for name, p in peft_model.named_parameters() if "lora_" not in name)
    with pytest.raises(UserInputError):
        lora_target_regex("q_proj; drop table")


# ------------------------------------------------------------------ training


def test_training_learns_and_the_adapter_serves_select(dataset, tiny_qwen2_vl, tmp_path):
    train_file, samples = dataset
    summary = train(config_for(tiny_qwen2_vl, train_file, tmp_path, eval_file=str(train_file), max_steps=12))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; eval accuracy per epoch",
          [round(r["eval_accuracy"], 3) for r in summary["eval_history"]], f"in {summary['seconds']} s")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 13))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3
    chance = np.mean([1 / len(s.letters) for s in samples])
    assert summary["eval_accuracy"] >= 0.75 > chance + 0.4
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "summary.json").is_file()

    base = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    tuned = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", adapter=summary["adapter_dir"])
    before, after = select_all(base, samples), select_all(tuned, samples)
    assert not np.allclose(before[0].probabilities, after[0].probabilities, atol=1e-3)
    accuracy = [np.mean([s.letter == sample.answer for s, sample in zip(selections, samples)])
                for selections in (before, after)]
    print("select accuracy before / after tuning:", accuracy)
    # Inference reads the tuned model exactly the way training scored it.
    assert accuracy[1] == pytest.approx(summary["eval_accuracy"]) and accuracy[1] > accuracy[0]


def select_all(qwen, samples: list[CRSSample]):
    """``select`` of a local MLLM on every sample (one batch per ``allow_none`` setting), in sample order."""
    selections = {}
    for allow_none in (False, True):
        chosen = [s for s in samples if s.allow_none == allow_none]
        answers = qwen.select_batch([s.image for s in chosen], [s.expression for s in chosen],
                                    [s.detections() for s in chosen], allow_none=allow_none)
        selections.update({s.id: answer for s, answer in zip(chosen, answers)})
    return [selections[s.id] for s in samples]


def training_steps(log_file) -> list[int]:
    """The steps of the training records (loss per optimizer step) of a run's log."""
    return [record["step"] for line in log_file.read_text().splitlines() if "loss" in (record := json.loads(line))]


def test_resumed_run_continues_the_step_count(dataset, tiny_qwen2_vl, tmp_path):
    train_file, _ = dataset
    straight = tmp_path / "straight"
    # Through the command line, as `python -m finetune.cli` runs it.
    code = run_command(finetune, ["--model", str(tiny_qwen2_vl), "--train", str(train_file), "--output", str(straight),
                           "--max-steps", "6", "--save-every", "3", "--batch-size", "4", "--grad-accum", "2",
                           "--lr", "1e-2", "--lora-dropout", "0.1", "--seed", "0"], "finetune")
    assert code == 0
    checkpoints = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-3", "checkpoint-6"]

    resumed = tmp_path / "resumed"
    summary = train(config_for(tiny_qwen2_vl, train_file, resumed, max_steps=6, lr_scheduler="cosine",
                               warmup_ratio=0.03, learning_rate=1e-2,
                               resume=str(straight / "checkpoints" / "checkpoint-3")))
    assert (summary["start_step"], summary["steps"], summary["steps_run"]) == (3, 6, 3)
    steps = training_steps(resumed / "log.jsonl")
    assert steps == [4, 5, 6]  # steps 1-3 are not trained again
    # Same data order, schedule, optimizer moments and dropout draws: the same weights.
    final = load_file(straight / "adapter" / "adapter_model.safetensors")
    again = load_file(resumed / "adapter" / "adapter_model.safetensors")
    assert final.keys() == again.keys()
    for name in final:
        torch.testing.assert_close(again[name], final[name], rtol=1e-5, atol=1e-6)

    # Resuming in place drops the log records after the checkpoint, then redoes those steps.
    summary = train(config_for(tiny_qwen2_vl, train_file, straight, max_steps=8, lr_scheduler="cosine",
                               warmup_ratio=0.03, resume="latest"))
    assert (summary["start_step"], summary["steps"]) == (6, 8)
    steps = training_steps(straight / "log.jsonl")
    assert steps == list(range(1, 9))

    with pytest.raises(UserInputError, match="data order would change"):
        train(config_for(tiny_qwen2_vl, train_file, tmp_path / "other", max_steps=8, batch_size=2,
                         resume=str(straight / "checkpoints" / "checkpoint-6")))


def test_gradient_checkpointing_and_merge_on_trainer(dataset, tiny_qwen2_vl, tmp_path):
    from transformers import AutoModelForImageTextToText

    train_file, _ = dataset
    summary = train(config_for(tiny_qwen2_vl, train_file, tmp_path, max_steps=2, gradient_checkpointing=True,
                               merge=True, report_to="none"))
    assert summary["steps"] == 2 and summary["merged_dir"] == str(tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert (tmp_path / "merged" / "tokenizer.json").is_file()  # the processor is saved beside it
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2"]  # end only


@pytest.mark.parametrize("overrides, message", [
    (dict(merge=True, fsdp="full_shard"), "--merge needs the whole model"),
    (dict(deepspeed="missing.json"), "--deepspeed 'missing.json': no such file"),
    (dict(resume="latest"), "--resume latest: no checkpoint"),
])
def test_trainer_settings_are_checked_before_loading(dataset, tiny_qwen2_vl, tmp_path, overrides, message):
    train_file, _ = dataset
    with pytest.raises(UserInputError, match=message):
        train(config_for(tiny_qwen2_vl, train_file, tmp_path / "run", **overrides))


# ------------------------------------------------------------------ the verification task


def verify_file(samples, folder):
    """The dataset as verification samples: the answer's candidate says yes, the others no."""
    from finetune.verify_samples import VerifySample

    path = folder / "verify.jsonl"
    lines = []
    for sample in samples:
        answers = ["yes" if i == sample.answer_index else "no" for i in range(len(sample.candidates))]
        lines.append(VerifySample(sample.id, sample.image, sample.expression, sample.candidates, sample.image_size,
                                  tuple(answers)).to_dict())
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_verification_questions_train_as_inference_asks_them(dataset, collator, tiny_qwen2_vl, tmp_path):
    from finetune.samples import read_training_samples
    from finetune.verify_samples import VerifyQuestion

    _, samples = dataset
    questions = read_training_samples(verify_file(samples, tmp_path))
    assert all(isinstance(q, VerifyQuestion) for q in questions) and len(questions) == 3 * len(samples)
    qwen = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    question = questions[1]
    inference_inputs, _ = qwen._encode([qwen._conversation(Image.open(question.image).convert("RGB"),
                                                           question.prompt())])
    batch = collator([question, questions[0]])
    answer_length = batch["logits_to_keep"] - 1
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    assert torch.equal(row[:-answer_length], inference_inputs["input_ids"][0])
    labels = [collator.tokenizer.decode(r[r != IGNORE_INDEX]) for r in batch["labels"]]
    assert labels == [question.answer + "<|im_end|>", questions[0].answer + "<|im_end|>"]
    assert {q.answer for q in questions} == {"Yes", "No"} and batch["answer_options"] == [
        question.answer_index, questions[0].answer_index]


def test_training_on_verification_samples_changes_verify(dataset, tiny_qwen2_vl, tmp_path):
    _, samples = dataset
    train_file = verify_file(samples, tmp_path)
    summary = train(config_for(tiny_qwen2_vl, train_file, tmp_path / "run", eval_file=str(train_file), max_steps=4))
    assert training_steps(tmp_path / "run" / "log.jsonl") == [1, 2, 3, 4]
    assert 0.0 <= summary["eval_accuracy"] <= 1.0
    base = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")
    tuned = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu", adapter=summary["adapter_dir"])
    sample = samples[0]
    assert not np.allclose(base.verify(sample.image, sample.expression, sample.detections()),
                           tuned.verify(sample.image, sample.expression, sample.detections()), atol=1e-4)


def test_a_diverging_run_stops_before_any_checkpoint_of_nan_weights(dataset, tiny_qwen2_vl, tmp_path):
    train_file, _ = dataset
    config = config_for(tiny_qwen2_vl, train_file, tmp_path / "run", learning_rate=1e308, max_steps=3,
                        warmup_ratio=0.0, max_grad_norm=0.0, save_every=1)
    with pytest.raises(UserInputError, match=r"after step \d+, \d+ trained tensors hold NaN|became nan at step \d+"):
        train(config)
    saved = list((tmp_path / "run" / "checkpoints").glob("checkpoint-*/adapter_model.safetensors"))
    assert all(torch.isfinite(tensor).all() for file in saved for tensor in load_file(file).values())
    assert not (tmp_path / "run" / "adapter").exists()
