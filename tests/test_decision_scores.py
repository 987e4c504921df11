"""The scores REX writes are decision-aligned: the released gRefCOCO evaluator, at its defaults
(boxes scoring 0.7 or more), keeps exactly the boxes REX returned, on every sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent import Agent
from agent.evaluation.run import prediction
from agent.cli import main
from tests.helpers import annotation, image_entry, write_json
from tools import Detections
from tools.datasets import Sample
from tools.errors import UserInputError
from tools.evaluation import Prediction, read_predictions
from tools.evaluation.formats import read_dataset
from tools.evaluation.grec import grec_sample_f1, score_grec
from tools.evaluation.predictions import EVALUATOR_FLOOR, WRITTEN_FLOOR, decision_scores

TARGETS = [[10, 10, 40, 90], [50, 10, 80, 90]]


def test_the_mapping_puts_the_decision_threshold_on_the_evaluators_floor():
    np.testing.assert_allclose(decision_scores([0.3, 0.65, 1.0], 0.3), [WRITTEN_FLOOR, 0.85, 1.0], atol=1e-6)
    np.testing.assert_allclose(decision_scores([0.0, 0.5], 0.0), [WRITTEN_FLOOR, 0.85], atol=1e-6)  # no threshold
    assert decision_scores([0.2], 0.3).tolist() == [WRITTEN_FLOOR]  # never below the floor
    assert decision_scores([1.0], 1.0).tolist() == [1.0]


def test_written_scores_stay_above_the_floor_in_the_evaluators_float32_tensors():
    import torch

    written = np.concatenate([decision_scores([0.0, 1e-8, 1e-7, 0.3], 0.0), decision_scores([0.5, 0.5000001], 0.5)])
    # The released evaluator: np.array(prediction["scores"].tolist()) >= 0.7 on a float32 tensor.
    assert (np.array(torch.tensor(written.tolist()).tolist()) >= EVALUATOR_FLOOR).all()


class TwoTargets:
    """A plug-in detector and MLLM whose confident answers lie below the evaluator's 0.7."""

    def detect(self, image, text, focus=None):
        return Detections(TARGETS + [[100, 10, 130, 90]], [0.55, 0.5, 0.1])

    def ground(self, image, expression, focus=None):
        return Detections(TARGETS, [0.6, 0.55])

    def select(self, image, expression, candidates, allow_none=False):
        return [0.46, 0.44, 0.1][: len(candidates)] + ([0.0] if allow_none else [])

    def verify(self, image, expression, candidates):
        return [0.66, 0.62, 0.1][: len(candidates)]


@pytest.mark.parametrize(("strategy", "settings"), [
    ("specialist", {}), ("mllm", {}), ("crs", {}), ("crs", {"crs_mode": "verify"}),
])
def test_answers_the_evaluators_floor_used_to_hide_are_scored_as_returned(tmp_path, strategy, settings):
    """The issue's cases: option probabilities 0.46 / 0.44, p(yes) 0.66 / 0.62, detector boxes at 0.55:
    raw scores gave F1 0 at the released evaluator's defaults."""
    Image.new("RGB", (160, 100)).save(tmp_path / "two.png")
    sample = Sample(1, tmp_path / "two.png", "the two cups", TARGETS)
    plugin = TwoTargets()
    agent = Agent(strategy, detector=plugin, mllm=plugin, extractor="heuristic", allow_none=True, multi="auto",
                  focus=False, **settings)
    result = agent.locate(tmp_path / "two.png", sample.expression)
    assert result.boxes == TARGETS and min(result.scores) < EVALUATOR_FLOOR  # the path's own scores
    written = prediction(sample, result)
    assert (written.scores >= EVALUATOR_FLOOR).all() and written.raw_scores.tolist() == result.scores
    assert score_grec([sample], [written])["f1_precision"] == 100.0


