"""``agent-cli calibrate`` on synthetic score sets whose best thresholds are known by construction."""

from __future__ import annotations

import json

import pytest

from agent.evaluation.calibration import calibrated_on, recorded, relevant_thresholds, rescore
from agent.cli import main
from agent.configuration import Configuration
from agent.finishing import FinishPolicy
from tools.evaluation import PredictionWriter, read_predictions
from tests.helpers import RIGHT, WRONG, grec_split, verification_run







def test_calibration_finds_the_threshold_known_by_construction(tmp_path, capsys):
    annotations = grec_split(tmp_path)
    run = verification_run(tmp_path)
    output = tmp_path / "calibrated.toml"
    code = main(["calibrate", "--format", "grec", "--annotations", str(annotations), "--predictions",
                 str(run / "predictions.jsonl"), "--output", str(output), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert 0.85 < printed["thresholds"]["verify_threshold"] <= 0.9
    assert printed["before"] < 100.0 and printed["after"] == 100.0
    assert set(printed["thresholds"]) == {"verify_threshold"}  # the only threshold these paths read
    assert (tmp_path / "calibrated.png").stat().st_size > 0
    # The file is a settings file the agent loads, recording where it was fitted.
    loaded = Configuration.load(output, env={})
    assert loaded.verify_threshold == printed["thresholds"]["verify_threshold"]
    assert (loaded.strategy, loaded.crs_mode, loaded.multi, loaded.allow_none) == ("crs", "verify", "auto", True)
    assert calibrated_on(output) == str(annotations.resolve())


def test_rescored_predictions_score_as_agent_cli_score_says(tmp_path, capsys):
    annotations = grec_split(tmp_path)
    run = verification_run(tmp_path)
    records = recorded(read_predictions(run / "predictions.jsonl"))
    for threshold in (0.5, 0.88):
        rescored = tmp_path / f"rescored-{threshold}.jsonl"
        with PredictionWriter(rescored) as writer:
            for prediction in rescore(records, FinishPolicy(allow_none=True, multi="auto", verify_threshold=threshold)):
                writer.write(prediction)
        assert main(["score", "--format", "grec", "--annotations", str(annotations), "--predictions", str(rescored),
                     "--json"]) == 0
        scored = json.loads(capsys.readouterr().out)
        assert (scored["f1_precision"] == 100.0) == (threshold == 0.88)


def test_specialist_threshold_and_what_matters():
    from tools.detections import Detections
    from tools.evaluation import Prediction

    prediction = Prediction(1, Detections.empty(), {"path": "specialist", "path_answer": {
        "boxes": [RIGHT, WRONG], "scores": [0.8, 0.4]}})
    records = recorded([prediction])
    assert set(relevant_thresholds(records, FinishPolicy(allow_none=True))) == {"specialist_threshold"}
    assert relevant_thresholds(records, FinishPolicy(allow_none=False)) == {}  # plain REC: always the top box
    boxes = [p.boxes.tolist() for p in rescore(records, FinishPolicy(allow_none=True, specialist_threshold=0.9))]
    assert boxes == [[]]


def test_runs_without_the_recorded_scores_are_refused(tmp_path, capsys):
    annotations = grec_split(tmp_path, count=2)
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps({"id": 0, "boxes": [], "scores": [], "path": "crs"}) + "\n")
    assert main(["calibrate", "--format", "grec", "--annotations", str(annotations), "--predictions",
                 str(old)]) == 2
    assert "lacks the scores calibrate re-chooses boxes from" in capsys.readouterr().err


def test_eval_warns_when_the_dev_file_is_the_test_file(tmp_path, capsys, street_image):
    annotations = grec_split(tmp_path, count=2)
    calibrated = tmp_path / "calibrated.toml"
    calibrated.write_text(f'[agent]\nstrategy = "specialist"\n\n[calibration]\nannotations = "{annotations}"\n')
    street_image.save(tmp_path / "0.jpg")
    street_image.save(tmp_path / "1.jpg")
    main(["eval", "--format", "grec", "--annotations", str(annotations), "--image-root", str(tmp_path),
          "--output", str(tmp_path / "out"), "--config", str(calibrated), "--detector", str(tmp_path / "none")])
    assert "were calibrated on" in capsys.readouterr().err


@pytest.mark.parametrize("format_name", ["grec", "finecops-ref"])
def test_objectives_are_the_documented_ones(format_name):
    from agent.evaluation.calibration import objective
    from tools.evaluation.formats import get_format

    goal = objective(get_format(format_name).metric.name)
    if format_name == "grec":
        assert goal({"f1_precision": 61.9}) == 61.9
    else:
        assert goal({"crs_accuracy": {"positive": 80.0, "negative": 40.0}}) == 60.0
        assert goal({"crs_accuracy": {"positive": 80.0, "negative": None}}) == 80.0


def test_the_fitted_objective_is_what_agent_cli_score_gives(tmp_path, capsys):
    annotations = grec_split(tmp_path)
    run = verification_run(tmp_path, verify_threshold=0.3)
    assert main(["calibrate", "--format", "grec", "--annotations", str(annotations), "--predictions",
                 str(run / "predictions.jsonl"), "--output", str(tmp_path / "c.toml"), "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    for threshold, expected in ((0.3, fitted["before"]), (fitted["thresholds"]["verify_threshold"], fitted["after"])):
        rescored = tmp_path / f"at-{threshold}.jsonl"
        policy = FinishPolicy(allow_none=True, multi="auto", verify_threshold=threshold)
        with PredictionWriter(rescored) as writer:
            for prediction in rescore(recorded(read_predictions(run / "predictions.jsonl")), policy):
                writer.write(prediction)
        assert main(["score", "--format", "grec", "--annotations", str(annotations), "--predictions",
                     str(rescored), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["f1_precision"] == pytest.approx(expected)


def test_an_eval_run_on_tiny_models_carries_what_calibrate_needs(tmp_path, capsys, tiny_mm_grounding_dino,
                                                                  tiny_qwen2_vl):
    from PIL import Image

    annotations = grec_split(tmp_path, count=4)
    for i in range(4):
        Image.new("RGB", (100, 100), (40 * i, 90, 160)).save(tmp_path / f"{i}.jpg")
    common = ["--format", "grec", "--annotations", str(annotations)]
    for mode in ("verify", "choice"):
        run = tmp_path / mode
        assert main(["eval", *common, "--image-root", str(tmp_path), "--output", str(run), "--strategy", "crs",
                     "--crs-mode", mode, "--allow-none", "--multi", "auto", "--crs-permutations", "2",
                     "--detector", str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl), "--llm", "heuristic",
                     "--device", "cpu"]) == 0
        capsys.readouterr()
        lines = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        assert all({"path", "candidates", "expected_count"} <= set(line) for line in lines)
        assert all(("verification" in line) == (mode == "verify") for line in lines)
        assert [line["expected_count"] for line in lines] == [2, 1, 2, 1]  # "both cups", "the flying cup"
        if mode == "choice":
            assert all(line["selection"]["orders"] == 2 for line in lines)
        assert main(["calibrate", *common, "--predictions", str(run / "predictions.jsonl"), "--output",
                     str(tmp_path / f"{mode}.toml"), "--json"]) == 0
        fitted = json.loads(capsys.readouterr().out)
        assert fitted["after"] >= fitted["before"]
        assert set(fitted["thresholds"]) == {"verify_threshold" if mode == "verify" else "multi_ratio"}
