"""The bad-input table: every kind of bad input gets its documented answer.

Exit codes and messages through the real CLI entry point; fallbacks through the agent,
recorded in ``Result.fallbacks``; remote failures against a real local socket.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from agent import Agent, Configuration
from agent.cli import main
from tools import Detections, ImageLoadError, load_image
from tools.errors import ModelOutputError, RemoteServiceError, RexError, UserInputError
from tools.mllm import QWEN2_VL
from tools.openai_client import ChatCompletionsClient, RetryPolicy

EXPRESSION = "the red car to the left of the green car"


# ---------------------------------------------------------------- CLI: files, expressions, settings

@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    empty = tmp_path / "empty.png"
    empty.touch()
    config = tmp_path / "broken.toml"
    config.write_text("strategy = ")
    list_config = tmp_path / "list.json"
    list_config.write_text("[1, 2]")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"{good}": good, "{text}": text, "{cut}": truncated, "{empty}": empty, "{dir}": tmp_path,
            "{missing}": tmp_path / "missing.png", "{config}": config,
            "{nodir}": tmp_path / "nowhere" / "out.png", "{txt}": tmp_path / "out.txt",
            "{list}": list_config, "{file}": a_file, "{out}": tmp_path / "out",
            **hostile_configs(tmp_path)}


def hostile_configs(folder):
    """Config files that are not UTF-8, nested past any parser's depth, or wrongly typed."""
    (folder / "latin1.toml").write_bytes("strategy = 'crs' # caf\xe9".encode("latin-1"))
    (folder / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "typed.json").write_text('{"cache_dir": 5}')
    return {"{latin1}": folder / "latin1.toml", "{nested}": folder / "nested.json", "{typed}": folder / "typed.json"}


