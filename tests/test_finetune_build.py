"""The CRS instruction data builder on a crafted FineCops-Ref file whose every outcome is known.

Each sample's candidates are written by hand (a candidates file, or a fake detector giving the
same boxes), so which samples are kept, which are dropped and why, and which option is the
answer are all known in advance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent.cli import main as agent_cli
from finetune.build import NO_CANDIDATE_OVER_IOU, BuildConfig, SampleDropped, build_crs_data, make_crs_sample
from finetune.build_cli import finetune_data
from finetune.samples import read_samples
from tools import boxes as box_ops
from tools.cli_runner import run_command
from tools.detections import Detections
from tools.errors import UserInputError
from tools.evaluation.formats import read_dataset

SIZE = (200, 100)


def build_main(args: list[str]) -> int:
    """``python -m finetune.build_cli ARGS``, in this process."""
    return run_command(finetune_data, args, "finetune-data")


GT = [10, 10, 60, 60]  # xyxy
# id: (caption, level, ground truth xyxy or None for a negative, candidates [(box, score)] or None for no line).
CASES = {
    1: ("the red box", 1, GT, [([12, 10, 60, 60], .9), ([100, 10, 150, 60], .8), ([0, 0, 30, 30], .7),
                              ([150, 50, 190, 95], .6), ([60, 40, 100, 90], .5), ([5, 5, 20, 20], .4),
                              ([160, 0, 200, 20], .3)]),  # seven boxes: top-5 only
    2: ("the green box", 2, [100, 20, 150, 80], [([10, 10, 60, 60], .9), ([11, 10, 60, 60], .85),  # NMS twin
                                                 ([101, 21, 149, 79], .5)]),
    3: ("the blue box", 3, GT, [([120, 10, 180, 60], .9), ([130, 20, 190, 90], .8)]),  # nothing overlaps
    4: ("the grey box", 1, GT, []),  # the detector found nothing
    5: ("the pink box", 1, GT, None),  # no line in the candidates file
    6: ("the teal box", 1, GT, [([10, 10, 60, 60], .9)]),  # its image file is corrupt
    7: ("the lone box", 2, GT, [([10, 10, 60, 60], .9)]),  # one candidate: a question only with "None"
    8: ("the wide box", 1, GT, [([10, 10, 110, 60], .9), ([150, 10, 190, 50], .3)]),  # IoU exactly 0.5
    11: ("the red ball", 1, None, [([12, 10, 60, 60], .9), ([100, 10, 150, 60], .4)]),
    12: ("the green ball", 2, None, [([10, 10, 60, 60], .9)]),
    13: ("the blue ball", 3, None, []),
}
ALL_NEGATIVES = {"read": 11, "kept": 5, "kept_positives": 3, "kept_negatives": 2,
                 "dropped": {"unreadable-image": 1, "missing-candidates": 1, "no-candidates": 2,
                             "no-candidate-over-iou": 2}}
NO_NEGATIVES = {"read": 11, "kept": 2, "kept_positives": 2, "kept_negatives": 0,
                "dropped": {"unreadable-image": 1, "missing-candidates": 1, "no-candidates": 1,
                            "no-candidate-over-iou": 2, "single-option": 1, "sampled-out": 3}}


def write_finecops(folder, ids=tuple(CASES), name="finecops.json"):
    """The annotation file of ``CASES`` (in the order of ``ids``); negatives pair with sample 1."""
    images, annotations = [], []
    for sample_id in ids:
        caption, level, gt, _ = CASES[sample_id]
        file_name = "broken.png" if sample_id == 6 else "scene.png"
        images.append({"id": sample_id, "caption": caption, "file_name": file_name, "width": SIZE[0],
                       "height": SIZE[1]})
        x1, y1, x2, y2 = gt or GT
        ann = {"id": 100 + sample_id, "image_id": sample_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "level": level}
        if gt is None:
            ann.update(negative_type="attribute", negative_level=1, negative_cate="text", positive_id=1)
        annotations.append(ann)
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def case_detections(sample_id) -> Detections:
    found = CASES[sample_id][3] or []
    return Detections([box for box, _ in found] or np.zeros((0, 4)), [score for _, score in found])


@pytest.fixture
def dataset(tmp_path):
    """(annotation file, image root, candidates file) of the crafted case."""
    root = tmp_path / "images"
    root.mkdir()
    scene = Image.new("RGB", SIZE, (90, 120, 160))
    scene.paste((200, 30, 30), tuple(GT))
    scene.save(root / "scene.png")
    (root / "broken.png").write_bytes(b"not a png")
    candidates = tmp_path / "candidates.jsonl"
    lines = [{"id": i, **case_detections(i).to_dict()} for i in CASES if CASES[i][3] is not None]
    lines.append({"id": 99, "boxes": [[0, 0, 5, 5]], "scores": [0.1]})  # not in the dataset: ignored
    candidates.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return write_finecops(tmp_path), root, candidates


def config_for(dataset, output, **settings) -> BuildConfig:
    annotations, root, candidates = dataset
    return BuildConfig(dataset_format="finecops-ref", annotations=str(annotations), output_dir=str(output),
                       image_root=str(root), candidates_file=str(candidates), **settings)


def test_drop_counts_per_reason_with_negatives(dataset, tmp_path):
    report = build_crs_data(config_for(dataset, tmp_path / "out", negatives=None), progress=False)
    assert report.to_dict() == ALL_NEGATIVES
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == ALL_NEGATIVES
    samples = {s.id: s for s in read_samples(tmp_path / "out" / "samples.jsonl")}
    assert sorted(samples) == ["1", "11", "12", "2", "7"]
    assert all(s.allow_none for s in samples.values())  # "None" offered to positives too
    assert len(samples["1"].candidates) == 5 and [160.0, 0.0, 200.0, 20.0] not in map(list, samples["1"].candidates)
    assert len(samples["2"].candidates) == 2  # the twin fell to NMS
    assert samples["1"].meta["level"] == 1 and samples["11"].meta["negative"] == "attribute/1/text"


def test_without_negatives_no_none_letter_and_lone_candidates_dropped(dataset, tmp_path):
    report = build_crs_data(config_for(dataset, tmp_path / "out"), progress=False)
    assert report.to_dict() == NO_NEGATIVES
    assert not any(s.allow_none for s in read_samples(tmp_path / "out" / "samples.jsonl"))


def test_answers_point_at_the_best_candidate_over_the_iou_and_negatives_answer_none(dataset, tmp_path):
    build_crs_data(config_for(dataset, tmp_path / "out", negatives=None), progress=False)
    for sample in read_samples(tmp_path / "out" / "samples.jsonl"):
        if CASES[int(sample.id)][2] is None:
            assert sample.answer == sample.letters[-1]
            continue
        ious = box_ops.box_iou(np.array(sample.candidates), [CASES[int(sample.id)][2]])[:, 0]
        assert sample.answer_index == int(np.argmax(ious)) and ious.max() > 0.5
        assert sample.answer != sample.letters[-1]


def test_both_formats_pass_the_schema_check(dataset, tmp_path):
    out = tmp_path / "out"
    build_crs_data(config_for(dataset, out, negatives=None, dataset_name="crs_train"), progress=False)
    samples = read_samples(out / "samples.jsonl")
    records = json.loads((out / "crs_train.json").read_text())
    assert len(records) == len(samples) == 5
    for sample, record in zip(samples, records):
        user, assistant = record["messages"]
        assert user["role"] == "user" and user["content"] == "<image>" + sample.prompt()
        assert assistant == {"role": "assistant", "content": sample.answer}
        assert record["images"] == [str(dataset[1] / "scene.png")]
    assert json.loads((out / "dataset_info.json").read_text())["crs_train"]["file_name"] == "crs_train.json"


def test_shuffling_is_seeded_and_independent_of_sample_order(dataset, tmp_path):
    def build(name, annotation_file=None, **settings):
        config = config_for((annotation_file or dataset[0], *dataset[1:]), tmp_path / name, negatives=None, **settings)
        build_crs_data(config, progress=False)
        return (tmp_path / name / "samples.jsonl").read_text()

    reversed_file = write_finecops(tmp_path, ids=tuple(reversed(CASES)), name="reversed.json")
    first = build("a", seed=3)
    assert build("b", seed=3) == first == build("c", reversed_file, seed=3)
    other = build("d", seed=4)
    assert other != first
    def options(text):
        return {json.loads(line)["id"]: sorted(json.loads(line)["candidates"]) for line in text.splitlines()}

    assert options(other) == options(first)  # the same questions, options in another order


def test_quotas_draw_the_same_samples_whatever_the_file_order(dataset, tmp_path):
    reversed_file = write_finecops(tmp_path, ids=tuple(reversed(CASES)), name="reversed.json")
    kept = []
    for name, annotation_file in (("a", dataset[0]), ("b", reversed_file)):
        config = config_for((annotation_file, *dataset[1:]), tmp_path / name, positives=2, negatives=1)
        report = build_crs_data(config, progress=False)
        assert (report.kept_positives, report.kept_negatives) == (2, 1)
        assert report.read == report.kept + sum(report.dropped.values()) == 11
        assert report.dropped["sampled-out"] >= 2  # one positive and one negative at least
        kept.append([s.id for s in read_samples(tmp_path / name / "samples.jsonl")])
    assert kept[0] == kept[1]


class FakeDetector:
    """Answers each expression with its crafted candidates; interrupts the build after ``stop_after`` calls."""

    def __init__(self, stop_after=None):
        self.texts = []
        self.stop_after = stop_after

    def detect(self, image, text, focus=None):
        if self.stop_after is not None and len(self.texts) == self.stop_after:
            raise KeyboardInterrupt
        self.texts.append(text)
        sample_id = next(i for i, case in CASES.items() if case[0] == text)
        return case_detections(sample_id)


def test_an_interrupted_detector_build_resumes_without_repeats(dataset, tmp_path):
    reference = tmp_path / "reference"
    build_crs_data(config_for(dataset, reference, negatives=None), progress=False)
    config = BuildConfig(dataset_format="finecops-ref", annotations=str(dataset[0]), output_dir=str(tmp_path / "out"),
                         image_root=str(dataset[1]), detector="fake", negatives=None)
    first, second = FakeDetector(stop_after=4), FakeDetector()
    with pytest.raises(KeyboardInterrupt):
        build_crs_data(config, detector=first, progress=False)
    samples_file = tmp_path / "out" / "samples.jsonl"
    assert 0 < len(samples_file.read_text().splitlines()) < 5
    with samples_file.open("a") as torn:  # a crash in the middle of a line
        torn.write('{"id": "12", "ima')
    with pytest.warns(UserWarning, match="torn last line"):
        report = build_crs_data(config, detector=second, progress=False)
    # Sample 5 has no file line but the detector answers it (nothing): one more no-candidates.
    assert report.to_dict() == {**ALL_NEGATIVES, "dropped": {"unreadable-image": 1, "no-candidates": 3,
                                                             "no-candidate-over-iou": 2}}
    assert not set(first.texts) & set(second.texts)  # no detection ran twice
    assert len(first.texts) + len(second.texts) == 10  # every sample with a readable image
    assert samples_file.read_text() == (reference / "samples.jsonl").read_text()
    with pytest.raises(UserInputError, match="other settings .*seed"):
        build_crs_data(BuildConfig(**{**config.__dict__, "seed": 1}), detector=second, progress=False)


def test_iou_of_exactly_the_threshold_is_not_enough(dataset):
    sample = next(s for s in read_dataset("finecops-ref", dataset[0], dataset[1]) if s.id == 8)
    config = BuildConfig("finecops-ref", "unused", "unused", candidates_file="unused")
    with pytest.raises(SampleDropped) as dropped:
        make_crs_sample(sample, case_detections(8), SIZE, config)
    assert dropped.value.reason == NO_CANDIDATE_OVER_IOU


def test_multi_target_skipped_and_no_target_answers_none_on_grec(tmp_path, dataset):
    images = [{"id": i, "caption": f"thing {i}", "file_name": "scene.png", "width": 200, "height": 100}
              for i in (21, 22, 23)]
    annotations = [{"id": 1, "image_id": 21, "bbox": [10, 10, 50, 50], "category_id": 1},
                   {"id": 2, "image_id": 21, "bbox": [100, 10, 50, 50], "category_id": 1},
                   {"id": 3, "image_id": 22, "bbox": [0, 0, 0, 0], "category_id": -1},
                   {"id": 4, "image_id": 23, "bbox": [10, 10, 50, 50], "category_id": 1}]
    grec = tmp_path / "grec.json"
    grec.write_text(json.dumps({"images": images, "annotations": annotations}))
    candidates = tmp_path / "grec_candidates.jsonl"
    candidates.write_text("".join(json.dumps({"id": i, "boxes": [GT, [100, 10, 150, 60]], "scores": [.9, .8]}) + "\n"
                                  for i in (21, 22, 23)))
    config = BuildConfig("grec", str(grec), str(tmp_path / "out"), image_root=str(dataset[1]),
                         candidates_file=str(candidates), negatives=None)
    report = build_crs_data(config, progress=False)
    assert report.to_dict() == {"read": 3, "kept": 2, "kept_positives": 1, "kept_negatives": 1,
                                "dropped": {"multi-target": 1}}
    no_target = next(s for s in read_samples(tmp_path / "out" / "samples.jsonl") if s.id == "22")
    assert no_target.answer == "C" and no_target.meta["negative"] == "no-target"


@pytest.mark.parametrize("detector", ["tiny_mm_grounding_dino", "tiny_owlv2"])
def test_cli_with_the_tiny_detector_end_to_end(tmp_path, dataset, detector, request, capsys):
    annotations = write_finecops(tmp_path, ids=(1, 11), name="two.json")
    out = tmp_path / "out"
    code = agent_cli(["finetune-data", "--format", "finecops-ref", "--annotations", str(annotations),
                      "--image-root", str(dataset[1]), "--detector", str(request.getfixturevalue(detector)),
                      "--output", str(out), "--negatives", "5", "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "kept: negatives" in printed
    cached = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert sorted(line["id"] for line in cached) == [1, 11] and all(0 < len(line["boxes"]) <= 10 for line in cached)
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == 2 and report["kept_negatives"] == 1  # random weights: the positive may go either way
    assert len(read_samples(out / "samples.jsonl")) == report["kept"]
    assert (out / "rex_crs.json").exists() and "rex_crs" in json.loads((out / "dataset_info.json").read_text())


def test_standalone_command_and_user_mistakes(tmp_path, dataset, capsys):
    args = ["--format", "finecops-ref", "--annotations", str(dataset[0]), "--image-root", str(dataset[1]),
            "--output", str(tmp_path / "out"), "--no-progress"]
    assert build_main(args + ["--candidates", str(dataset[2])]) == 0
    assert build_main(args + ["--candidates", str(dataset[2]), "--detector", "x"]) == 2
    assert "either a detector or a candidates file" in capsys.readouterr().err
    assert build_main(args + ["--candidates", str(dataset[2]), "--negatives", "1", "--no-none-option"]) == 2
    assert build_main(args + ["--candidates", str(tmp_path / "missing.jsonl")]) == 2
    assert "no candidates file" in capsys.readouterr().err


def test_the_reference_profile_builds_candidates_as_the_scripts_do(dataset):
    from tools.datasets import Sample

    sample = Sample(1, "scene.png", "the left cup", np.array([[300.0, 300, 340, 340]]), level=1)
    # True IoU 0.33, but cv2.dnn.NMSBoxes, fed xyxy, merges them (tests/test_routing.py works it out).
    candidates = Detections([[300, 300, 340, 340], [320, 300, 360, 340]], [0.9, 0.8])
    settings = dict(dataset_format="finecops-ref", annotations="u", output_dir="u", candidates_file="u",
                    allow_none=True)
    default = make_crs_sample(sample, candidates, (640, 480), BuildConfig(**settings))
    reference = make_crs_sample(sample, candidates, (640, 480), BuildConfig(**settings, profile="reference"))
    assert len(default.candidates) == 2 and len(reference.candidates) == 1
    with pytest.raises(UserInputError, match="unknown profile"):
        build_crs_data(BuildConfig(**{**settings, "annotations": str(dataset[0])}, profile="paper"))


def test_verify_task_asks_yes_or_no_per_candidate_as_inference_does(tmp_path, dataset):
    from finetune.verify_samples import VerifySample
    from tools.mllm.families import QWEN2_VL
    from tools.mllm.verify import verify_prompt

    annotations, root, candidates = dataset
    config = BuildConfig(dataset_format="finecops-ref", annotations=str(annotations), image_root=str(root),
                         candidates_file=str(candidates), output_dir=str(tmp_path / "out"), negatives=None,
                         task="verify")
    report = build_crs_data(config, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    by_id = {line["id"]: VerifySample.from_dict(line) for line in lines}
    # Sample 1: the five distinct candidates after top-5 + NMS; only the first overlaps the ground truth.
    first = by_id["1"]
    assert first.answers[0] == "yes" and set(first.answers[1:]) == {"no"} and len(first.answers) == 5
    # A lone candidate is a question too (no "None" option needed), and a negative answers "no" throughout.
    assert by_id["7"].answers == ("yes",) and set(by_id["11"].answers) == {"no"}
    assert "8" in by_id and by_id["8"].answers[0] == "no"  # IoU exactly 0.5 is not above min_iou
    assert report.kept == len(lines)
    # The LLaMA-Factory export holds one record per candidate, the question inference asks.
    records = json.loads((tmp_path / "out" / "rex_crs.json").read_text())
    assert len(records) == sum(len(sample.answers) for sample in by_id.values())
    box = QWEN2_VL.option_boxes([list(first.candidates[0])], first.image_size)[0]
    assert {"role": "user", "content": "<image>" + verify_prompt(first.expression, box)} in [
        record["messages"][0] for record in records]
    # The command line builds the same.
    assert build_main(["--format", "finecops-ref", "--annotations", str(annotations), "--image-root", str(root),
                       "--candidates", str(candidates), "--output", str(tmp_path / "cli"), "--negatives", "0",
                       "--task", "verify", "--no-progress"]) == 0
    assert (tmp_path / "cli" / "samples.jsonl").read_text().count('"answers"') > 0
    assert build_main(["--format", "finecops-ref", "--annotations", str(annotations), "--candidates", str(candidates),
                       "--output", str(tmp_path / "bad"), "--task", "vote"]) == 2
    # agent-cli finetune trains the choice task and says so for a verification file.
    with pytest.raises(UserInputError, match="yes/no verification sample"):
        read_samples(tmp_path / "out" / "samples.jsonl")


def test_the_old_flag_names_still_work_with_a_note_and_old_builds_resume(dataset, tmp_path, capsys):
    annotations, root, candidates = dataset
    out = tmp_path / "out"
    args = ["--format", "finecops-ref", "--annotations", str(annotations), "--image-root", str(root),
            "--candidates", str(candidates), "--output", str(out), "--no-progress"]
    assert build_main([*args, "--top-k", "3", "--nms", "0.5", "--none-option"]) == 0
    error = capsys.readouterr().err
    for old, new in (("--top-k", "--crs-top-k"), ("--nms", "--crs-iou-threshold"), ("--none-option", "--allow-none")):
        assert f"{old} is now {new}" in error
    settings = json.loads((out / "build.json").read_text())
    assert (settings["crs_top_k"], settings["crs_iou_threshold"], settings["allow_none"]) == (3, 0.5, True)
    from finetune.build_settings import RENAMED_SETTINGS

    old_names = {new: old for old, new in RENAMED_SETTINGS.items()}
    (out / "build.json").write_text(json.dumps({old_names.get(k, k): v for k, v in settings.items()}))
    assert build_main([*args, "--crs-top-k", "3", "--crs-iou-threshold", "0.5", "--allow-none"]) == 0  # resumed
    capsys.readouterr()


@pytest.mark.parametrize("command", ["finetune", "finetune-data"])
def test_every_setting_of_the_fine_tuning_commands_is_a_flag_with_its_own_help(command, capsys):
    import dataclasses

    from finetune.build import BuildConfig
    from finetune.train import TrainConfig
    from tools.settings import flag_of

    settings = TrainConfig if command == "finetune" else BuildConfig
    assert agent_cli([command, "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for item in dataclasses.fields(settings):
        assert item.metadata["help"] and flag_of(item)[:14] in shown, item.name
