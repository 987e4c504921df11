"""``agent-cli eval`` end to end on the tiny checkpoints and a small synthetic FineCops-Ref file.

Random weights give meaningless boxes: these tests check the mechanics (resuming after
a real SIGKILL or Ctrl-C, shards, caches, the report files), never accuracy.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from agent import Agent
from agent.backends import Backends
from agent.cli import main
from agent.configuration import Configuration
from agent.evaluation.run import PREDICTIONS_FILE, lock_file, predict
from agent.evaluation.shards import Shard, local_device
from tools.datasets import Sample
from tools.evaluation.formats import read_dataset
from tools.detections import Detections
from tools.detectors import GroundingDinoDetector
from tools.detectors.cache import CachedDetector
from tools.errors import UserInputError
from tools.evaluation import read_predictions
from tools.extraction import LocalChatExtractor

REPO = Path(__file__).resolve().parents[1]
EXPRESSIONS = ("the red car left of the green car", "the blue bus next to the white truck",
               "the small dog under the table", "the man holding a red umbrella")
POSITIVES = 12  # each followed by its negative, plus one sample whose image is missing: 25 samples
BROKEN_ID = 999
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three drawn images; positives of levels 1-3, each followed by a negative of it; one missing image."""
    root = tmp_path_factory.mktemp("finecops")
    colours = (((200, 30, 30), (30, 200, 30)), ((30, 30, 200), (240, 240, 240)), ((240, 240, 40), (120, 60, 20)))
    for index, (left, right) in enumerate(colours):
        image = Image.new("RGB", (160, 120), (90, 120, 160))
        image.paste(left, (10, 40, 40, 100))
        image.paste(right, (70, 30, 110, 90))
        image.save(root / f"image{index}.png")
    images, annotations = [], []

    def add(image_id, caption, file_name, **fields):
        images.append({"id": image_id, "caption": caption, "file_name": file_name, "width": 160, "height": 120})
        annotations.append({"id": len(annotations), "image_id": image_id, "bbox": [10, 40, 30, 60],
                            "category_id": 1, **fields})

    for n in range(POSITIVES):
        file_name, level = f"image{n % 3}.png", 1 + n % 3
        add(100 + n, EXPRESSIONS[n % 4], file_name, level=level)
        add(200 + n, EXPRESSIONS[(n + 1) % 4], file_name, level=level, positive_id=100 + n,
            negative_type=("attribute", "relation")[n % 2], negative_level=1 + n % 2,
            negative_cate=("text", "image")[n % 3 == 0])
    add(BROKEN_ID, "the red car", "missing.png", level=2)
    annotations_file = root / "finecops.json"
    annotations_file.write_text(json.dumps({"images": images, "annotations": annotations}))
    return ["--format", "finecops-ref", "--annotations", str(annotations_file), "--image-root", str(root)]


@pytest.fixture(scope="module")
def models(tiny_mm_grounding_dino, tiny_qwen2_vl):
    return ["--strategy", "sfa+crs", "--llm", "heuristic", "--detector", str(tiny_mm_grounding_dino),
            "--mllm", str(tiny_qwen2_vl), "--device", "cpu"]


def evaluate(output, *args) -> int:
    return main(["eval", "--output", str(output), *map(str, args)])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset, models):
    """One uninterrupted run that the other runs must reproduce."""
    output = tmp_path_factory.mktemp("reference")
    assert evaluate(output, *dataset, *models) == 0
    return output


def answers(output: Path, name: str = PREDICTIONS_FILE) -> list[dict]:
    """The predictions of a run without their timings (the only field that differs between runs)."""
    lines = (output / name).read_text().splitlines()
    return [{key: value for key, value in json.loads(line).items() if key != "timings"} for line in lines]


def scores(output: Path) -> dict:
    metrics = json.loads((output / "metrics.json").read_text())
    return {key: value for key, value in metrics.items() if key not in ("timing", "run")}


