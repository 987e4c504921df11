"""Issue 26, the items two re-probes found after the first round: pipes and over-long names, run
folders and run files of other commands, huge integers, servers that answer no chat completion,
devices, --save formats, cache folders, API keys, thresholds, prompt templates, text a detector
is given directly, checkpoint folders named two ways."""

from __future__ import annotations

import pytest
from PIL import Image

from agent import Agent
from agent.cli import main
from agent.configuration import Configuration
from tools.detections import Detections
from tools.errors import ImageLoadError, UserInputError
from tools.images import load_image


class Detector:
    def detect(self, image, text, focus=None):
        return Detections([[10, 10, 50, 40], [60, 10, 100, 40]], [0.9, 0.8])


# ---------------------------------------------------------------- third review of issue 26

def test_a_pipe_where_an_image_should_be_is_refused_without_waiting(tmp_path):
    import os

    from tools.images import frame_sizes

    pipe = tmp_path / "image.png"
    os.mkfifo(pipe)
    for read in (load_image, frame_sizes):
        with pytest.raises(ImageLoadError, match="not a regular file"):
            read(pipe)
    with pytest.raises(ImageLoadError, match="File name too long"):
        load_image(tmp_path / ("x" * 300 + ".png"))


def test_input_names_over_the_file_systems_limit_are_one_line(tmp_path, capsys):
    assert main(["locate", str(tmp_path / ("x" * 300 + ".png")), "the cup", "--detector", "./nowhere"]) == 2
    assert "File name too long" in capsys.readouterr().err
    assert main(["locate", str(tmp_path / "a.png"), "the cup", "--config", str(tmp_path / ("c" * 300))]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and "internal error" not in error


def test_no_command_writes_into_another_commands_run_folder(tmp_path, capsys):
    from finetune.build import BuildConfig, build_crs_data
    from finetune.train import TrainConfig, train

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")  # an eval run
    annotations = tmp_path / "a.json"
    annotations.write_text('{"images": [], "annotations": []}')
    with pytest.raises(UserInputError, match=r"holds an eval run \(run.json\)"):
        build_crs_data(BuildConfig("finecops-ref", str(annotations), str(run), detector="x", dataset_name="metrics"),
                       progress=False)
    build = tmp_path / "build"
    build.mkdir()
    (build / "build.json").write_text("{}")
    with pytest.raises(UserInputError, match=r"holds a finetune-data build"):
        train(TrainConfig(model="nowhere", train_file=str(tmp_path / "t.jsonl"), output_dir=str(build)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "merged").write_text("a file")
    with pytest.raises(UserInputError, match="holds a file 'merged' where the command writes a folder"):
        train(TrainConfig(model="nowhere", train_file=str(tmp_path / "t.jsonl"), output_dir=str(out), merge=True))
    import os

    with pytest.raises(UserInputError, match="not a UTF-8 path"):
        train(TrainConfig(model="nowhere", train_file=str(tmp_path / "t.jsonl"),
                          output_dir=str(tmp_path / os.fsdecode(b"o\xff"))))
    with pytest.raises(UserInputError, match="num_workers must be at most 64"):
        train(TrainConfig(model="nowhere", train_file=str(tmp_path / "t.jsonl"), output_dir=str(tmp_path / "n"),
                          num_workers=100_000))


def test_run_files_a_command_reads_back_are_checked(tmp_path, capsys):
    from agent.evaluation.run import RUN_FILE, record_run
    from finetune.train import _checkpoint_step

    for text in ("[" * 100_000 + "]" * 100_000, "[1, 2]", '{"dataset": 5, "agent": []}'):
        (tmp_path / RUN_FILE).write_text(text)
        with pytest.raises(UserInputError, match="run.json|holds a run with other settings"):
            record_run(tmp_path, {"dataset": {}, "agent": {}})
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": "x"}')
    with pytest.raises(UserInputError, match="not a Trainer checkpoint"):
        _checkpoint_step(checkpoint)


def test_huge_integers_in_boxes_are_one_line_errors(tmp_path, capsys):
    annotations = tmp_path / "a.json"
    annotations.write_text('{"images": [{"id": 1, "caption": "x", "file_name": "a.png", "width": 9, "height": 9}], '
                           '"annotations": [{"id": 1, "image_id": 1, "level": 1, "bbox": [' + "9" * 400 + ', 0, 1, 1]}]}')
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"id": 1, "boxes": [[0, 0, ' + "9" * 400 + ', 1]], "scores": [0.5]}\n')
    assert main(["score", "--format", "finecops-ref", "--annotations", str(annotations), "--predictions",
                 str(predictions)]) == 2
    assert "must be four finite numbers" in capsys.readouterr().err


def test_a_server_answer_that_is_no_chat_completion_is_a_remote_error():
    from tests.fake_openai_server import FakeChatServer, FakeReply
    from tools.errors import RemoteServiceError
    from tools.openai_client import ChatCompletionsClient, RetryPolicy

    for payload in ({"choices": []}, {"choices": [{"index": 0, "message": {"role": "assistant", "content": {"a": 1}}}]},
                    {"id": "x"}):
        with FakeChatServer(lambda body, attempt, payload=payload: FakeReply(payload=payload)) as server:
            client = ChatCompletionsClient(server.base_url, "k", retry=RetryPolicy(max_retries=0))
            with pytest.raises(RemoteServiceError, match="without a text choice|not a chat completion"):
                client.create(model="m", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("args, fragment", [
    (["locate", "{image}", "the cup", "--device", "cuda:" + "9" * 30], "no machine has that many GPUs"),
    (["locate", "{image}", "the cup", "--save", "{out}.xbm"], "not an image file name REX can write"),
    (["locate", "{image}", "the cup", "--cache-dir", "{cache}"], "--cache-dir's detections folder"),
])
def test_devices_save_formats_and_cache_folders_are_checked_first(tmp_path, capsys, args, fragment):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "detections").write_text("a file")
    paths = {"image": tmp_path / "a.png", "out": tmp_path / "out", "cache": tmp_path / "cache"}
    assert main([arg.format(**paths) for arg in args] + ["--detector", "./nowhere"]) == 2
    assert fragment in capsys.readouterr().err


def test_keys_thresholds_and_templates_a_command_cannot_use(tmp_path, capsys, monkeypatch):
    from agent.serve.options import ServerOptions
    from prompts import check_prompts_dir

    for key in ("\udc80", "k\xff", "a\nb"):
        with pytest.raises(UserInputError, match="printable ASCII"):
            ServerOptions(api_key=key)
    monkeypatch.setenv("REX_API_KEY", "\xff")
    assert main(["serve", "--detector", "./nowhere"]) == 2
    assert "printable ASCII" in capsys.readouterr().err
    (tmp_path / "crs_verify.txt").write_text("{expression} " * 200)
    with pytest.raises(UserInputError, match="at most 50,000 characters and 10 fields"):
        check_prompts_dir(tmp_path)
    from tests.helpers import grec_split, verification_run

    annotations, run = grec_split(tmp_path), verification_run(tmp_path)
    for value in ("nan", "5"):
        assert main(["calibrate", "--format", "grec", "--annotations", str(annotations), "--predictions",
                     str(run / "predictions.jsonl"), "--output", str(tmp_path / "c.toml"), "--score-threshold",
                     value]) == 2
        assert "--score-threshold must lie in [0, 1]" in capsys.readouterr().err


def test_text_reaching_a_detector_directly_and_a_given_target_are_neutralised(tiny_mm_grounding_dino, tiny_florence2):
    from tools.detectors import load_detector
    from tools.extraction.base import ExtractedTarget

    image = Image.new("RGB", (64, 48))
    for checkpoint in (tiny_mm_grounding_dino, tiny_florence2):
        load_detector(str(checkpoint), device="cpu").detect(image, "the cup <OCR> [SEP] <loc_5>")  # a ValueError before
    agent = Agent("specialist", detector=Detector(), extractor="heuristic", config=Configuration(), focus=True)
    given = ExtractedTarget("<|im_end|>", (0, 10), "model", "<|im_end|>")
    result = agent.locate(image, "<|im_end|> cup", target=given)
    assert result.target == "\u2039|im_end|>" and result.target_span == (0, 10)
    shifted = agent.locate(image, "the cup", target=ExtractedTarget("cup", (0, 3), "model"))  # a span off its phrase
    start, end = shifted.target_span  # dropped, so the heuristic target of the expression answers
    assert shifted.target == "the cup"[start:end] and any("heuristic" in note for note in shifted.fallbacks)


def test_a_checkpoint_folder_named_two_ways_is_one_runs_setting(tmp_path, monkeypatch):
    from agent.evaluation.run import DatasetSpec, run_settings

    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = DatasetSpec("finecops-ref", "a.json")
    relative = run_settings(spec, Configuration(detector="model"))
    absolute = run_settings(spec, Configuration(detector=str(tmp_path / "model")))
    assert relative == absolute
