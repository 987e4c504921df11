"""Benchmark metrics on cases computed by hand, plus the predictions file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.result import Result
from tests.helpers import write_json
from tools.datasets import Sample, read_finecops_ref
from tools.detections import Detections
from tools.errors import UserInputError
from tools.evaluation import (
    Prediction,
    PredictionWriter,
    export_finecops_jsonl,
    export_finecops_npy,
    grec_sample_f1,
    read_predictions,
    score_finecops_ref,
    score_grec,
    score_refcoco,
)
from tools.evaluation.finecops import _fpr_at_recall
from tests.helpers import FINECOPS_COCO, FINECOPS_PREDICTIONS



@pytest.fixture
def finecops(tmp_path):
    samples = list(read_finecops_ref(write_json(tmp_path, "finecops.json", FINECOPS_COCO)))
    return samples, [Prediction.from_record(record) for record in FINECOPS_PREDICTIONS]


def test_finecops_precision_by_level(finecops):
    result = score_finecops_ref(*finecops)
    assert result["precision_at_1"] == {"1": 0.0, "2": 100.0, "3": 0.0, "all": pytest.approx(100 / 3)}
    assert result["precision_at_5"] == {"1": 100.0, "2": 100.0, "3": 0.0, "all": pytest.approx(200 / 3)}
    assert result["precision_at_10"] == result["precision_at_5"]
    assert result["counts"]["positives"] == {"1": 1, "2": 1, "3": 1, "all": 3}


def test_finecops_recall_pools_negatives_per_positive_and_key(finecops):
    result = score_finecops_ref(*finecops)
    # attribute/1/text: positive 1 pooled with negatives 11 and 12 ([.95, .9, .7, .6, .5]): the top-1
    # score is a negative's, a miss; with k=5 both of its boxes count and the second is right.
    # Positive 2 ties with negative 21 at .8, and a tie goes to the positive: a hit at k=1.
    # replace/1/image: the rejection counts as score 0; positive 1's top box is wrong, its second right.
    assert result["recall_at_1"] == {"attribute/1/text": 50.0, "replace/1/image": 0.0}
    assert result["recall_at_5"] == {"attribute/1/text": 100.0, "replace/1/image": 100.0}
    assert result["counts"]["recall_groups"] == {"attribute/1/text": 2, "replace/1/image": 1}


def test_finecops_auroc_fpr95_aupr(finecops):
    result = score_finecops_ref(*finecops)
    # Overall: level-1 positive (.9) against negatives (.7, .95, 0, .8): it beats 3 of 4; in the
    # ranking .95(neg) .9(pos) it sits second, so AP = 1/2; full recall is reached with 1 of 4 negatives above.
    assert result["auroc"] == pytest.approx(75.0)
    assert result["aupr"] == pytest.approx(50.0)
    assert result["fpr95"] == pytest.approx(25.0)
    # attribute/1/text: positives (.9, .9, .8) -- one per negative -- against (.7, .95, .8):
    # pairs won 2 + 2 + 1.5 (a tie is half) of 9; AP = 2/3 * 2/3 + 1/3 * 3/5; full recall at .8 with 2 of 3 negatives.
    key = "attribute/1/text"
    assert result["auroc_by_key"][key] == pytest.approx(5.5 / 9 * 100)
    assert result["aupr_by_key"][key] == pytest.approx((4 / 9 + 1 / 5) * 100)
    assert result["fpr95_by_key"][key] == pytest.approx(200 / 3)
    assert result["auroc_by_key"]["replace/1/image"] == 100.0 and result["fpr95_by_key"]["replace/1/image"] == 0.0


def test_finecops_crs_accuracy_and_counts(finecops):
    result = score_finecops_ref(*finecops)
    assert result["crs_accuracy"] == {"positive": pytest.approx(100 / 3), "negative": 25.0}
    assert result["counts"]["empty_answers"] == {"positive": 1, "negative": 1}
    assert result["counts"]["negatives_by_key"] == {"attribute/1/text": 3, "replace/1/image": 1}


def test_a_rejection_confidence_replaces_the_zero_score(finecops):
    samples, predictions = finecops
    predictions[5] = Prediction(13, Detections.empty(), {"confidence": 0.92})  # 1 - P(None)
    result = score_finecops_ref(samples, predictions)
    assert result["auroc_by_key"]["replace/1/image"] == 0.0  # .92 now outranks the positive's .9
    assert result["recall_at_5"]["replace/1/image"] == 100.0


def test_ties_in_scores_rank_as_the_reference_ranks_them():
    # The reference ranks by np.argsort(scores)[::-1]; which of equal scores comes first is numpy's
    # (machine-dependent) choice, and the metric must make the same one.
    sample = Sample(1, "a.jpg", "the cup", [[0, 0, 10, 10]], level=1)
    scores = np.full(6, 0.5)
    ranked = np.argsort(scores)[::-1]
    for position, expected_p1 in ((ranked[0], 100.0), (ranked[-1], 0.0)):
        boxes = np.array([[50, 50, 60, 60]] * 6)
        boxes[position] = [0, 0, 10, 10]
        result = score_finecops_ref([sample], [Prediction(1, Detections(boxes, scores))])
        assert result["precision_at_1"]["all"] == expected_p1 and result["precision_at_10"]["all"] == 100.0


def test_routed_level_precision_when_predictions_record_it():
    samples = [Sample(i, "a.jpg", "cup", [[0, 0, 10, 10]], level=1) for i in (1, 2, 3)]
    predictions = [Prediction(i, Detections([[0, 0, 10, 10 if i != 3 else 1]], [0.9]), {"level": 1 + (i > 1)})
                   for i in (1, 2, 3)]
    assert score_finecops_ref(samples, predictions)["precision_at_1_by_route"] == {"1": 100.0, "2": 50.0}


def test_missing_predictions_are_an_error_unless_allowed(finecops):
    samples, predictions = finecops
    with pytest.raises(UserInputError, match=r"3 of 7 samples have no prediction \(ids 2, 3, 13\)"):
        score_finecops_ref(samples, predictions[:1] + predictions[3:5] + predictions[6:])
    result = score_finecops_ref(samples, predictions[:1] + predictions[3:5] + predictions[6:], allow_missing=True)
    assert result["counts"]["missing_predictions"] == 3
    assert result["precision_at_1"]["2"] == 0.0


def test_a_negative_needs_its_positive(finecops):
    samples, predictions = finecops
    with pytest.raises(UserInputError, match="negative sample 11 refers to positive_id 1, which is not a positive"):
        score_finecops_ref(samples[1:], predictions[1:])


boxes_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(1, 30), st.integers(1, 30)), max_size=12
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(boxes_strategy, st.integers(1, 3)), min_size=1, max_size=6), st.randoms())
def test_precision_and_recall_grow_with_k(answers, random):
    samples, predictions = [], []
    for index, (boxes, level) in enumerate(answers):
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes]
        scores = [random.choice([0.1, 0.5, 0.9, random.random()]) for _ in boxes]
        samples.append(Sample(index, "a.jpg", "cup", [[10, 10, 30, 30]], level=level))
        predictions.append(Prediction(index, Detections(np.array(xyxy).reshape(-1, 4), scores)))
        negative = {"negative_type": "t", "negative_level": 1, "negative_cate": "text", "positive_id": index,
                    "tuple_type": None}
        samples.append(Sample(f"n{index}", "a.jpg", "cup", np.zeros((0, 4)), level=level, negative=negative))
        predictions.append(Prediction(f"n{index}", Detections([[0, 0, 1, 1]] * 3, [random.random() for _ in range(3)])))
    result = score_finecops_ref(samples, predictions)
    for level in result["precision_at_1"]:
        values = [result[f"precision_at_{k}"][level] for k in (1, 5, 10)]
        if values[0] is not None:
            assert values[0] <= values[1] <= values[2]
    assert result["recall_at_1"]["t/1/text"] <= result["recall_at_5"]["t/1/text"] <= result["recall_at_10"]["t/1/text"]
    assert result["recall_at_10"]["t/1/text"] <= result["precision_at_10"]["all"]


def brute_force_fpr95(positive, negative):
    """The reference's definition spelled out over thresholds, highest first."""
    points = []
    for threshold in sorted(set(positive) | set(negative), reverse=True):
        tpr = sum(p >= threshold for p in positive) / len(positive)
        points.append((tpr, sum(n >= threshold for n in negative) / len(negative)))
        if tpr == 1.0:
            break
    best = min(abs(tpr - 0.95) for tpr, _ in points)
    return [fpr for tpr, fpr in points if abs(tpr - 0.95) == best][-1]