CLI_CASES = [
    # (arguments, environment, exit code, message fragment)
    (["locate", "{missing}", EXPRESSION], {}, 2, "missing.png: no such file"),
    (["locate", "{dir}", EXPRESSION], {}, 2, "is a directory"),
    (["locate", "{text}", EXPRESSION], {}, 2, "notes.png: not an image file"),
    (["locate", "{cut}", EXPRESSION], {}, 2, "cut.png: corrupt or truncated"),
    (["locate", "{empty}", EXPRESSION], {}, 2, "empty.png: empty file"),
    (["locate", "{good}", EXPRESSION], {"REX_MAX_IMAGE_PIXELS": "1000"}, 2, "over the limit of 1,000"),
    (["locate", "{good}", ""], {}, 2, "the expression is empty"),
    (["locate", "{good}", " \t\n "], {}, 2, "the expression is empty"),
    (["locate", "{good}", "\x00\x07"], {}, 2, "the expression is empty"),
    (["locate", "{good}", EXPRESSION, "--strategy", "fast"], {}, 2, "unknown strategy 'fast'"),
    (["locate", "{good}", EXPRESSION, "--device", "tpu"], {}, 2, "unknown device 'tpu'"),
    (["locate", "{good}", EXPRESSION, "--dtype", "fp8", "--strategy", "specialist", "--no-focus"], {}, 2,
     "unknown dtype 'fp8'"),
    (["locate", "{good}", EXPRESSION, "--detector-dtype", "fp4", "--strategy", "specialist"], {}, 2,
     "unknown dtype 'fp4'"),
    (["locate", "{good}", EXPRESSION, "--profile", "paper"], {}, 2, "unknown profile 'paper'"),
    (["locate", "{good}", EXPRESSION, "--detector", "./nowhere", "--strategy", "specialist", "--no-focus"], {}, 2,
     "'./nowhere': no such file or folder"),
    (["locate", "{good}", EXPRESSION, "--mllm", "./missing-model", "--strategy", "mllm"], {}, 2,
     "'./missing-model': no such file or folder"),
    (["locate", "{good}", EXPRESSION, "--config", "{missing}"], {}, 2, "missing.png: no such file"),
    (["locate", "{good}", EXPRESSION, "--config", "{config}"], {}, 2, "config file"),
    (["locate", "{good}", EXPRESSION], {"REX_MULTI": "maybe"}, 2, "multi='maybe': choose false, true or auto"),
    (["locate", "{good}", EXPRESSION], {"REX_CRS_TOP_K": "lots"}, 2, "crs_top_k='lots' is not a valid int"),
    (["locate", "{good}", EXPRESSION, "--bogus"], {}, 2, "No such option: --bogus"),
    (["detect", "{good}", EXPRESSION, "--focus", "bicycle"], {}, 2, "does not occur"),
    # A --save that could not be written is refused before any model loads (the models here do not exist).
    (["locate", "{good}", EXPRESSION, "--save", "{nodir}", "--detector", "./nowhere"], {}, 2, "no such folder"),
    (["locate", "{good}", EXPRESSION, "--save", "{txt}", "--detector", "./nowhere"], {}, 2,
     "not an image file name"),
    (["detect", "{good}", EXPRESSION, "--save", "{txt}", "--detector", "./nowhere"], {}, 2,
     "not an image file name"),
    # Inputs at fault answer exit 2 in one line, before anything runs.
    (["locate", "{good}", EXPRESSION, "--config", "{list}"], {}, 2, "expected a table of settings"),
    (["locate", "{good}", EXPRESSION], {"REX_MAX_IMAGE_PIXELS": "0"}, 2, "max_image_pixels must be at least 1"),
    (["locate", "{good}", EXPRESSION], {"REX_CACHE_DIR": "@file"}, 2, "is a file, not a folder"),
    (["locate", "{good}", EXPRESSION], {"REX_CRS_TOP_K": "1.7"}, 2, "crs_top_k='1.7' is not a valid int"),
    (["detect", "{good}", EXPRESSION, "--focus", ""], {}, 2, "--focus is empty"),
    (["score", "--format", "grec", "--annotations", "{file}", "--predictions", "{file}", "--score-threshold", "5"],
     {}, 2, "--score-threshold must lie in [0, 1], got 5.0"),
    (["eval", "--format", "finecops-ref", "--annotations", "{file}", "--output", "{file}"], {}, 2,
     "is a file, not a folder"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{out}", "--dataset-name", "../../x"], {}, 2, "a plain file name, without folders"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{out}", "--prompts-dir", "{missing}"], {}, 2, "no such folder"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{file}"], {}, 2, "is a file, not a folder"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--lr", "-1"], {}, 2,
     "the learning rate must be a positive number, got -1.0"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--lr", "nan"], {}, 2,
     "learning_rate must be a finite number, got nan"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--weight-decay", "nan"], {}, 2,
     "weight_decay must be a finite number, got nan"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--epochs", "nan"], {}, 2,
     "epochs must be a finite number, got nan"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--max-grad-norm", "-1"], {}, 2,
     "weight_decay and max_grad_norm must be at least 0"),
    (["finetune", "--model", "x", "--train", "{file}", "--output", "{out}", "--lora-alpha", "-4"], {}, 2,
     "lora_alpha must be a positive number, got -4.0"),
    # Issue 26: hostile and careless inputs answered in one line before any work.
    (["locate", "{good}", EXPRESSION, "--device", "mps"], {}, 2, "device 'mps' is not supported"),
    (["locate", "{good}", EXPRESSION, "--device", "meta"], {}, 2, "device 'meta' is not supported"),
    (["locate", "{good}", EXPRESSION, "--mllm", "openai:"], {}, 2, "mllm='openai:' names no model"),
    (["locate", "{good}", EXPRESSION, "--llm", "openai: "], {}, 2, "llm='openai: ' names no model"),
    (["locate", "{good}", EXPRESSION], {"REX_CONFIG": "{latin1}"}, 2, "not UTF-8 text"),
    (["locate", "{good}", EXPRESSION, "--config", "{nested}"], {}, 2, "nested too deeply"),
    (["locate", "{good}", EXPRESSION, "--config", "{typed}"], {}, 2, "setting cache_dir=5 must be text"),
    (["serve", "--request-timeout", "nan"], {}, 2, "request_timeout must be a finite number, got nan"),
    (["serve", "--max-decoded-mb", "nan"], {}, 2, "--max-decoded-mb must be a finite number, got nan"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{out}", "--dataset-name", "dataset_info"], {}, 2, "not one of build, dataset_info, report"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{out}", "--dataset-name", "x" * 300], {}, 2, "at most 250 bytes"),
    (["finetune-data", "--format", "finecops-ref", "--annotations", "{file}", "--candidates", "{file}",
      "--output", "{out}", "--dataset-name", "a\x01b"], {}, 2, "without control characters"),
]


