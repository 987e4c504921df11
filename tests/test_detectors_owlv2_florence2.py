"""OWLv2 and Florence-2 as specialists, on tiny random checkpoints loaded like real ones.

Random weights: OWLv2's boxes are checked against transformers' own post-processing, and
Florence-2's answers are scripted with a hook on its ``lm_head`` (as the MLLM tests do).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from agent import Agent
from tools.detections import Detections
from tools.detectors import Detector, Florence2Detector, GroundingDinoDetector, Owlv2Detector
from tools.detectors.auto import detector_class, load_detector
from tools.detectors.florence2 import DETECTION_TASK, GROUNDING_TASK, is_target_phrase
from tools.errors import UserInputError


@pytest.fixture(scope="module")
def owlv2(tiny_owlv2):
    return load_detector(str(tiny_owlv2), device="cpu")


@pytest.fixture(scope="module")
def florence2(tiny_florence2):
    return load_detector(str(tiny_florence2), device="cpu", max_new_tokens=24)


def test_the_checkpoint_config_chooses_the_detector(owlv2, florence2, tiny_mm_grounding_dino, tiny_qwen2_vl):
    assert type(owlv2) is Owlv2Detector and type(florence2) is Florence2Detector
    assert isinstance(owlv2, Detector) and isinstance(florence2, Detector)
    assert detector_class(str(tiny_mm_grounding_dino)) is GroundingDinoDetector
    with pytest.raises(UserInputError, match="qwen2_vl checkpoint; supported detectors: Grounding DINO"):
        load_detector(str(tiny_qwen2_vl), device="cpu")
    with pytest.raises(UserInputError, match="focus_score applies to GroundingDinoDetector"):
        load_detector(str(tiny_mm_grounding_dino).replace("mm_grounding_dino", "owlv2"), device="cpu",
                      focus_score="max")


# ------------------------------------------------------------------ OWLv2


def test_owlv2_boxes_equal_transformers_post_processing(owlv2, street_image):
    found = owlv2.detect(street_image, "the red box")
    inputs = owlv2.processor(text=[["the red box"]], images=street_image, return_tensors="pt")
    with torch.no_grad():
        outputs = owlv2.model(**inputs)
    side = max(street_image.size)  # OWLv2 pads to a square: its boxes are relative to it
    expected = owlv2.processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                                      target_sizes=[(side, side)])[0]
    boxes = expected["boxes"].numpy().clip(0, [160, 120, 160, 120])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    order = np.argsort(-expected["scores"].numpy()[keep], kind="stable")
    np.testing.assert_allclose(found.boxes, boxes[keep][order], atol=1e-3)
    np.testing.assert_allclose(found.scores, expected["scores"].numpy()[keep][order], atol=1e-5)
    assert len(found) <= 16 and np.all(np.diff(found.scores) <= 0)


def test_owlv2_focus_queries_the_target_phrase(owlv2, street_image):
    text = "the red box left of the green one"
    focused = owlv2.detect(street_image, text, focus=(4, 11))
    np.testing.assert_allclose(focused.scores, owlv2.detect(street_image, "red box").scores)
    assert not np.allclose(focused.scores, owlv2.detect(street_image, text).scores)


def test_owlv2_batches_equal_single_calls(owlv2, street_image):
    images = [street_image, street_image.resize((60, 100)), street_image.crop((0, 0, 90, 120))]
    texts = ["the red box", "a cat", "the green box"]
    for batched, image, text in zip(owlv2.detect_batch(images, texts), images, texts):
        alone = owlv2.detect(image, text)
        # Batched matrix products round differently: a thousandth of a pixel.
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=1e-2)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-4)
    many = owlv2.detect_many(street_image, texts, [None, None, (4, 9)])
    np.testing.assert_allclose(many[2].scores, owlv2.detect(street_image, "green").scores, atol=1e-4)


def test_owlv2_warns_when_a_query_is_cut(owlv2, street_image):
    with pytest.warns(UserWarning, match="OWLv2 reads 16 tokens"):
        owlv2.detect(street_image, "the red box that is standing on the left of the green box near the white one")


# ------------------------------------------------------------------ Florence-2


@contextmanager
def scripted(detector: Florence2Detector, pieces: list[str]):
    """Make greedy decoding write ``pieces`` (tokens of the text, ``<loc_i>`` whole), then ``</s>``;
    yields the next-token logits returned at each step."""
    tokenizer = detector.tokenizer
    script = [tokenizer.convert_tokens_to_ids("<s>")]
    for piece in pieces:
        script += ([tokenizer.convert_tokens_to_ids(piece)] if piece.startswith("<loc_")
                   else tokenizer.encode(piece, add_special_tokens=False))
    script.append(tokenizer.convert_tokens_to_ids("</s>"))
    returned: list[torch.Tensor] = []

    def hook(module, inputs, output):
        output = output.clone()
        last = output[..., -1, :]
        rows = last.shape[0]
        step = len(returned) // rows if rows else 0
        target = script[min(step, len(script) - 1)]
        last[..., target] = last.max(dim=-1).values + 1.0
        returned.extend(last.detach().clone())
        return output

    handle = detector.model.lm_head.register_forward_hook(hook)
    try:
        yield script, returned
    finally:
        handle.remove()


def test_florence2_reads_boxes_as_its_post_processor_and_scores_the_location_tokens(florence2, street_image):
    pieces = ["the red box", "<loc_100>", "<loc_200>", "<loc_500>", "<loc_800>"]
    with scripted(florence2, pieces) as (script, returned):
        found = florence2.detect(street_image, "the red box")
    text = "".join(pieces)
    expected = florence2.processor.post_process_generation(text, task=DETECTION_TASK, image_size=street_image.size)
    np.testing.assert_allclose(found.boxes, expected[DETECTION_TASK]["bboxes"])
    assert found.labels == ["the red box"]
    locations = [i for i, token in enumerate(script) if token in florence2._location_ids]
    # returned[i] predicted script[i] (the first step writes <s> after the decoder start token).
    probs = [torch.softmax(returned[i].double(), -1)[script[i]].item() for i in locations]
    assert found.scores[0] == pytest.approx(np.mean(probs), rel=1e-5)


def test_florence2_focus_keeps_the_target_phrase_grounding(florence2, street_image):
    pieces = ["the red box", "<loc_100>", "<loc_200>", "<loc_300>", "<loc_400>", "<loc_600>", "<loc_200>",
              "<loc_700>", "<loc_400>", "the green box", "<loc_500>", "<loc_500>", "<loc_900>", "<loc_900>"]
    text = "the red box left of the green box"
    with scripted(florence2, pieces):
        focused = florence2.detect(street_image, text, focus=(4, 11))
    assert len(focused) == 2 and focused.labels == ["the red box"] * 2  # both boxes of the phrase
    with scripted(florence2, pieces):
        everything = florence2.detect(street_image, text)
    assert len(everything) == 3 and sorted(everything.labels) == ["the green box"] + ["the red box"] * 2
    assert np.all(np.diff(everything.scores) <= 0)
    with scripted(florence2, ["it", "<loc_1>", "<loc_1>", "<loc_9>", "<loc_9>"] + pieces):
        focused_again = florence2.detect(street_image, "it is the red box left of the green box", focus=(10, 17))
    assert focused_again.labels == ["the red box"] * 2  # "it" is on the processor's black list


def test_florence2_task_follows_focus(florence2, street_image, monkeypatch):
    prompts = []
    original = florence2._generate

    def spy(images, texts):
        prompts.extend(texts)
        return original(images, texts)

    monkeypatch.setattr(florence2, "_generate", spy)
    florence2.detect_many(street_image, ["the red box", "the red box"], [None, (4, 11)])
    assert prompts == [DETECTION_TASK + "the red box", GROUNDING_TASK + "the red box"]


def test_florence2_batches_equal_single_calls(florence2, street_image):
    images = [street_image, street_image.resize((60, 100))]
    texts = ["the red box", "a cat on the left"]
    for batched, image, text in zip(florence2.detect_batch(images, texts, [None, (2, 5)]), images, texts):
        alone = florence2.detect(image, text, focus=(2, 5) if text.startswith("a cat") else None)
        np.testing.assert_allclose(batched.boxes, alone.boxes)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)


@pytest.mark.parametrize(("phrase", "text", "focus", "expected"), [
    ("the red box", "the red box left of the green box", (4, 11), True),
    ("the green box", "the red box left of the green box", (4, 11), False),
    ("The Red Box", "the red box left of the green box", (0, 11), True),
    ("red boxes", "the red box left of the green box", (4, 11), True),  # rephrased: shares "red"
    ("a dog", "the red box left of the green box", (4, 11), False),
    ("", "the red box", (4, 11), False),
])
def test_is_target_phrase(phrase, text, focus, expected):
    assert is_target_phrase(phrase, text, focus) is expected


# ------------------------------------------------------------------ the agent


@pytest.mark.parametrize("which", ["tiny_owlv2", "tiny_florence2"])
@pytest.mark.parametrize(("strategy", "focus"), [("specialist", False), ("specialist", True), ("sfa", True),
                                                 ("crs", False), ("sfa+crs", True)])
def test_agent_runs_every_detector_strategy(which, strategy, focus, request, tiny_qwen2_vl, street_image):
    folder = request.getfixturevalue(which)
    agent = Agent(strategy, focus=focus, detector=str(folder), mllm=str(tiny_qwen2_vl), llm="heuristic",
                  device="cpu")
    if which == "tiny_florence2":
        agent.backends.detector.max_new_tokens = 24  # random weights ramble on; a short answer is enough here
    result = agent.locate(street_image, "the red box on the left")
    assert isinstance(result.detections, Detections)
    assert type(agent.backends.detector).__name__ == {"tiny_owlv2": "Owlv2Detector",
                                                      "tiny_florence2": "Florence2Detector"}[which]


def test_florence2_without_location_tokens_is_refused(florence2):
    class NoLocations:
        def get_vocab(self):
            return {"a": 0}

    processor = type("P", (), {"tokenizer": NoLocations()})()
    with pytest.raises(ValueError, match="1000 <loc_i> tokens"):
        Florence2Detector(florence2.model, processor)


def test_images_are_any_size(owlv2, florence2):
    tall = Image.new("RGB", (20, 300), (200, 30, 30))
    for detector in (owlv2, florence2):
        found = detector.detect(tall, "a red box")
        assert (found.boxes[:, [0, 2]] <= 20).all() and (found.boxes[:, [1, 3]] <= 300).all()


def test_agent_cli_detect_and_locate_take_an_owlv2_folder(tiny_owlv2, tiny_internvl, street_image, tmp_path, capsys):
    import json

    from agent.cli import main

    image = tmp_path / "street.png"
    street_image.save(image)
    assert main(["detect", str(image), "the red box on the left", "--focus", "red box", "--detector", str(tiny_owlv2),
                 "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["boxes"]) == 3 and result["focus"] == [4, 11]
    assert main(["locate", str(image), "the red box on the left", "--strategy", "sfa+crs", "--detector",
                 str(tiny_owlv2), "--mllm", str(tiny_internvl), "--llm", "heuristic", "--device", "cpu",
                 "--json"]) == 0
    assert "boxes" in json.loads(capsys.readouterr().out)
