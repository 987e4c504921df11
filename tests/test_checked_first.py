"""Issue 26: what is checked before any work, so that no model loads in vain: prompt folders,
trainer options and numbers, training images, every output path, long URL hosts, deeply
nested and huge-integer files, pixel budgets, server sizes, config types."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent import Agent
from agent.cli import main
from agent.configuration import Configuration
from tests.helpers import annotation, image_entry
from tools.detections import Detections
from tools.errors import UserInputError


class Detector:
    def detect(self, image, text, focus=None):
        return Detections([[10, 10, 50, 40], [60, 10, 100, 40]], [0.9, 0.8])


# ---------------------------------------------------------------- prompt folders and trainer options

@pytest.mark.parametrize("template, fragment", [
    ("Which box? {expression} {colour}", "uses {colour}, which REX does not fill"),
    ("Which box? {}", "uses {}, which REX does not fill"),
    ("Which box? {expression", "expected '}'"),
    ("Which box? {expression:d}", "formats {expression} with a format spec"),
    ("Which box? {expression:>99999999999}", "formats {expression} with a format spec"),
    ("Which box? {expression!r}", "formats {expression} with a format spec or conversion"),
    (b"\xff\xfe", "is not UTF-8 text"),
])
def test_a_prompt_folder_rex_cannot_fill_is_refused_first(tmp_path, capsys, template, fragment):
    from finetune.build_cli import finetune_data
    from prompts import check_prompts_dir
    from tools.cli_runner import run_command

    folder = tmp_path / "prompts"
    folder.mkdir()
    file = folder / "crs_select.txt"
    file.write_bytes(template) if isinstance(template, bytes) else file.write_text(template)
    with pytest.raises(UserInputError, match="crs_select.txt"):
        check_prompts_dir(folder)
    assert run_command(finetune_data, ["--format", "finecops-ref", "--annotations", str(tmp_path / "none.json"),
                                       "--output", str(tmp_path / "out"), "--prompts-dir", str(folder)],
                       "finetune-data") == 2
    assert fragment in capsys.readouterr().err


def test_a_prompt_folder_replaces_only_the_templates_it_has(tmp_path):
    from prompts import check_prompts_dir, load_prompt, render_prompt

    (tmp_path / "crs_verify.txt").write_text("Is it {expression} at {box}?")
    check_prompts_dir(tmp_path)
    assert render_prompt("crs_verify", tmp_path, expression="<|im_end|>", box="[1]") == "Is it \u2039|im_end|> at [1]?"
    assert load_prompt("crs_select", tmp_path) == load_prompt("crs_select")


@pytest.mark.parametrize("option, fragment", [
    ({"attn_implementation": "nope"}, "--attn 'nope': not one of eager, "),
    ({"attn_implementation": "flash_attention_2"}, "its package is not installed"),
    ({"fsdp": "full_shard nonsense"}, "--fsdp 'full_shard nonsense': unknown nonsense"),
    ({"report_to": "nonsense"}, "--report-to 'nonsense': not one of none, all, "),
    ({"report_to": "tensorboard,wandb"}, "is not installed"),
    ({"deepspeed": "ds.json"}, "--deepspeed needs the deepspeed package"),
])
def test_trainer_options_are_checked_before_the_model_loads(tmp_path, monkeypatch, option, fragment):
    import importlib.util

    from finetune import train as train_module
    from finetune.samples import CRSSample, write_samples

    if "tensorboard" in option.get("report_to", "") and importlib.util.find_spec("tensorboard"):
        pytest.skip("tensorboard is installed here")
    (tmp_path / "ds.json").write_text("{}")
    Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    samples = write_samples([CRSSample("1", "a.png", "the cup", ((0, 0, 5, 5), (5, 5, 9, 9)), (10, 10), False, "A")],
                            tmp_path / "train.jsonl")
    monkeypatch.setattr(train_module, "_lora_model", lambda *args: pytest.fail("the model loaded first"))
    config = train_module.TrainConfig(model="nowhere", train_file=str(samples), output_dir=str(tmp_path / "run"),
                                      **option)
    with pytest.raises(UserInputError, match=fragment.replace("(", r"\(")):
        train_module.train(config)


@pytest.mark.parametrize("stored, declared, fragment", [
    (None, (10, 10), "no such file"),
    ((12, 10), (10, 10), "is 12x10, but its image_size says"),
    ((2010, 10), (2010, 10), "more than 200 times longer"),
])
def test_training_images_are_checked_before_the_model_loads(tmp_path, monkeypatch, stored, declared, fragment):
    from finetune import train as train_module
    from finetune.samples import CRSSample, write_samples

    Image.new("RGB", (10, 10)).save(tmp_path / "good.png")
    if stored:
        Image.new("RGB", stored).save(tmp_path / "bad.png")
    boxes = ((0, 0, 5, 5), (5, 5, 9, 9))
    samples = write_samples([CRSSample("1", str(tmp_path / "good.png"), "the cup", boxes, (10, 10), False, "A"),
                             CRSSample("2", str(tmp_path / "bad.png"), "the cup", boxes, declared, False, "A")],
                            tmp_path / "train.jsonl")
    monkeypatch.setattr(train_module, "_lora_model", lambda *args: pytest.fail("the model loaded first"))
    config = train_module.TrainConfig(model="nowhere", train_file=str(samples), output_dir=str(tmp_path / "run"))
    with pytest.raises(UserInputError, match=f"train.jsonl: sample '2': .*{fragment}"):
        train_module.train(config)


# ---------------------------------------------------------------- outputs probed before any work

def test_every_output_path_is_probed_before_any_model_loads(tmp_path, capsys):
    from finetune.build_cli import finetune_data
    from tools.cli_runner import run_command

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    (tmp_path / "d.png").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    locate = ["locate", str(tmp_path / "a.png"), "the cup", "--detector", "./nowhere"]
    assert main([*locate, "--save", str(tmp_path / "d.png")]) == 2
    error = capsys.readouterr().err
    assert "cannot write --save" in error and "it is a folder" in error
    assert main([*locate, "--cache-dir", str(blocker / "cache")]) == 2
    assert "cannot write --cache-dir" in capsys.readouterr().err
    annotations = tmp_path / "data.json"
    annotations.write_text(json.dumps({"images": [image_entry(1)], "annotations": [annotation(1, 1, [0, 0, 9, 9],
                                                                                             level=1)]}))
    assert main(["eval", "--format", "finecops-ref", "--annotations", str(annotations), "--output",
                 str(blocker / "run"), "--detector", "./nowhere"]) == 2
    assert "cannot write output" in capsys.readouterr().err
    assert run_command(finetune_data, ["--format", "finecops-ref", "--annotations", str(annotations),
                                       "--output", str(blocker / "out"), "--detector", "./nowhere"],
                       "finetune-data") == 2
    assert "cannot write output" in capsys.readouterr().err


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    from tools.files import check_output_folder, check_writable

    check_output_folder(tmp_path / "a" / "b")
    check_writable(tmp_path / "c" / "d" / "x.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserInputError, match="it is a folder"):
        check_writable(tmp_path)


# ---------------------------------------------------------------- image URLs

@pytest.mark.parametrize("host, fragment", [("a" * 2000, "longer than 253 characters"),
                                            ("a" * 100 + ".org", "cannot resolve host")])
def test_an_overlong_host_name_is_a_400(host, fragment):
    from agent.serve import ServerOptions, create_app
    from tests.helpers import plugin_agent

    with TestClient(create_app(plugin_agent(), ServerOptions(image_urls=True))) as client:
        response = client.post("/locate", data={"expression": "the cup", "image_url": f"http://{host}/a.png"})
    assert response.status_code == 400 and fragment in response.json()["detail"]


def test_deeply_nested_annotations_or_predictions_are_one_line_errors(tmp_path, capsys):
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": 1, "boxes": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": []}')
    score = ["score", "--format", "finecops-ref", "--predictions", str(predictions), "--annotations"]
    assert main([*score, str(nested)]) == 2
    assert "nested too deeply to be an annotation file" in capsys.readouterr().err
    assert main([*score, str(empty)]) == 2
    assert "p.jsonl: line 1: nested too deeply" in capsys.readouterr().err


def test_the_server_answers_a_too_narrow_image_400_and_markup_as_text():
    import io

    from agent.serve import create_app
    from tests.helpers import plugin_agent, png

    narrow = io.BytesIO()
    Image.new("RGB", (1, 5000)).save(narrow, format="PNG")
    with TestClient(create_app(plugin_agent())) as client:
        refused = client.post("/locate", data={"expression": "the cup"}, files={"image": ("a.png", narrow.getvalue())})
        served = client.post("/locate", data={"expression": "the cup <|im_end|>"}, files={"image": ("a.png", png())})
    assert refused.status_code == 400 and "more than 200 times longer" in refused.json()["detail"]
    assert served.status_code == 200 and served.json()["expression"] == "the cup \u2039|im_end|>"


def test_huge_integers_devices_and_missing_image_roots_are_one_line_errors(tmp_path, capsys):
    annotations = tmp_path / "a.json"
    annotations.write_text('{"images": [{"id": ' + "9" * 5000 + '}], "annotations": []}')
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": ' + "9" * 5000 + ', "boxes": [], "scores": []}\n')
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": []}')
    score = ["score", "--format", "finecops-ref", "--predictions"]
    assert main([*score, str(predictions), "--annotations", str(annotations)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert main([*score, str(predictions), "--annotations", str(empty)]) == 2
    assert "p.jsonl: line 1: not valid JSON" in capsys.readouterr().err
    assert main([*score, str(predictions), "--annotations", "/dev/zero"]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert main(["eval", "--format", "finecops-ref", "--annotations", str(empty), "--image-root", str(empty),
                 "--output", str(tmp_path / "run"), "--detector", "./nowhere"]) == 2
    error = capsys.readouterr().err
    assert "--image-root" in error and "is not a folder" in error


@pytest.mark.parametrize("args, fragment", [
    (["--min-pixels", "-1"], "min_pixels must lie in [784, 12845056]"),
    (["--max-pixels", "1"], "max_pixels must lie in [784, 12845056]"),
    (["--min-pixels", "100000000"], "min_pixels must lie in [784, 12845056]"),
    (["--max-patches", "100000"], "max_patches must lie in [1, 64]"),
    (["--min-pixels", "5000", "--max-pixels", "4000"], "must not exceed max_pixels"),
])
def test_pixel_budgets_are_checked_before_any_model_loads(tmp_path, capsys, args, fragment):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["locate", str(tmp_path / "a.png"), "the cup", "--detector", "./nowhere", *args]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("option, fragment", [({"seed": -1}, "seed must lie in"), ({"seed": 2**32}, "seed must lie in"),
                                              ({"lora_rank": 10**8}, "is over 1024"),
                                              ({"max_pixels": 1}, "max_pixels must lie in"),
                                              ({"max_patches": 100000}, "max_patches must lie in")])
def test_training_numbers_out_of_range_are_refused_first(tmp_path, option, fragment):
    from finetune.train import TrainConfig, train

    with pytest.raises(UserInputError, match=fragment):
        train(TrainConfig(model="nowhere", train_file=str(tmp_path / "t.jsonl"), output_dir=str(tmp_path / "o"),
                          **option))


def test_server_sizes_and_config_types_that_are_no_numbers(tmp_path, capsys):
    assert main(["serve", "--max-upload-mb", "inf", "--detector", "./nowhere"]) == 2
    assert "--max-upload-mb must be a finite number" in capsys.readouterr().err
    config = tmp_path / "c.toml"
    config.write_text("crs_top_k = true\n")
    with pytest.raises(UserInputError, match="crs_top_k=True must be a number"):
        Configuration.load(config)


def test_a_given_target_is_cleaned_as_the_expression_is():
    agent = Agent("specialist", detector=Detector(), extractor="heuristic", config=Configuration(), focus=True)
    result = agent.locate(Image.new("RGB", (64, 48)), "the cat <|im_end|> here", target="cat <|im_end|>")
    assert result.target == "cat \u2039|im_end|>" and result.fallbacks == []
