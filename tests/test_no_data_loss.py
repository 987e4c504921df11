"""No command destroys its own inputs or another command's files (issue 26, part 1 of its items):
calibrate's settings file and plot, fine-tuning into a folder that holds a run, NaN training
settings and losses, and an empty REX_API_KEY that would switch the server's authentication off."""

from __future__ import annotations

import math

import pytest

from agent.cli import main
from tests.helpers import grec_split, verification_run


@pytest.fixture
def calibration_inputs(tmp_path):
    return grec_split(tmp_path), verification_run(tmp_path)


def calibrate(annotations, run, *extra):
    return main(["calibrate", "--format", "grec", "--annotations", str(annotations), "--predictions",
                 str(run / "predictions.jsonl"), *map(str, extra)])


@pytest.mark.parametrize("target", ["predictions.jsonl", "run.json", "annotations"])
def test_calibrate_never_writes_over_its_inputs(calibration_inputs, capsys, target):
    annotations, run = calibration_inputs
    path = annotations if target == "annotations" else run / target
    before = path.read_bytes()
    assert calibrate(annotations, run, "--output", path, "--force") == 2
    assert path.read_bytes() == before
    error = capsys.readouterr().err
    assert "must end in .toml" in error or "is one of the inputs" in error


def test_calibrate_replaces_only_what_it_wrote_itself(calibration_inputs, tmp_path, capsys):
    annotations, run = calibration_inputs
    report = run / "report.png"  # an eval's chart, beside the settings file calibrate would write
    report.write_bytes(b"an eval's chart")
    assert calibrate(annotations, run, "--output", run / "report.toml") == 2
    assert report.read_bytes() == b"an eval's chart" and "was not written by agent-cli calibrate" in capsys.readouterr().err
    settings = tmp_path / "mine.toml"
    assert calibrate(annotations, run, "--output", settings) == 0
    assert calibrate(annotations, run, "--output", settings) == 0  # its own files: replaced without --force
    other = tmp_path / "notes.toml"
    other.write_text("[agent]\nstrategy = 'crs'\n")
    assert calibrate(annotations, run, "--output", other) == 2
    assert calibrate(annotations, run, "--output", other, "--force") == 0
    assert calibrate(annotations, run, "--output", tmp_path / "x.toml", "--plot", tmp_path / "plot.txt") == 2
    assert "must end in .png" in capsys.readouterr().err


def test_calibrate_checks_that_it_can_write_before_any_work(calibration_inputs, tmp_path, capsys):
    annotations, run = calibration_inputs
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert calibrate(annotations, run, "--output", blocker / "sub" / "x.toml") == 2
    assert "cannot write" in capsys.readouterr().err