scores_strategy = st.lists(st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]), min_size=1, max_size=25)


@settings(max_examples=100, deadline=None)
@given(scores_strategy, scores_strategy)
def test_fpr95_matches_its_definition(positive, negative):
    labels = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    expected = brute_force_fpr95(positive, negative)
    assert _fpr_at_recall(labels, np.r_[positive, negative], 0.95) == pytest.approx(expected)


# GREC: targets A and B; a duplicate of A and a low-scoring box make more predictions than targets.
A, B, X = [0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]


def grec_case():
    samples = [
        Sample(1, "a.jpg", "both cups", [A, B]),
        Sample(2, "a.jpg", "the left cup", [A]),
        Sample(3, "a.jpg", "the flying cup", np.zeros((0, 4))),
        Sample(4, "a.jpg", "the purple cup", np.zeros((0, 4))),
        Sample(5, "a.jpg", "the cup", [A]),
    ]
    predictions = [
        Prediction(1, Detections([A, B, [1, 1, 10, 10], X], [0.9, 0.8, 0.75, 0.5])),  # TP 2, FP 1: F1 0.8
        Prediction(2, Detections([A], [0.9])),  # F1 1
        Prediction(3, Detections([X], [0.6])),  # filtered out: correct rejection
        Prediction(4, Detections([X], [0.95])),  # a box where there is none
        Prediction(5, Detections([A], [0.5])),  # right box, too unsure: nothing kept
    ]
    return samples, predictions


