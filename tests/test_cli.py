"""``agent-cli`` end to end, through the real entry point, on tiny checkpoints."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from agent.cli.main import find_phrase, main
from tests.helpers import cli


@pytest.fixture
def image_file(tmp_path, street_image):
    path = tmp_path / "street.png"
    street_image.save(path)
    return path


def test_detect_prints_a_table_and_saves_a_png(capsys, tmp_path, image_file, tiny_mm_grounding_dino):
    out_png = tmp_path / "boxes.png"
    code, out, _ = cli(capsys, "detect", image_file, "the red car", "--detector", tiny_mm_grounding_dino,
                       "--top-k", 3, "--save", out_png)
    assert code == 0
    assert "rank" in out and "score" in out
    with Image.open(out_png) as saved:
        assert saved.format == "PNG" and saved.size == (160, 120)


def test_detect_json_is_parseable_and_has_top_k_boxes(capsys, image_file, tiny_mm_grounding_dino):
    code, out, _ = cli(capsys, "detect", image_file, "the red car on the left", "--focus", "red car",
                       "--detector", tiny_mm_grounding_dino, "--top-k", 4, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["focus"] == [4, 11]
    assert len(result["boxes"]) == len(result["scores"]) == 4
    assert result["scores"] == sorted(result["scores"], reverse=True)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["detect", "{missing}", "a dog"], "no such file"),
        (["detect", "{dir}", "a dog"], "is a directory"),
        (["detect", "{notimage}", "a dog"], "not an image"),
        (["detect", "{image}", "   "], "expression is empty"),
        (["detect", "{image}", "a dog", "--focus", "cat"], "does not occur"),
        (["detect", "{image}", "a dog", "--detector", "./no/such/model"], "no such file or folder"),
        (["detect", "{image}", "a dog", "--device", "cuda:0"], "no CUDA GPU"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, tmp_path, image_file, args, fragment):
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    paths = {"{missing}": tmp_path / "nope.png", "{dir}": tmp_path, "{notimage}": not_image, "{image}": image_file}
    code, _, err = cli(capsys, *[paths.get(a, a) for a in args])
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    code, _, err = cli(capsys, "detect")
    assert code == 2 and "Missing argument" in err


def test_internal_errors_exit_1_with_a_debug_hint(capsys, monkeypatch, image_file, tiny_mm_grounding_dino):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("tools.detectors.GroundingDinoDetector.detect", broken)
    code, _, err = cli(capsys, "detect", image_file, "a dog", "--detector", tiny_mm_grounding_dino)
    assert code == 1 and "boom" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "detect", str(image_file), "a dog", "--detector", str(tiny_mm_grounding_dino)])


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "detect" in done.stdout


def test_find_phrase_is_case_insensitive_and_matches_whole_words():
    assert find_phrase("The Red car", "red CAR") == (4, 11)
    assert find_phrase("the woman next to the man", "man") == (22, 25)
