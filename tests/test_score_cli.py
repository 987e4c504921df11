"""``agent-cli score`` through the real entry point, on the hand-computed cases of test_metrics."""

from __future__ import annotations

import json

import pytest

from tests.helpers import annotation, cli, grefcoco_files, image_entry, write_json, write_lines
from tests.helpers import FINECOPS_COCO, FINECOPS_PREDICTIONS


@pytest.fixture
def finecops_files(tmp_path):
    return write_json(tmp_path, "finecops.json", FINECOPS_COCO), write_lines(tmp_path / "predictions.jsonl", FINECOPS_PREDICTIONS)


def test_finecops_json(capsys, finecops_files):
    annotations, predictions = finecops_files
    code, out, _ = cli(capsys, "score", "--format", "finecops-ref", "--annotations", annotations,
                       "--predictions", predictions, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["format"] == "finecops-ref"
    assert result["precision_at_1"] == {"1": 0.0, "2": 100.0, "3": 0.0, "all": pytest.approx(100 / 3)}
    assert result["recall_at_1"] == {"attribute/1/text": 50.0, "replace/1/image": 0.0}
    assert result["auroc"] == pytest.approx(75.0)
    assert result["crs_accuracy"]["negative"] == 25.0


def test_finecops_tables(capsys, finecops_files):
    annotations, predictions = finecops_files
    code, out, _ = cli(capsys, "score", "--format", "finecops-ref", "--annotations", annotations,
                       "--predictions", predictions)
    assert code == 0
    for fragment in ("Precision@k", "Recall@k", "attribute/1/text", "33.33", "AUROC", "75.00", "CRS accuracy"):
        assert fragment in out


def test_grec_json_and_settings(capsys, tmp_path):
    data = {
        "images": [image_entry(0, "both cups"), image_entry(1, "the flying cup")],
        "annotations": [annotation(0, 0, [0, 0, 10, 10]), annotation(1, 0, [20, 0, 10, 10]),
                        annotation(2, 1, [0, 0, 0, 0], category_id=-1)],
    }
    annotations = write_json(tmp_path, "grec.json", data)
    predictions = write_lines(tmp_path / "predictions.jsonl", [
        {"id": 0, "boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "scores": [0.9, 0.8]},
        {"id": 1, "boxes": [[5, 5, 9, 9]], "scores": [0.6]},
    ])
    args = ["score", "--format", "grec", "--annotations", annotations, "--predictions", predictions, "--json"]
    code, out, _ = cli(capsys, *args)
    assert code == 0
    result = json.loads(out)
    assert (result["f1_precision"], result["n_acc"], result["t_acc"]) == (100.0, 100.0, 100.0)
    code, out, _ = cli(capsys, *args, "--score-threshold", "0.5", "--matching", "iou")
    result = json.loads(out)
    assert result["f1_precision"] == 50.0 and result["n_acc"] == 0.0
    assert result["settings"] == {"score_threshold": 0.5, "iou_threshold": 0.5, "matching": "iou"}


def test_grefcoco_release_with_a_split(capsys, tmp_path):
    refs = grefcoco_files(tmp_path)  # val: sentences 10 and 11 (two targets), 12 (no target)
    predictions = write_lines(tmp_path / "predictions.jsonl", [
        {"id": 10, "boxes": [[0, 0, 10, 10], [5, 5, 6, 7]], "scores": [0.9, 0.9]},
        {"id": 11, "boxes": [[0, 0, 10, 10]], "scores": [0.9]},
        {"id": 12, "boxes": [], "scores": []},
    ])
    code, out, _ = cli(capsys, "score", "--format", "grefcoco", "--split", "val", "--annotations", refs,
                       "--predictions", predictions, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["f1_precision"] == pytest.approx(200 / 3) and result["n_acc"] == 100.0 and result["t_acc"] == 100.0


def test_refcoco_table(capsys, tmp_path):
    annotations = write_json(tmp_path, "refcoco.json", {"images": [image_entry(0), image_entry(1)],
                                                        "annotations": [annotation(0, 0, [0, 0, 10, 10]),
                                                                        annotation(1, 1, [0, 0, 10, 10])]})
    predictions = write_lines(tmp_path / "predictions.jsonl", [{"id": 0, "boxes": [[0, 0, 10, 10]], "scores": [0.9]},
                                         {"id": 1, "boxes": [[5, 5, 9, 9]], "scores": [0.9]}])
    code, out, _ = cli(capsys, "score", "--format", "refcoco", "--annotations", annotations,
                       "--predictions", predictions)
    assert code == 0 and "Acc@0.5" in out and "50.00" in out


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--format", "coco"], "unknown dataset format 'coco'"),
        (["--format", "finecops-ref", "--matching", "iou"], "--matching applies to grefcoco, grec only"),
        (["--format", "grec", "--confidence", "reference"],
         "--confidence applies to finecops-ref, ref-adv, ref-reasoning only"),
        (["--format", "finecops-ref", "--split", "val"], "a split applies to grefcoco only"),
        (["--format", "grec", "--matching", "dice"], "unknown matching 'dice'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, finecops_files, extra, fragment):
    annotations, predictions = finecops_files
    code, _, err = cli(capsys, "score", "--annotations", annotations, "--predictions", predictions, *extra)
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_missing_predictions_exit_2_unless_allowed(capsys, tmp_path, finecops_files):
    annotations, _ = finecops_files
    predictions = write_lines(tmp_path / "predictions.jsonl", FINECOPS_PREDICTIONS[1:])
    args = ["score", "--format", "finecops-ref", "--annotations", annotations, "--predictions", predictions]
    code, _, err = cli(capsys, *args)
    assert code == 2 and "1 of 7 samples have no prediction (ids 1)" in err
    code, out, _ = cli(capsys, *args, "--allow-missing")
    assert code == 0 and "1 samples without a prediction (scored as empty)" in out


def test_torn_predictions_file_still_scores(capsys, finecops_files):
    annotations, predictions = finecops_files
    with predictions.open("a") as handle:
        handle.write('{"id": 99, "bo')
    with pytest.warns(UserWarning, match="torn last line"):
        code, out, _ = cli(capsys, "score", "--format", "finecops-ref", "--annotations", annotations,
                           "--predictions", predictions, "--json")
    assert code == 0 and json.loads(out)["counts"]["unmatched_predictions"] == 0