def test_full_run_writes_predictions_metrics_csv_and_png(reference, dataset, models, capsys):
    samples = list(read_dataset("finecops-ref", dataset[3]))
    predictions = read_predictions(reference / PREDICTIONS_FILE)
    assert [p.id for p in predictions] == [s.id for s in samples]
    by_id = {p.id: p for p in predictions}
    assert by_id[BROKEN_ID].fields["error"].startswith("ImageLoadError") and len(by_id[BROKEN_ID].boxes) == 0
    answered = by_id[100].fields
    assert answered["level"] in (1, 2) and answered["path"] in ("specialist", "crs") and answered["target"]
    assert {"load_image", "route", "total"} <= set(answered["timings"])

    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["counts"]["positives"]["all"] == POSITIVES + 1 and metrics["counts"]["negatives"] == POSITIVES
    assert set(metrics["precision_at_1"]) == {"1", "2", "3", "all"} and metrics["errors"] == 1
    assert metrics["run"]["agent"]["strategy"] == "sfa+crs" and metrics["run"]["samples"] == len(samples)
    assert metrics["timing"]["steps"]["route"]["samples"] == len(samples) - 1
    assert metrics["timing"]["samples_per_second"] > 0
    rows = dict(line.split(",", 1) for line in (reference / "metrics.csv").read_text().splitlines()[1:])
    assert float(rows["precision_at_1.all"]) == pytest.approx(metrics["precision_at_1"]["all"])
    assert rows["run.agent.strategy"] == "sfa+crs" and "timing.steps.total.median_s" in rows
    assert (reference / "report.png").read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(reference / "report.png") as chart:
        assert chart.width > chart.height > 100

    # Run again: nothing left to answer, the same answers and scores, and where every file went.
    before = answers(reference), scores(reference)
    capsys.readouterr()
    assert evaluate(reference, *dataset, *models) == 0
    out = capsys.readouterr().out
    assert (answers(reference), scores(reference)) == before
    for fragment in ("Precision@k", "Time per step", "1 samples could not be answered",
                     "metrics: ", "metrics csv: ", "chart: ", "predictions: "):
        assert fragment in out


def start(output: Path, dataset, models) -> subprocess.Popen:
    """``agent-cli eval`` as a separate process, as a user starts it."""
    with (output.parent / f"{output.name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "agent.cli", "eval", "--output", str(output), *dataset,
                                 *models], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def wait_for_lines(process: subprocess.Popen, path: Path, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_bytes().count(b"\n") >= count):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no predictions appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_run_resumes_to_the_same_predictions_and_metrics(how, tmp_path, reference, dataset, models):
    output = tmp_path / "run"
    process = start(output, dataset, models)
    try:
        wait_for_lines(process, output / PREDICTIONS_FILE, 2)
        process.send_signal(how)
        code = process.wait(timeout=120)
    finally:  # never leave a run behind when an assertion fails
        if process.poll() is None:
            process.kill()
            process.wait()
    done = len(read_predictions(output / PREDICTIONS_FILE))
    assert 2 <= done < len(answers(reference)), "the signal must land mid-run"
    if how == signal.SIGINT:
        # Stopped after the current sample, saying so in one line.
        log = (tmp_path / "run.log").read_text()
        assert code == 130 and f"interrupted: {done} of {len(answers(reference))} samples done" in log
        assert "run the same command to resume" in log
        assert (output / PREDICTIONS_FILE).read_bytes().endswith(b"\n")
    else:
        assert code == -signal.SIGKILL
    assert evaluate(output, *dataset, *models) == 0
    assert answers(output) == answers(reference)
    assert scores(output) == scores(reference)


def test_a_torn_last_line_is_recomputed(tmp_path, reference, dataset, models):
    output = tmp_path / "run"
    output.mkdir()
    lines = (reference / PREDICTIONS_FILE).read_bytes().splitlines(keepends=True)
    (output / PREDICTIONS_FILE).write_bytes(b"".join(lines[:5]) + lines[5][:20])
    (output / "run.json").write_bytes((reference / "run.json").read_bytes())
    with pytest.warns(UserWarning, match="torn last line"):
        assert evaluate(output, *dataset, *models) == 0
    assert answers(output) == answers(reference)