def test_grec_precision_n_acc_t_acc():
    result = score_grec(*grec_case())
    assert result["f1_precision"] == 40.0  # samples 2 and 3
    assert result["n_acc"] == 50.0
    assert result["t_acc"] == pytest.approx(200 / 3)
    assert result["counts"] == {"samples": 5, "no_target": 2, "targeted": 3, "correct": 2,
                                "missing_predictions": 0, "unmatched_predictions": 0}
    lenient = score_grec(*grec_case(), score_threshold=0.0)
    assert lenient["f1_precision"] == 40.0 and lenient["n_acc"] == 0.0 and lenient["t_acc"] == 100.0


def test_grec_f1_of_more_predictions_than_targets():
    f1, kept = grec_sample_f1(np.array([A, B, [1, 1, 10, 10]]), np.array([0.9, 0.8, 0.75]), np.array([A, B]))
    assert (f1, kept) == (pytest.approx(0.8), 3)


def test_grec_matching_is_greedy_highest_first():
    # a overlaps T1 (.9) and T2 (.73); b overlaps only T1 enough (.54, and T2 .43). Greedy takes a-T1
    # first and leaves b unmatched, although a-T2 + b-T1 would match both: TP 1, FP 1, FN 1.
    targets = np.array([[0, 0, 10, 10], [0, 1, 10, 11]])
    predictions = np.array([[0, 0, 10, 9], [0, -3, 10, 7]])
    for matching in ("giou", "iou"):
        assert grec_sample_f1(predictions, np.array([0.9, 0.9]), targets, matching=matching)[0] == 0.5


def test_grec_generalized_iou_is_stricter_than_iou():
    # Shifted diagonally by 1.7: IoU 68.89 / 131.11 = 0.525, generalized IoU 0.525 - 5.78 / 136.89 = 0.483.
    box, target = np.array([[0, 0, 10, 10]]), np.array([[1.7, 1.7, 11.7, 11.7]])
    assert grec_sample_f1(box, np.array([0.9]), target, matching="iou")[0] == 1.0
    assert grec_sample_f1(box, np.array([0.9]), target)[0] == 0.0
    with pytest.raises(UserInputError, match="unknown matching 'dice'"):
        grec_sample_f1(box, np.array([0.9]), target, matching="dice")


def test_refcoco_accuracy_ranks_ties_by_box_like_mdetr():
    sample = Sample(1, "a.jpg", "cup", [A])
    tie = Prediction(1, Detections([A, X], [0.5, 0.5]))  # (0.5, X) sorts above (0.5, A)
    result = score_refcoco([sample], [tie])
    assert result["accuracy"] == 0.0 and result["precision_at_5"] == 100.0
    assert score_refcoco([sample], [Prediction(1, Detections.empty())])["accuracy"] == 0.0