@pytest.mark.parametrize("args, env, code, fragment", CLI_CASES, ids=[c[3][:30] for c in CLI_CASES])
def test_cli_bad_inputs(capsys, monkeypatch, files, args, env, code, fragment):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for name, value in env.items():
        monkeypatch.setenv(name, str(files["{file}"]) if value == "@file" else str(files.get(value, value)))
    assert main([str(files.get(a, a)) for a in args]) == code
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    if "No such option" not in fragment:
        assert len(err.strip().splitlines()) == 1


def test_cli_without_gpu_names_the_setting_that_helps(capsys, files):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["locate", str(files["{good}"]), EXPRESSION, "--device", "cuda"]) == 2
    assert "no CUDA GPU is available; use --device cpu" in capsys.readouterr().err


# ---------------------------------------------------------------- images in Python

@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "F"])
def test_every_pil_mode_becomes_rgb(mode):
    assert load_image(Image.new(mode, (5, 4))).mode == "RGB"


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((4, 5, 3), np.float32), "must be uint8"),
        (np.zeros((4, 5, 2), np.uint8), "(H, W, 3)"),
        (np.zeros((4, 5, 3, 1), np.uint8), "(H, W, 3)"),
        (np.zeros((0, 5, 3), np.uint8), "zero size"),
    ],
)
def test_bad_arrays(array, fragment):
    with pytest.raises(ImageLoadError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_image(array)


# ---------------------------------------------------------------- model output, through the agent

class Detector:
    def detect(self, image, text, focus=None):
        return Detections([[10, 10, 50, 40], [60, 10, 100, 40]], [0.9, 0.5])


class WritingMLLM:
    """Answers grounding with the given raw text, read by the real Qwen2-VL parser."""

    def __init__(self, answer: str):
        self.answer = answer

    def ground(self, image, expression, focus=None):
        return QWEN2_VL.parse_answer(self.answer, image.size).to_detections()

    def select(self, image, expression, candidates, allow_none=False):
        raise ModelOutputError(f"no option letter in {self.answer!r}")


class Extractor:
    def __init__(self, reply):
        self.reply = reply

    def extract(self, expressions):
        return [self.reply for _ in expressions]


def run_agent(strategy, answer="<|box_start|>(100,200),(500,800)<|box_end|>", extracted="the red car", **settings):
    agent = Agent(strategy, detector=Detector(), mllm=WritingMLLM(answer), extractor=Extractor(extracted),
                  config=Configuration(), **settings)
    return agent.locate(Image.new("RGB", (200, 100)), EXPRESSION)


MODEL_OUTPUT_CASES = [
    # (strategy, answer, extracted target, expected boxes, fallback fragment or None).
    # The detector sees two separate instances, so "sfa" routes to the MLLM (Level 2).
    ("sfa", "I cannot see it.", "the red car", [[10, 10, 50, 40]], "specialist's top box"),
    ("sfa", "<|box_start|>(12,3", "the red car", [[10, 10, 50, 40]], "unusable"),
    ("sfa", "<|box_start|>(10,20),(1500,30)<|box_end|>", "the red car", [[10, 10, 50, 40]], "unusable"),
    ("sfa", "<|box_start|>(500,800),(100,200)<|box_end|>", "the red car", [[20, 20, 100, 80]], None),
    ("sfa", "(100,200),(500,800) and (600,100),(900,300)", "the red car", [[20, 20, 100, 80]], None),
    ("crs", "Maybe the left one?", "the red car", [[10, 10, 50, 40]], "CRS answer was unusable"),
    ("specialist", "", "{{{ nonsense", [[10, 10, 50, 40]], "used the heuristic target"),
    ("specialist", "", "a purple giraffe", [[10, 10, 50, 40]], "used the heuristic target"),
    ("specialist", "", None, [[10, 10, 50, 40]], "used the heuristic target"),
]


@pytest.mark.parametrize("strategy, answer, extracted, boxes, fallback", MODEL_OUTPUT_CASES)
def test_model_output_fallbacks(strategy, answer, extracted, boxes, fallback):
    result = run_agent(strategy, answer, extracted)
    assert result.path == {"sfa": "mllm"}.get(strategy, strategy)
    assert result.boxes == boxes
    if fallback is None:
        assert result.fallbacks == []
    else:
        assert any(fallback in note for note in result.fallbacks), result.fallbacks


def test_unicode_and_emoji_expressions_work():
    result = run_agent("specialist", extracted=None, focus=True)
    assert result.target is not None
    agent = Agent("specialist", detector=Detector(), extractor="heuristic", config=Configuration())
    result = agent.locate(Image.new("RGB", (200, 100)), "le chien 🐶 à gauche de la voiture")
    assert result.target in result.expression and result.boxes == [[10, 10, 50, 40]]


def test_very_long_expression_is_truncated_with_a_warning(tiny_mm_grounding_dino):
    agent = Agent("specialist", detector=str(tiny_mm_grounding_dino), extractor="heuristic", config=Configuration())
    with pytest.warns(UserWarning, match="over the detector's limit"):
        result = agent.locate(Image.new("RGB", (64, 48)), "the dog " + "near the big red car " * 40)
    assert len(result.boxes) == 1


# ---------------------------------------------------------------- remote endpoints and resources

def test_dropped_connections_are_retried_then_reported():
    accepted = []
    listener = socket.create_server(("127.0.0.1", 0))

    def drop_every_connection():
        while len(accepted) < 3:
            connection, _ = listener.accept()
            accepted.append(1)
            connection.recv(65536)
            connection.close()  # no HTTP response at all

    thread = threading.Thread(target=drop_every_connection, daemon=True)
    thread.start()
    client = ChatCompletionsClient(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", "sk-test",
                                   retry=RetryPolicy(max_retries=2, backoff=0.01, timeout=2.0))
    with pytest.raises(RemoteServiceError, match="on each of 3 attempts"):
        client.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    thread.join(timeout=5)
    listener.close()
    assert len(accepted) == 3


def test_gpu_out_of_memory_names_the_settings_that_help(tiny_qwen2_vl, monkeypatch):
    from tools.mllm import QwenVL

    mllm = QwenVL.from_pretrained(str(tiny_qwen2_vl), device="cpu")

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(mllm.model, "forward", out_of_memory)
    candidates = Detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.8])
    with pytest.raises(RexError, match="ran out of GPU memory.*lower max_pixels.*fp16/bf16.*device cpu"):
        mllm.select(Image.new("RGB", (64, 48)), "a dog", candidates)