def test_resuming_with_other_settings_is_refused_unless_forced(tmp_path, reference, dataset, models, capsys):
    output = tmp_path / "run"
    assert evaluate(output, *dataset, *models, "--limit", "2") == 0
    capsys.readouterr()
    other = [*models, "--strategy", "crs"]
    assert evaluate(output, *dataset, *other, "--limit", "3") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "other settings (strategy: 'sfa+crs' there, 'crs' now)" in err and "--force" in err
    assert len(answers(output)) == 2
    assert evaluate(output, *dataset, *other, "--limit", "3", "--force") == 0
    assert "continuing" in capsys.readouterr().err and len(answers(output)) == 3
    assert json.loads((output / "run.json").read_text())["agent"]["strategy"] == "crs"


def test_limit_answers_the_first_samples_and_scores_them(tmp_path, reference, dataset, models):
    output = tmp_path / "run"
    assert evaluate(output, *dataset, *models, "--limit", "5") == 0
    assert answers(output) == answers(reference)[:5]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["counts"]["positives"]["all"] + metrics["counts"]["negatives"] == 5
    assert metrics["run"]["limit"] == 5


def test_shards_merge_into_the_single_run(tmp_path, reference, dataset, models, capsys):
    output = tmp_path / "run"
    assert evaluate(output, *dataset, *models, "--shard", "1/2") == 0
    assert "the process that completes the last shard merges" in capsys.readouterr().out
    assert not (output / PREDICTIONS_FILE).exists()
    assert answers(output, "predictions.shard-1-of-2.jsonl") == answers(reference)[1::2]
    assert evaluate(output, *dataset, *models, "--shard", "0/2") == 0
    assert answers(output) == answers(reference)
    assert scores(output) == scores(reference)


def test_accelerate_launch_runs_one_shard_per_process_and_merges(tmp_path, reference, dataset, models):
    # The README's multi-GPU command, with two processes on the CPU: accelerate's launcher
    # sets RANK / WORLD_SIZE, each process answers its shard, the last one done merges.
    output = tmp_path / "run"
    launcher = Path(sys.executable).parent / "accelerate"
    # A free port, not torch's fixed 29500: another process group on this machine cannot collide.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               "-m", "agent.cli.eval", "--output", str(output), *dataset, *models]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {path.name for path in output.glob("predictions.shard-*")} == {
        "predictions.shard-0-of-2.jsonl", "predictions.shard-1-of-2.jsonl"}
    assert answers(output, "predictions.shard-1-of-2.jsonl") == answers(reference)[1::2]
    assert answers(output) == answers(reference)
    assert scores(output) == scores(reference)


def test_a_second_strategy_reuses_the_cached_detections(tmp_path, dataset, models, monkeypatch, capsys):
    asked: list[str] = []
    original = GroundingDinoDetector.detect_many

    def counting(self, image, texts, focuses=None):
        asked.extend(texts)
        return original(self, image, texts, focuses)

    monkeypatch.setattr(GroundingDinoDetector, "detect_many", counting)
    cache = ["--cache-dir", str(tmp_path / "cache"), "--limit", "6"]
    # sfa+crs detects the target phrase and the full expression of every sample ...
    assert evaluate(tmp_path / "sfa+crs", *dataset, *models, *cache) == 0
    assert len(asked) == 12
    first = answers(tmp_path / "sfa+crs")
    # ... so crs and sfa, which ask a subset of those questions, never reach the detector.
    for strategy in ("crs", "sfa"):
        asked.clear()
        capsys.readouterr()
        assert evaluate(tmp_path / strategy, *dataset, *models, "--strategy", strategy, *cache) == 0
        assert asked == [] and ", 0 computed" in capsys.readouterr().out
    # A cached answer is the answer: sfa routes like sfa+crs and answers level 1 the same way.
    sfa = answers(tmp_path / "sfa")
    assert [a["level"] for a in sfa] == [a["level"] for a in first]
    assert [a for a in sfa if a["level"] == 1] == [a for a in first if a["level"] == 1]
    assert len(list((tmp_path / "cache" / "detections").rglob("*.npz"))) == 12
    # The report of the last run compares it with another.
    assert evaluate(tmp_path / "sfa", *dataset, *models, "--strategy", "sfa", *cache,
                    "--compare", tmp_path / "sfa+crs") == 0
    assert "sfa+crs (sfa+crs)" in capsys.readouterr().out