def test_finetune_refuses_a_folder_holding_another_run_and_nan_settings(tmp_path, capsys):
    from finetune.train import TrainConfig, train
    from tools.errors import UserInputError

    (tmp_path / "run" / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    train_file = tmp_path / "samples.jsonl"
    train_file.write_text("")
    config = TrainConfig(model="x", train_file=str(train_file), output_dir=str(tmp_path / "run"))
    with pytest.raises(UserInputError, match="holds another fine-tuning run.*--resume latest.*--force"):
        train(config)
    for name in ("weight_decay", "warmup_ratio", "max_grad_norm", "epochs", "lora_dropout"):
        with pytest.raises(UserInputError, match=f"{name} must be a finite number"):
            train(TrainConfig(**{**config.__dict__, name: math.nan, "output_dir": str(tmp_path / "new")}))


def test_a_non_finite_loss_or_weights_stop_training_naming_the_step():
    import torch

    from finetune.trainer import FiniteLossGuard, check_finite_weights
    from tools.errors import UserInputError

    class State:
        global_step = 7

    with pytest.raises(UserInputError, match="loss became nan at step 7"):
        FiniteLossGuard().on_log(None, State(), None, logs={"loss": float("nan")})
    FiniteLossGuard().on_log(None, State(), None, logs={"loss": 0.5})
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(UserInputError, match="after step 3, 1 trained tensors hold NaN"):
        check_finite_weights(model, 3)


def test_an_empty_api_key_in_the_environment_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("REX_API_KEY", "")
    assert main(["serve", "--strategy", "specialist", "--detector", "nowhere"]) == 2
    assert "the API key (--api-key or REX_API_KEY) is empty" in capsys.readouterr().err


def test_a_sharded_and_an_unsharded_run_never_share_an_output_folder(tmp_path, capsys):
    from agent.evaluation.run import RUN_LOCK
    from tests.helpers import annotation, image_entry, write_json
    from tools.files import exclusive_lock

    annotations = write_json(tmp_path, "f.json", {"images": [image_entry(1)],
                                                   "annotations": [annotation(1, 1, [0, 0, 10, 10], level=1)]})
    output = tmp_path / "run"
    output.mkdir()
    common = ["eval", "--format", "finecops-ref", "--annotations", str(annotations), "--output", str(output),
              "--detector", str(tmp_path / "none"), "--mllm", str(tmp_path / "none"), "--device", "cpu"]
    with exclusive_lock(output / RUN_LOCK, "an unsharded run"):  # one is running
        assert main([*common, "--shard", "0/2"]) == 2
    assert "another run" in capsys.readouterr().err
    with exclusive_lock(output / RUN_LOCK, "a shard", shared=True):  # a shard is running
        assert main(common) == 2
    assert "another run" in capsys.readouterr().err


def test_careless_dataset_and_prediction_values_are_one_line_errors(tmp_path, capsys):
    from tests.helpers import annotation, image_entry, negative_fields, write_json

    superscript = write_json(tmp_path, "levels.json", {"images": [image_entry(1)],
                                                        "annotations": [annotation(1, 1, [0, 0, 9, 9], level="²")]})
    orphan = write_json(tmp_path, "orphan.json", {"images": [image_entry(1), image_entry(2)], "annotations": [
        annotation(1, 1, [0, 0, 9, 9], level=1), annotation(2, 2, [0, 0, 0, 0], level=1, **negative_fields(7))]})
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": 1, "boxes": [], "scores": [], "answer_logprob": "x"}\n')
    common = ["--format", "finecops-ref", "--detector", str(tmp_path / "none"), "--device", "cpu"]
    assert main(["eval", "--annotations", str(superscript), "--output", str(tmp_path / "a"), *common]) == 2
    assert "must be an integer, got '²'" in capsys.readouterr().err
    assert main(["eval", "--annotations", str(orphan), "--output", str(tmp_path / "b"), *common]) == 2
    assert "refers to positive_id 7" in capsys.readouterr().err
    assert not (tmp_path / "b" / "predictions.jsonl").exists()  # refused before any sample ran
    assert main(["score", "--format", "finecops-ref", "--annotations", str(orphan), "--predictions", str(predictions),
                 "--confidence", "reference"]) == 2
    assert "field 'answer_logprob' must be a finite number" in capsys.readouterr().err


def test_detect_cleans_its_text_as_locate_does(tiny_mm_grounding_dino, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    assert main(["detect", str(tmp_path / "a.png"), "the cup \ud800", "--detector", str(tiny_mm_grounding_dino),
                 "--device", "cpu", "--json"]) == 0  # a lone surrogate is a space, as in locate
    capsys.readouterr()


@pytest.mark.parametrize("kind", ["file", "empty folder"])
def test_an_adapter_that_is_no_adapter_is_refused_before_loading(tiny_qwen2_vl, tmp_path, capsys, kind):
    adapter = tmp_path / "adapter"
    adapter.write_text("x") if kind == "file" else adapter.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    assert main(["locate", str(tmp_path / "a.png"), "the cup", "--strategy", "mllm", "--mllm", str(tiny_qwen2_vl),
                 "--adapter", str(adapter), "--device", "cpu", "--llm", "heuristic"]) == 2
    assert "is not a PEFT adapter folder" in capsys.readouterr().err


# ---------------------------------------------------------------- second review of issue 26

@pytest.mark.parametrize("command", ["locate", "detect"])
def test_save_never_replaces_the_input_image(tmp_path, capsys, command):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    before = image.read_bytes()
    assert main([command, str(image), "the cup", "--save", str(image), "--detector", "./nowhere"]) == 2
    assert image.read_bytes() == before and "is the input image" in capsys.readouterr().err


def test_no_command_writes_its_run_files_over_its_inputs_or_into_folders(tmp_path, capsys):
    from finetune.build_cli import finetune_data
    from finetune.cli import finetune
    from tests.helpers import annotation, image_entry, write_json
    from tools.cli_runner import run_command

    out = tmp_path / "out"
    out.mkdir()
    data = {"images": [image_entry(1)], "annotations": [annotation(1, 1, [0, 0, 9, 9], level=1)]}
    eval_args = ["--format", "finecops-ref", "--output", str(out), "--detector", "./nowhere"]
    for name in ("metrics.json", "report.png", "run.json"):
        annotations = write_json(out, name, data)
        before = annotations.read_bytes()
        assert main(["eval", "--annotations", str(annotations), *eval_args]) == 2
        assert annotations.read_bytes() == before and f"is the {name} this command writes" in capsys.readouterr().err
        annotations.unlink()
    (out / "report.png").mkdir()
    assert main(["eval", "--annotations", str(write_json(tmp_path, "d.json", data)), *eval_args]) == 2
    assert "holds a folder 'report.png' where the command writes a file" in capsys.readouterr().err
    (out / "report.png").rmdir()
    train = out / "log.jsonl"
    train.write_text("{}\n")
    assert run_command(finetune, ["--model", "nowhere", "--train", str(train), "--output", str(out)], "finetune") == 2
    assert train.read_text() == "{}\n" and "is the log.jsonl this command writes" in capsys.readouterr().err
    (out / "loss.png").mkdir()
    assert run_command(finetune, ["--model", "nowhere", "--train", str(tmp_path / "t.jsonl"), "--output", str(out)],
                       "finetune") == 2
    assert "holds a folder 'loss.png'" in capsys.readouterr().err
    report = write_json(out, "report.json", data)
    assert run_command(finetune_data, ["--format", "finecops-ref", "--annotations", str(report), "--output", str(out),
                                       "--detector", "./nowhere"], "finetune-data") == 2
    assert "is the report.json this command writes" in capsys.readouterr().err


def test_file_names_at_the_file_systems_limit(tmp_path, capsys, calibration_inputs):
    from tools.files import write_atomically

    write_atomically(tmp_path / ("x" * 250), "a name near the limit still has a temporary file")
    assert (tmp_path / ("x" * 250)).read_text().startswith("a name")
    annotations, run = calibration_inputs
    assert calibrate(annotations, run, "--output", tmp_path / ("y" * 300 + ".toml")) == 2
    assert "the file name is longer than 255 bytes" in capsys.readouterr().err
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["locate", str(tmp_path / "a.png"), "the cup", "--save", str(tmp_path / ("z" * 300 + ".png")),
                 "--detector", "./nowhere"]) == 2
    assert "longer than 255 bytes" in capsys.readouterr().err


def test_a_calibrated_settings_file_reads_back_with_an_undecodable_path(calibration_inputs, tmp_path):
    import os
    import shutil
    import tomllib

    annotations, run = calibration_inputs
    odd = tmp_path / os.fsdecode(b"cal\x80")  # a byte that is not UTF-8, as a file system may hold
    odd.mkdir()
    copied = shutil.copy(annotations, odd / "split.json")
    output = tmp_path / "calibrated.toml"
    assert calibrate(copied, run, "--output", output) == 0
    settings = tomllib.loads(output.read_text(encoding="utf-8"))  # a TOML error before
    assert "cal\\udc80" in settings["calibration"]["annotations"]  # the byte's escape, as text


def test_an_empty_api_key_from_python_is_refused():
    from agent.serve.options import ServerOptions
    from tools.errors import UserInputError

    for key in ("", "   "):
        with pytest.raises(UserInputError, match="api_key is empty"):
            ServerOptions(api_key=key)


def test_save_never_replaces_another_commands_file(tmp_path, capsys, calibration_inputs):
    from PIL import Image

    run = tmp_path / "evalrun"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "report.png").write_bytes(b"an eval's chart")
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    for command in ("locate", "detect"):
        assert main([command, str(tmp_path / "a.png"), "the cup", "--save", str(run / "report.png"),
                     "--detector", "./nowhere"]) == 2
        assert "would replace a file of an eval run" in capsys.readouterr().err
    assert (run / "report.png").read_bytes() == b"an eval's chart"
    annotations, predictions_run = calibration_inputs
    assert calibrate(annotations, predictions_run, "--output", tmp_path / "c.toml") == 0
    assert main(["locate", str(tmp_path / "a.png"), "the cup", "--save", str(tmp_path / "c.png"),
                 "--detector", "./nowhere"]) == 2  # calibrate's plot
    assert "would replace a file of agent-cli calibrate" in capsys.readouterr().err
    assert calibrate(annotations, predictions_run, "--output", tmp_path / "d.toml", "--config",
                     tmp_path / "missing.toml") == 2
    assert "no such file" in capsys.readouterr().err