# ---------------------------------------------------------------- parsers of model output: no surprise exceptions

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agent.answers import as_detections, as_selection  # noqa: E402
from tools.mllm.openai_compat import parse_option_letter  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.integers(1, 8), st.booleans())
def test_option_letter_parser_returns_an_offered_letter_or_a_model_output_error(reply, count, allow_none):
    letters = [chr(ord("A") + i) for i in range(count + int(allow_none))]
    try:
        assert parse_option_letter(reply, letters, allow_none) in letters
    except ModelOutputError:
        pass


plain_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=5) | st.tuples(children, children),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(plain_values)
def test_plug_in_answers_become_detections_or_a_model_output_error(value):
    try:
        detections = as_detections(value, "plug-in")
    except ModelOutputError:
        return
    assert detections.boxes.shape == (len(detections), 4)


@settings(max_examples=200, deadline=None)
@given(plain_values, st.booleans())
def test_plug_in_selections_sum_to_one_or_raise_a_model_output_error(value, allow_none):
    candidates = Detections([[0, 0, 1, 1], [2, 2, 3, 3]], [0.9, 0.5])
    try:
        selection = as_selection(value, candidates, allow_none)
    except ModelOutputError:
        return
    assert selection.probabilities.sum() == pytest.approx(1.0)


# ---------------------------------------------------------------- text that is not text, markup that is not markup

class Utf8Detector:
    """Encodes the text as a tokenizer would: a lone surrogate cannot be encoded."""

    def __init__(self):
        self.texts = []

    def detect(self, image, text, focus=None):
        self.texts.append(text.encode("utf-8"))
        return Detections([[10, 10, 50, 40]], [0.9])


def test_a_lone_surrogate_is_cleaned_like_a_control_character():
    detector = Utf8Detector()
    agent = Agent(strategy="specialist", focus=False, detector=detector)
    result = agent.locate(Image.new("RGB", (64, 48)), "the red car \ud800 on the left")
    assert result.expression == "the red car   on the left" and result.found  # one for one: spans stay valid
    assert detector.texts == [b"the red car   on the left"]