def test_cached_detector_keys_on_model_pixels_text_and_focus_and_survives_a_damaged_file(tmp_path):
    class Counting:
        def __init__(self):
            self.asked = []

        def detect_many(self, image, texts, focuses):
            self.asked += list(zip(texts, focuses))
            return [Detections([[0, 0, 5, 5]], [len(text) / 100]) for text in texts]

    detector = Counting()
    cached = CachedDetector(detector, tmp_path, "tiny dtype=auto")
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    first = cached.detect_many(red, ["a cup", "a cup", "a big mug"], [None, None, (2, 5)])
    assert detector.asked == [("a cup", None), ("a big mug", (2, 5))]
    # The same pixels in another image object, the same queries: all from disk.
    again = cached.detect_many(red.copy(), ["a big mug", "a cup"], [(2, 5), None])
    assert len(detector.asked) == 2 and again[0].scores.tolist() == first[2].scores.tolist() == [0.09]
    # Other pixels, another focus, another model: each a miss.
    cached.detect(Image.new("RGB", (8, 8), (0, 255, 0)), "a cup")
    cached.detect(red, "a big mug", focus=(6, 9))
    CachedDetector(detector, tmp_path, "other dtype=auto").detect(red, "a cup")
    assert len(detector.asked) == 5 and (cached.hits, cached.misses) == (2, 4)
    # A damaged file counts as a miss and is rewritten; writes leave no temporary files.
    for file in tmp_path.rglob("*.npz"):
        file.write_bytes(b"PK\x03\x04")
    cached.detect(red, "a cup")
    cached.detect(red, "a cup")
    assert len(detector.asked) == 6 and not list(tmp_path.rglob("*.tmp"))


def test_model_extraction_answers_are_cached_per_model(tmp_path):
    class TextModel:
        calls = 0

        def generate_text(self, prompt, max_new_tokens=512):
            TextModel.calls += 1
            return '{"1": "green car"}'

    config = Configuration(strategy="specialist", llm="mllm", cache_dir=str(tmp_path))
    for _ in range(2):  # a second run (new backends, same cache folder) does not ask again
        backends = Backends(config, mllm=TextModel())
        assert isinstance(backends.extractor, LocalChatExtractor)
        target, _ = backends.extractor_adapter.extract("the red car left of the green car")
        assert target.phrase == "green car"
    assert TextModel.calls == 1
    (cache_file,) = tmp_path.glob("extraction-*.json")
    assert "Qwen2-VL-7B-Instruct" in cache_file.name


