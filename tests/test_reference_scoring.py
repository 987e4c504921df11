"""The authors' evaluators' scoring quirks as ``agent-cli score`` options, and a reference-profile
``agent-cli eval`` run end to end: extraction over the dataset's own batches (a local fake server
stands in for gpt-3.5-turbo), dropped batches recorded as ``extraction_failed``, the report."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from agent.cli import main
from tests import reference_scripts as scripts
from tests.fake_openai_server import FakeChatServer, completion
from tests.helpers import annotation, image_entry, negative_fields, write_json, write_lines
from tools.evaluation import read_predictions

IOU_HALF = [0, 0, 10, 20]  # IoU with the target [0, 0, 10, 10] is exactly 0.5


def score(capsys, annotations, predictions, *options):
    assert main(["score", "--format", "finecops-ref", "--annotations", str(annotations), "--predictions",
                 str(predictions), "--json", *options]) == 0
    return json.loads(capsys.readouterr().out)


def test_strict_iou_and_folded_levels(capsys, tmp_path):
    data = {"images": [image_entry(1), image_entry(2), image_entry(3)],
            "annotations": [annotation(1, 1, [0, 0, 10, 10], level=1), annotation(2, 2, [0, 0, 10, 10], level=3),
                            annotation(3, 3, [0, 0, 10, 10], level=2)]}
    annotations = write_json(tmp_path, "finecops.json", data)
    predictions = write_lines(tmp_path / "p.jsonl", [{"id": i, "boxes": [IOU_HALF], "scores": [0.5]} for i in (1, 2, 3)])
    plain = score(capsys, annotations, predictions)
    assert plain["precision_at_1"] == {"1": 100.0, "2": 100.0, "3": 100.0, "all": 100.0}
    strict = score(capsys, annotations, predictions, "--iou-strict")  # evaluation_SFA.py: IoU > 0.5
    assert strict["precision_at_1"]["all"] == 0.0
    folded = score(capsys, annotations, predictions, "--fold-level-3")
    assert folded["counts"]["positives"] == {"1": 1, "2": 2, "3": 0, "all": 3}


def crs_record(sample_id, text, proposals, options):
    letter = scripts.extract_option(text.upper()) if len(text) != 1 else text.upper()
    chosen = options["ABCDE".index(letter)] if letter and letter in "ABCDE"[:len(options)] else None
    return {"id": sample_id, "boxes": [chosen] if chosen else [[0, 0, 0, 0]], "scores": [0.6 if chosen else 0.0],
            "path": "crs", "selection": {"text": text, "read_letter": letter, "letter": letter},
            "proposals": {"boxes": proposals, "scores": [0.5] * len(proposals)}}


def test_raw_letters_score_as_evaluation_crs_pos(capsys, tmp_path):
    rng = random.Random(4)
    images, annotations, records, hits = [], [], [], {1: 0, 2: 0}
    counts = {1: 0, 2: 0}
    for i in range(60):
        target = [rng.randint(0, 40), rng.randint(0, 40), rng.randint(10, 40), rng.randint(10, 40)]
        level = rng.choice([1, 2, 3])
        images.append(image_entry(i))
        annotations.append(annotation(i, i, target, level=level))
        near = [target[0], target[1], target[0] + target[2], target[1] + target[3]]
        shifts = [rng.choice([0, 0, 30]) for _ in range(rng.randint(1, 10))]
        proposals = [[v + shift for v in near] for shift in shifts]
        options = proposals[::2][:5]  # what NMS kept, in order
        text = rng.choice(["A", "B", "C", "D", "E", "The answer is B.", "b, a dog", "none"])
        records.append(crs_record(i, text, proposals, options))
        box = scripts.positive_box(text, proposals)
        folded = 2 if level == 3 else level
        counts[folded] += 1
        hits[folded] += _iou(box, near) >= 0.5
    annotations_file = write_json(tmp_path, "finecops.json", {"images": images, "annotations": annotations})
    result = score(capsys, annotations_file, write_lines(tmp_path / "p.jsonl", records), "--crs-letters", "raw",
                   "--fold-level-3")
    for level in (1, 2):
        assert result["precision_at_1"][str(level)] == pytest.approx(100 * hits[level] / counts[level])
    as_answered = score(capsys, annotations_file, tmp_path / "p.jsonl")
    assert as_answered["precision_at_1"]["all"] != result["precision_at_1"]["all"]


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_raw_letters_need_recorded_proposals_and_apply_to_finecops_only(capsys, tmp_path):
    annotations = write_json(tmp_path, "finecops.json", {"images": [image_entry(1)],
                                                          "annotations": [annotation(1, 1, [0, 0, 10, 10], level=1)]})
    old = write_lines(tmp_path / "old.jsonl", [{"id": 1, "boxes": [[0, 0, 10, 10]], "scores": [0.9], "path": "crs",
                                                "selection": {"letter": "A"}}])
    assert main(["score", "--format", "finecops-ref", "--annotations", str(annotations), "--predictions", str(old),
                 "--crs-letters", "raw"]) == 2
    assert "records no detector proposals" in capsys.readouterr().err
    assert main(["score", "--format", "refcoco", "--annotations", str(annotations), "--predictions", str(old),
                 "--iou-strict"]) == 2
    assert "--iou-strict applies to finecops-ref" in capsys.readouterr().err


def test_samples_whose_extraction_failed_are_misses_or_left_out(capsys, tmp_path):
    data = {"images": [image_entry(1), image_entry(2), image_entry(3)],
            "annotations": [annotation(1, 1, [0, 0, 10, 10], level=1), annotation(2, 2, [0, 0, 10, 10], level=1),
                            annotation(3, 3, [0, 0, 0, 0], level=1, **negative_fields(2))]}
    annotations = write_json(tmp_path, "finecops.json", data)
    predictions = write_lines(tmp_path / "p.jsonl", [
        {"id": 1, "boxes": [[0, 0, 10, 10]], "scores": [0.9]},
        {"id": 2, "boxes": [], "scores": [], "extraction_failed": True},
        {"id": 3, "boxes": [], "scores": []}])
    assert score(capsys, annotations, predictions)["precision_at_1"]["all"] == 50.0
    left_out = score(capsys, annotations, predictions, "--exclude-extraction-failed")
    assert left_out["precision_at_1"]["all"] == 100.0 and left_out["counts"]["negatives"] == 0
    assert left_out["counts"]["extraction_failed_excluded"] == 2 and left_out["counts"]["unmatched_predictions"] == 0


@pytest.fixture
def small_finecops(tmp_path):
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    image.paste((200, 30, 30), (10, 40, 40, 100))
    image.save(tmp_path / "image.png")
    images = [image_entry(100 + i, f"the red cup number {i}", "image.png", 160, 120) for i in range(11)]
    annotations = [annotation(i, 100 + i, [10, 40, 30, 60], level=1 + i % 3) for i in range(11)]
    return write_json(tmp_path, "finecops.json", {"images": images, "annotations": annotations}), tmp_path


def test_a_reference_eval_extracts_over_the_datasets_batches_and_records_what_was_dropped(
        small_finecops, tiny_mm_grounding_dino, tiny_qwen2_vl, monkeypatch, tmp_path, capsys):
    annotations, root = small_finecops

    def respond(body, attempt):
        batch = json.loads(body["messages"][-1]["content"])
        if "108" in batch:
            return completion("I'm sorry, I can't help with that.")  # this whole batch is dropped
        return completion(json.dumps({key: "the red cup" for key in batch}))

    with FakeChatServer(respond) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        output = tmp_path / "run"
        arguments = ["eval", "--format", "finecops-ref", "--annotations", str(annotations), "--image-root", str(root),
                     "--output", str(output), "--profile", "reference", "--strategy", "sfa", "--llm",
                     "openai:gpt-3.5-turbo", "--detector", str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl),
                     "--device", "cpu"]
        assert main(arguments) == 0
        asked = [list(json.loads(body["messages"][-1]["content"])) for body in server.requests]
        # The script's batches: eight consecutive samples, keyed by their ids (asked concurrently).
        assert sorted(asked) == [[str(100 + i) for i in range(8)], ["108", "109", "110"]]
        predictions = {p.id: p for p in read_predictions(output / "predictions.jsonl")}
        assert [i for i, p in predictions.items() if p.fields.get("extraction_failed")] == [108, 109, 110]
        assert predictions[100].fields["target"] == "the red cup" and "error" not in predictions[108].fields
        replies = json.loads((output / "extraction-replies.json").read_text())["batches"]
        assert sorted(replies) == ["0", "1"] and "sorry" in replies["1"]["reply"]
        metrics = json.loads((output / "metrics.json").read_text())
        assert metrics["extraction_failed"] == 3 and metrics["errors"] == 0
        assert metrics["reference_evaluator"]["script"] == "SFA/evaluation_SFA.py"
        assert metrics["reference_evaluator"]["extraction_failed_excluded"] == 3
        assert "the authors' SFA/evaluation_SFA.py would report" in capsys.readouterr().out
        # A resumed run asks no batch again.
        lines = (output / "predictions.jsonl").read_text().splitlines()
        (output / "predictions.jsonl").write_text("\n".join(lines[:5]) + "\n")
        assert main(arguments) == 0 and len(server.requests) == 2


def test_the_shards_of_a_reference_run_ask_each_extraction_batch_once(
        small_finecops, tiny_mm_grounding_dino, tiny_qwen2_vl, monkeypatch, tmp_path):
    annotations, root = small_finecops
    with FakeChatServer(lambda body, attempt: completion(json.dumps(
            {key: "the red cup" for key in json.loads(body["messages"][-1]["content"])}))) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
        output = tmp_path / "run"
        for shard in ("0/2", "1/2"):
            assert main(["eval", "--format", "finecops-ref", "--annotations", str(annotations), "--image-root",
                         str(root), "--output", str(output), "--profile", "reference", "--strategy", "sfa", "--llm",
                         "openai:gpt-3.5-turbo", "--detector", str(tiny_mm_grounding_dino), "--mllm",
                         str(tiny_qwen2_vl), "--device", "cpu", "--shard", shard]) == 0
        assert len(server.requests) == 2  # the two batches, asked by the first shard, read by the second
    assert len(read_predictions(output / "predictions.jsonl")) == 11


def test_a_limited_reference_crs_run_reports_the_positive_evaluator_without_cut_off_negatives(
        tiny_mm_grounding_dino, tiny_qwen2_vl, tmp_path, capsys):
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    image.save(tmp_path / "image.png")
    images = [image_entry(i, "the red cup", "image.png", 160, 120) for i in range(1, 5)]
    # --limit 3 keeps the negative 2 but not its positive 4: it cannot be scored.
    annotations = [annotation(1, 1, [10, 40, 30, 60], level=3),
                   annotation(2, 2, [0, 0, 0, 0], level=1, **negative_fields(4)),
                   annotation(3, 3, [10, 40, 30, 60], level=1), annotation(4, 4, [10, 40, 30, 60], level=1)]
    annotations_file = write_json(tmp_path, "finecops.json", {"images": images, "annotations": annotations})
    output = tmp_path / "run"
    assert main(["eval", "--format", "finecops-ref", "--annotations", str(annotations_file), "--image-root",
                 str(tmp_path), "--output", str(output), "--profile", "reference", "--strategy", "crs", "--detector",
                 str(tiny_mm_grounding_dino), "--mllm", str(tiny_qwen2_vl), "--device", "cpu", "--limit", "3"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    evaluation = metrics["reference_evaluator"]
    assert evaluation["script"] == "CRS/evaluation_CRS_pos.py"
    assert evaluation["options"] == {"fold_level_3": True, "crs_letters": "raw"}
    assert set(evaluation["precision_at_1"]) == {"1", "2", "3", "all"} and metrics["counts"]["positives"]["3"] == 1
    prediction = read_predictions(output / "predictions.jsonl")[0]
    assert prediction.fields["selection"]["text"] is not None and len(prediction.fields["proposals"]["boxes"]) == 10
    assert "the authors' CRS/evaluation_CRS_pos.py would report" in capsys.readouterr().out