@pytest.mark.parametrize("expression", ["the car [/bold]", "[bold red]the car[/]"])
def test_markup_in_user_text_is_printed_as_written(capsys, tmp_path, files, tiny_mm_grounding_dino, expression):
    save = tmp_path / "out[bold red].png"
    args = ["locate", str(files["{good}"]), expression, "--strategy", "specialist", "--no-focus", "--device", "cpu",
            "--detector", str(tiny_mm_grounding_dino), "--save", str(save)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert repr(expression)[1:-1] in out and f"saved {save}" in out and save.is_file()
    assert main(["detect", str(files["{good}"]), expression, "--detector", str(tiny_mm_grounding_dino)]) == 0
    assert repr(expression)[1:-1] in capsys.readouterr().out


# ---------------------------------------------------------------- silently wrong inputs

def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    gradient = (np.arange(1024).reshape(1, -1).repeat(8, 0) * 64).astype(np.uint16)  # 0 .. 65472
    path = tmp_path / "deep.png"
    Image.fromarray(gradient).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(load_image(path))
    np.testing.assert_array_equal(rgb[..., 0], np.round(gradient / 257).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # clipping made 99.6% of it white
    eight_bit = Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16), mode="I")
    np.testing.assert_array_equal(np.asarray(load_image(eight_bit))[..., 0], np.arange(256).reshape(16, 16))


def test_eval_refuses_an_image_whose_size_is_not_the_annotations(tmp_path):
    from agent.evaluation.run import predict
    from tools.datasets import Sample

    path = tmp_path / "rotated.png"
    Image.new("RGB", (48, 64)).save(path)  # as an EXIF rotation would turn a 64x48 photo
    agent = Agent(strategy="specialist", focus=False, detector=Detector())
    wrong = predict(agent, Sample(1, path, "the cup", np.zeros((0, 4)), image_size=(64, 48)))
    assert wrong.fields["error"].endswith("decodes to 48x64 (EXIF orientation applied) but the annotation says 64x48")
    right = predict(agent, Sample(2, path, "the cup", np.zeros((0, 4)), image_size=(48, 64)))
    assert "error" not in right.fields and len(right.boxes) == 1


# ---------------------------------------------------------------- checkpoints, disks and the Python API

@pytest.fixture
def broken_detectors(tmp_path, tiny_mm_grounding_dino):
    import shutil

    corrupt = shutil.copytree(tiny_mm_grounding_dino, tmp_path / "corrupt")
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    bad_config = shutil.copytree(tiny_mm_grounding_dino, tmp_path / "bad_config")
    (bad_config / "config.json").write_text("{")
    return {"corrupt": corrupt, "bad_config": bad_config}


@pytest.mark.parametrize("which, fragment", [
    ("qwen", "is a qwen2_vl checkpoint; supported detectors: Grounding DINO, MM-Grounding-DINO, OWLv2, Florence-2"),
    ("corrupt", "as a Grounding DINO / MM-Grounding-DINO checkpoint"),
    ("bad_config", "as a detector checkpoint"),
])
def test_a_checkpoint_that_is_not_a_detector_is_one_line(capsys, files, broken_detectors, tiny_qwen2_vl, which,
                                                         fragment):
    folder = tiny_qwen2_vl if which == "qwen" else broken_detectors[which]
    args = ["locate", str(files["{good}"]), EXPRESSION, "--strategy", "specialist", "--no-focus", "--device", "cpu",
            "--detector", str(folder)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_full_disk_names_the_file(capsys):
    import errno

    import typer

    from tools.cli_runner import run_app

    app = typer.Typer()

    @app.command()
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/predictions.jsonl")

    assert run_app(app, [], "demo") == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: no space left on the device writing /data/run/predictions.jsonl; "
                           "free some space and rerun to continue")


@pytest.mark.parametrize("settings, fragment", [
    ({"device": "cdua"}, "unknown device 'cdua'"),
    ({"crs_top_k": 1.7}, "crs_top_k=1.7 is not a valid int"),
    ({"dtype": "fp8"}, "unknown dtype 'fp8'"),
    ({"max_image_pixels": 0}, "max_image_pixels must be at least 1"),
])
def test_python_api_typos_are_refused_before_any_model_loads(settings, fragment):
    with pytest.raises(UserInputError, match=fragment.replace("(", r"\(")):
        Agent(**settings)


def test_a_missing_detector_is_reported_before_the_mllm_loads(capsys, files, tiny_qwen2_vl, monkeypatch):
    from tools.mllm import QwenVL

    loads = []
    monkeypatch.setattr(QwenVL, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
    args = ["locate", str(files["{good}"]), EXPRESSION, "--strategy", "sfa", "--detector", "./nowhere",
            "--mllm", str(tiny_qwen2_vl), "--device", "cpu"]
    assert main(args) == 2
    assert "'./nowhere': no such file or folder" in capsys.readouterr().err and loads == []