@pytest.fixture(scope="module")
def grec_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("grec")
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    image.paste((200, 30, 30), (10, 40, 40, 100))
    image.paste((30, 200, 30), (70, 30, 110, 90))
    image.save(root / "scene.png")
    captions = ["the red box", "both boxes", "the flying car", "all boxes", "the green box", "the two squares"]
    images = [image_entry(i, caption, "scene.png", 160, 120) for i, caption in enumerate(captions)]
    annotations = [annotation(0, 0, [10, 40, 30, 60]), annotation(1, 1, [10, 40, 30, 60]),
                   annotation(2, 1, [70, 30, 40, 60]), annotation(3, 2, [0, 0, 0, 0], category_id=-1),
                   annotation(4, 3, [10, 40, 30, 60]), annotation(5, 3, [70, 30, 40, 60]),
                   annotation(6, 4, [70, 30, 40, 60]), annotation(7, 5, [10, 40, 30, 60])]
    return write_json(root, "grec.json", {"images": images, "annotations": annotations}), root


@pytest.mark.parametrize("settings", [
    ["--strategy", "specialist"],
    ["--strategy", "mllm"],
    ["--strategy", "sfa"],
    ["--strategy", "crs"],
    ["--strategy", "crs", "--crs-mode", "verify"],
    ["--strategy", "sfa+crs", "--crs-mode", "verify", "--count-mode", "image"],
    ["--strategy", "crs", "--count-mode", "both"],
])
def test_the_released_evaluator_keeps_every_box_of_an_eval_run(grec_split, settings, tiny_mm_grounding_dino,
                                                               tiny_qwen2_vl, tmp_path):
    annotations, root = grec_split
    output = tmp_path / "run"
    assert main(["eval", "--format", "grec", "--annotations", str(annotations), "--image-root", str(root),
                 "--output", str(output), "--detector", str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl),
                 "--llm", "heuristic", "--device", "cpu", "--allow-none", "--multi", "auto", *settings]) == 0
    predictions = read_predictions(output / "predictions.jsonl")
    samples = {sample.id: sample for sample in read_dataset("grec", annotations)}
    for answer in predictions:
        # Every box REX returned reaches the floor: the evaluator keeps all of them.
        _, kept = grec_sample_f1(answer.boxes, answer.scores, samples[answer.id].boxes)
        assert kept == len(answer.boxes) and (answer.scores >= EVALUATOR_FLOOR).all()
        assert len(answer.fields["raw_scores"]) == len(answer.boxes)
    metrics = json.loads((output / "metrics.json").read_text())
    everything = score_grec(list(samples.values()), predictions, score_threshold=0.0)
    assert metrics["f1_precision"] == everything["f1_precision"] and metrics["n_acc"] == everything["n_acc"]
    if "image" in settings:  # both: only where the expression states no number
        assert all(len(p.fields["count_probabilities"]) == 7 for p in predictions)


def test_an_inverted_predicted_box_is_refused_with_its_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "boxes": [[0, 0, 10, 10]], "scores": [0.9]}\n'
                    '{"id": 2, "boxes": [[10, 10, 0, 0]], "scores": [0.9]}\n')
    with pytest.raises(UserInputError, match=r"line 2: field 'boxes': box 0 \[10, 10, 0, 0\] has x2 < x1"):
        read_predictions(path)
    assert Prediction.from_record({"id": 3, "boxes": [[0, 0, 0, 0]], "scores": [0.0]}).boxes.tolist() == [[0, 0, 0, 0]]


def test_a_plug_ins_inverted_box_is_reordered_so_its_predictions_file_stays_readable(tmp_path):
    class Inverted:
        def detect(self, image, text, focus=None):
            return [[40, 40, 10, 10]], [0.9]

    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    result = Agent("specialist", detector=Inverted(), extractor="heuristic", focus=False).locate(tmp_path / "a.png",
                                                                                                 "the cup")
    assert result.boxes == [[10.0, 10.0, 40.0, 40.0]]
    path = tmp_path / "p.jsonl"
    from tools.evaluation import PredictionWriter

    with PredictionWriter(path) as writer:
        writer.write(prediction(Sample(1, tmp_path / "a.png", "the cup", [[10, 10, 40, 40]]), result))
    assert read_predictions(path)[0].boxes.tolist() == [[10.0, 10.0, 40.0, 40.0]]