def test_a_crs_rejection_keeps_its_confidence(tmp_path):
    class Detector:
        def detect(self, image, text, focus=None):
            return [[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.4]

    class Rejecting:
        def select(self, image, expression, candidates, allow_none=False):
            return [0.1, 0.1, 0.8]

    Image.new("RGB", (64, 48)).save(tmp_path / "blank.png")
    sample = Sample(id=1, image_path=tmp_path / "blank.png", expression="the cup", boxes=[[0, 0, 5, 5]], level=1)
    agent = Agent("crs", focus=False, detector=Detector(), mllm=Rejecting(), extractor="heuristic", allow_none=True)
    prediction = predict(agent, sample)
    assert len(prediction.boxes) == 0 and prediction.fields["confidence"] == pytest.approx(0.2)
    assert prediction.fields["path"] == "crs"


def test_shards_from_flags_and_from_a_launchers_environment():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).select(list(range(10))) == [1, 5, 9]
    assert Shard(1, 4).file_name == "predictions.shard-1-of-4.jsonl"
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(UserInputError):
            Shard.parse(bad)
    assert Shard.from_environment({"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "0"}) == Shard(2, 3)
    assert Shard.from_environment({"RANK": "0", "WORLD_SIZE": "1"}) is None and Shard.from_environment({}) is None
    # A device the user chose is never changed, nor "auto" outside a launcher.
    assert local_device("cpu", {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == "cpu"
    assert local_device("auto", {}) == "auto"


def test_crs_predictions_carry_the_scripts_log_probabilities_for_reference_scoring(tmp_path, dataset, models,
                                                                                   capsys):
    crs = [*models[2:], "--strategy", "crs", "--profile", "reference", "--allow-none", "--limit", "4"]
    assert evaluate(tmp_path, *dataset, *crs) == 0
    predictions = answers(tmp_path)
    answered = [p for p in predictions if "error" not in p]
    assert answered and all(p["path"] == "crs" and p["answer_logprob"] <= 0 and p["none_logprob"] <= 0
                            for p in answered)
    capsys.readouterr()
    args = ["score", *dataset[:4], "--predictions", str(tmp_path / PREDICTIONS_FILE), "--allow-missing", "--json"]
    assert main([*args, "--confidence", "reference"]) == 0
    assert json.loads(capsys.readouterr().out)["precision_at_1"]["all"] is not None
    assert main([*args, "--confidence", "mine"]) == 2


def specialist_only(models):
    detector = models[models.index("--detector") + 1]
    return ["--strategy", "specialist", "--no-focus", "--detector", detector, "--device", "cpu"]


def test_a_second_eval_on_the_same_output_is_refused_while_the_first_runs(tmp_path, dataset, models, capsys):
    import os

    from tools.files import exclusive_lock

    with exclusive_lock(lock_file(tmp_path / PREDICTIONS_FILE), "the other run"):
        assert evaluate(tmp_path, *dataset, *specialist_only(models)) == 2
    err = capsys.readouterr().err
    assert f"is being written by another process (pid {os.getpid()})" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / PREDICTIONS_FILE).exists()
    assert evaluate(tmp_path, *dataset, *specialist_only(models), "--limit", "2") == 0  # released


def test_retry_errors_answers_again_the_samples_that_failed(tmp_path, dataset, models, capsys):
    root = Path(dataset[dataset.index("--image-root") + 1])
    assert evaluate(tmp_path, *dataset, *specialist_only(models)) == 0
    assert [p["id"] for p in answers(tmp_path) if "error" in p] == [BROKEN_ID]
    assert "count as misses" in capsys.readouterr().out
    Image.open(root / "image0.png").save(root / "missing.png")  # the image is restored
    try:
        assert evaluate(tmp_path, *dataset, *specialist_only(models)) == 0  # a plain resume keeps the error
        assert [p["id"] for p in answers(tmp_path) if "error" in p] == [BROKEN_ID]
        capsys.readouterr()
        assert evaluate(tmp_path, *dataset, *specialist_only(models), "--retry-errors") == 0
    finally:
        (root / "missing.png").unlink()
    assert "retrying 1 samples recorded with an error" in capsys.readouterr().err
    after = answers(tmp_path)
    assert not [p for p in after if "error" in p] and BROKEN_ID in {p["id"] for p in after}
    assert len({p["id"] for p in after}) == len(after)  # nothing answered twice


def test_an_unexpected_failure_of_one_sample_is_recorded_and_an_outage_stops_the_run(tmp_path):
    import numpy as np

    from tools.errors import RemoteServiceError

    class Fragile:
        def detect(self, image, text, focus=None):
            if "bad" in text:
                raise KeyError("a tokenizer-level surprise")
            if "down" in text:
                raise RemoteServiceError("server down")
            return Detections([[0, 0, 5, 5]], [0.9])

    agent = Agent(strategy="specialist", focus=False, detector=Fragile())
    image = tmp_path / "small.png"
    Image.new("RGB", (16, 16)).save(image)
    good, bad = (Sample(i, image, text, np.zeros((0, 4))) for i, text in ((1, "a cup"), (2, "a bad cup")))
    assert predict(agent, good).boxes.tolist() == [[0, 0, 5, 5]]
    assert predict(agent, bad).fields == {"error": "KeyError: 'a tokenizer-level surprise'"}
    with pytest.raises(RemoteServiceError):
        predict(agent, Sample(3, image, "a down cup", np.zeros((0, 4))))