def test_predictions_file_round_trip_and_torn_last_line(tmp_path):
    path = tmp_path / "run" / "predictions.jsonl"
    with PredictionWriter(path) as writer:
        writer.write(Prediction(1, Detections([[0, 0, 1, 1]], [np.float32(0.5)]), {"timings": {"mllm": np.float64(2)}}))
        writer.write(Prediction("b", Detections.empty(), {"level": 2}))
    with path.open("a") as handle:
        handle.write('{"id": 3, "boxes": [[0, 0')  # a crash mid-write
    with pytest.warns(UserWarning, match=r"line 3: ignoring a torn last line"):
        predictions = read_predictions(path)
    assert [p.id for p in predictions] == [1, "b"]
    assert predictions[0].fields == {"timings": {"mllm": 2.0}} and predictions[1].fields == {"level": 2}
    with pytest.warns(UserWarning, match="cutting off a torn last line"), PredictionWriter(path) as writer:
        writer.write(Prediction(3, Detections([[1, 1, 2, 2]], [0.1])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.id for p in read_predictions(path)] == [1, "b", 3]


def test_prediction_from_an_agent_result():
    from agent.evaluation.run import result_prediction

    result = Result("the cup", (100, 100), "sfa", Detections([[0, 0, 5, 5]], [0.7]), level=2, path="mllm",
                    target="the cup", timings={"router": 0.1})
    prediction = result_prediction(4, result, confidence=0.7)
    # Returned without a threshold (decision_threshold 0): written 0.7 + 0.3 x 0.7, the raw 0.7 kept.
    assert prediction.to_record() == {"id": 4, "boxes": [[0.0, 0.0, 5.0, 5.0]], "scores": [pytest.approx(0.91)],
                                      "level": 2, "path": "mllm", "target": "the cup", "timings": {"router": 0.1},
                                      "decision_threshold": 0.0, "raw_scores": [0.7], "confidence": 0.7}


def test_a_complete_last_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "boxes": [], "scores": []}')
    with PredictionWriter(path) as writer:
        writer.write(Prediction(2, Detections.empty()))
    assert [p.id for p in read_predictions(path)] == [1, 2]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"id": 1, "boxes": [[0, 0, 1]], "scores": [0.5]}', r"line 2: field 'boxes' must be a list of \[x1, y1"),
        ('{"id": 1, "boxes": [[0, 0, 1, 1]], "scores": []}', r"line 2: field 'scores' must be 1 finite numbers"),
        ('{"boxes": [], "scores": []}', r"line 2: field 'id' must be an integer or a non-empty string"),
        ('{"id": 0, "boxes": [], "scores": []}', r"line 2: id 0 already has a prediction on line 1"),
        ("not json", r"line 2: not valid JSON"),
    ],
)
def test_bad_prediction_lines_name_the_line(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 0, "boxes": [], "scores": []}\n' + line + "\n")
    with pytest.raises(UserInputError, match=message):
        read_predictions(path)


def test_exports_for_the_reference_evaluators(tmp_path, finecops):
    samples, predictions = finecops
    assert export_finecops_npy(samples, predictions, tmp_path / "results.npy") == 7
    rows = np.load(tmp_path / "results.npy", allow_pickle=True)
    assert rows[0]["img_id"] == 1 and rows[0]["bboxes"].dtype == np.float32
    np.testing.assert_allclose(rows[0]["scores"], [0.9, 0.6])  # best first
    np.testing.assert_array_equal(rows[2]["bboxes"], [[0, 0, 0, 0]])  # an empty answer as the reference scores it
    assert export_finecops_jsonl(samples, predictions, tmp_path / "answers.jsonl") == 7
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert lines[0] == {"image_id": 1, "text": "[0,0,100,100], [300,300,400,400]", "scores_prob_average": [0.6, 0.9]}
    assert lines[2]["text"] == ""


def test_reference_confidence_ranks_crs_answers_as_the_authors_evaluator():
    # evaluation_CRS_neg.py: score = exp(answer_prob_norm); a negative answered "None" scores 1 - that.
    negative = {"negative_type": "replace", "negative_level": 1, "negative_cate": "image", "positive_id": 1}
    samples = [Sample(1, "a.jpg", "cup", [[0, 0, 10, 10]], level=1),
               Sample(2, "a.jpg", "cup", [[0, 0, 10, 10]], level=1),
               Sample(3, "a.jpg", "mug", np.zeros((0, 4)), level=1, negative=negative),
               Sample(4, "a.jpg", "jug", np.zeros((0, 4)), level=1, negative={**negative, "positive_id": 2})]
    predictions = [Prediction(1, Detections([[0, 0, 10, 10]], [0.9]), {"answer_logprob": np.log(0.6)}),
                   Prediction(2, Detections.empty(), {"confidence": 0.2, "answer_logprob": np.log(0.8)}),
                   Prediction(3, Detections.empty(), {"confidence": 0.7, "answer_logprob": np.log(0.3)}),
                   Prediction(4, Detections([[5, 5, 9, 9]], [0.5]), {"answer_logprob": np.log(0.55)})]
    from sklearn.metrics import roc_auc_score

    reference = score_finecops_ref(samples, predictions, confidence="reference")
    # Level-1 positives (a positive answered "None" keeps exp(logprob)) vs all negatives.
    expected = roc_auc_score([1, 1, 0, 0], [0.6, 0.8, 1 - 0.3, 0.55])
    assert reference["auroc"] == pytest.approx(100 * expected)
    rex = score_finecops_ref(samples, predictions)
    assert rex["auroc"] == pytest.approx(100 * roc_auc_score([1, 1, 0, 0], [0.9, 0.2, 0.7, 0.5]))
    assert reference["precision_at_1"] == rex["precision_at_1"]  # ranking changes, answers do not
    with pytest.raises(UserInputError, match="confidence rule"):
        score_finecops_ref(samples, predictions, confidence="mine")
