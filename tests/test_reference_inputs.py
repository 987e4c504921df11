"""What the models see under each profile: EXIF orientation, the detector's resize, InternVL's
own evaluation convention (tiles and answer reading)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from agent import Agent
from agent.evaluation.run import predict
from agent.evaluation.report import build_metrics
from tools.datasets import Sample
from tools.detections import Detections
from tools.detectors import GroundingDinoDetector
from tools.detectors.cache import CachedDetector
from tools.detectors.grounding_dino import mmdet_fix_scale_size
from tools.errors import ModelOutputError
from tools.images import exif_orientation, frame_sizes, load_image
from tools.mllm.families import INTERNVL, QWEN2_VL

ROTATED_90 = 6  # EXIF: rotate 90 degrees clockwise to display


@pytest.fixture
def rotated(tmp_path):
    """A 160x120 JPEG whose EXIF tag turns it to 120x160, red on its left as stored."""
    image = Image.new("RGB", (160, 120), (20, 20, 200))
    image.paste((220, 20, 20), (0, 0, 40, 120))
    exif = Image.Exif()
    exif[0x0112] = ROTATED_90
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_images_read_as_stored_carry_no_orientation_any_more(rotated):
    assert exif_orientation(rotated) == ROTATED_90 and frame_sizes(rotated) == ((160, 120), (120, 160))
    assert load_image(rotated).size == (120, 160)
    stored = load_image(rotated, orientation=False)
    assert stored.size == (160, 120) and exif_orientation(stored) == 1
    assert load_image(stored).size == (160, 120)  # nothing downstream rotates it again
    assert tuple(np.asarray(stored)[60, 10]) == pytest.approx((220, 20, 20), abs=12)


class Seer:
    """An MLLM and a detector that record the size of every image they are shown."""

    def __init__(self):
        self.sizes = []

    def ground(self, image, expression, focus=None):
        self.sizes.append(("mllm", image.size))
        return Detections([[1, 1, 20, 20]], [0.9])

    def select(self, image, expression, candidates, allow_none=False):
        self.sizes.append(("mllm", image.size))
        return [1.0] + [0.0] * (len(candidates) + allow_none - 1)

    def detect(self, image, text, focus=None):
        self.sizes.append(("detector", image.size))
        return Detections([[0, 0, 50, 50], [60, 60, 100, 100]], [0.9, 0.8])


@pytest.mark.parametrize(("profile", "mllm_size"), [("default", (120, 160)), ("reference", (160, 120))])
def test_the_reference_mllm_sees_the_pixels_as_stored(rotated, profile, mllm_size):
    seer = Seer()
    for strategy in ("mllm", "crs"):
        seer.sizes.clear()
        Agent(strategy=strategy, profile=profile, detector=seer, mllm=seer, extractor="heuristic").locate(
            rotated, "the red cup")
        assert ("mllm", mllm_size) in seer.sizes
        assert all(size == (120, 160) for who, size in seer.sizes if who == "detector")


@pytest.mark.parametrize(("annotated", "read_as_stored"), [((160, 120), True), ((120, 160), False)])
def test_eval_reads_an_image_in_the_frame_its_annotation_describes(rotated, annotated, read_as_stored):
    seer = Seer()
    sample = Sample(1, rotated, "the red cup", [[0, 0, 10, 10]], level=1, image_size=annotated)
    for profile in ("default", "reference"):
        seer.sizes.clear()
        answer = predict(Agent(strategy="crs", profile=profile, detector=seer, mllm=seer, extractor="heuristic"),
                         sample)
        assert "error" not in answer.fields and answer.fields.get("image_read_as_stored", False) == read_as_stored
        assert all(size == annotated for who, size in seer.sizes if who == "detector")
    metrics = build_metrics("finecops-ref", {}, [answer], {})
    assert metrics["image_read_as_stored"] == int(read_as_stored)
    wrong = predict(Agent(strategy="crs", detector=seer, mllm=seer, extractor="heuristic"),
                    Sample(2, rotated, "the red cup", [[0, 0, 10, 10]], image_size=(100, 100)))
    assert wrong.fields["error"].startswith("UserInputError") and "annotation says 100x100" in wrong.fields["error"]


def test_mmdetections_resize_rounds_half_up_where_transformers_truncates():
    from transformers import GroundingDinoImageProcessor

    assert mmdet_fix_scale_size((640, 480)) == (1067, 800)
    assert mmdet_fix_scale_size((480, 640)) == (800, 1067)
    assert mmdet_fix_scale_size((3000, 1000)) == (1333, 444)  # the long side binds
    processor = GroundingDinoImageProcessor()
    assert processor(images=Image.new("RGB", (640, 480)), return_tensors="pt")["pixel_values"].shape[-2:] == (800, 1066)


def test_the_reference_detector_resizes_as_mmdetection_and_caches_apart(tiny_mm_grounding_dino, tmp_path):
    detector = GroundingDinoDetector.from_pretrained(str(tiny_mm_grounding_dino), device="cpu")
    shapes = []
    handle = detector.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["pixel_values"].shape[-2:])), with_kwargs=True)
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    try:
        default = detector.detect(image, "a blue square")
        mmdet = detector.detect(image, "a blue square", resize="mmdet")
    finally:
        handle.remove()
    # The tiny processor's 128/192 edges: 160x120 -> 170x128 (transformers), 171x128 (mmdetection).
    assert shapes == [(128, 170), (128, 171)]
    assert not np.allclose(default.scores, mmdet.scores)  # the one-pixel difference moves every score
    cached = CachedDetector(detector, tmp_path / "cache", "tiny")
    assert cached.resizes == ("transformers", "mmdet")
    cached.detect(image, "a blue square")
    again = cached.detect(image, "a blue square", resize="mmdet")
    assert cached.misses == 2 and np.allclose(again.scores, mmdet.scores)
    # The reference profile asks for it; a detector that offers no resize is asked without one.
    agent = Agent(strategy="specialist", profile="reference", focus=False, detector=detector)
    assert agent.backends.detector_adapter.resize_option() == {"resize": "mmdet"}
    assert Agent(strategy="specialist", profile="reference", focus=False, detector=Seer()).backends.detector_adapter.resize_option() == {}


def test_internvl_answers_are_read_as_its_own_refcoco_evaluation_reads_them():
    # Coordinates summing to less than 4 are fractions of the image ...
    assert INTERNVL.parse_answer("<box>[[0.1, 0.2, 0.5, 0.6]]</box>", (200, 100)).boxes.tolist() == [
        [20.0, 20.0, 100.0, 60.0]]
    # ... and an overshoot of 0..1000 is clipped, never a rejected answer.
    assert INTERNVL.parse_answer("<box>[[100, 200, 1100, 900]]</box>", (200, 100)).boxes.tolist() == [
        [20.0, 20.0, 200.0, 90.0]]
    assert INTERNVL.parse_answer("[[0.9, 0.9, 1.0, 1.0]]", (200, 100)).boxes.tolist() == [[180.0, 90.0, 200.0, 100.0]]
    with pytest.raises(ModelOutputError, match="no area"):  # a sum of 4 is read in 0..1000
        INTERNVL.parse_answer("[[1, 1, 1, 1]]", (200, 100))
    with pytest.raises(ModelOutputError, match="outside"):
        QWEN2_VL.parse_answer("<|box_start|>(100,200),(1100,900)<|box_end|>", (200, 100))


class FrameSeer(Seer):
    """Records the candidates the MLLM is asked about and answers grounding at a fixed corner."""

    def __init__(self):
        super().__init__()
        self.candidates = []

    def ground(self, image, expression, focus=None):
        return Detections([[0, 0, image.width / 2, image.height / 4]], [0.9])

    def select(self, image, expression, candidates, allow_none=False):
        self.candidates.append(candidates.boxes.tolist())
        return super().select(image, expression, candidates, allow_none)


def test_the_mllm_reads_coordinates_in_the_detectors_frame_when_it_sees_the_stored_pixels(rotated):
    seer = FrameSeer()
    agent = Agent(strategy="crs", profile="reference", detector=seer, mllm=seer, extractor="heuristic")
    result = agent.locate(rotated, "the red cup")
    # The detector saw 120x160; the MLLM sees 160x120, so its options are the same boxes relative to
    # the image (what the scripts write, dividing by the annotation's size) ...
    assert seer.candidates[0][0] == pytest.approx([0.0, 0.0, 50 * 160 / 120, 50 * 120 / 160])
    # ... and the answer is the detector's own box again.
    assert result.boxes[0] == pytest.approx([0.0, 0.0, 50.0, 50.0])
    grounded = Agent(strategy="mllm", profile="reference", mllm=seer, extractor="heuristic").locate(
        rotated, "the red cup")
    assert grounded.boxes[0] == pytest.approx([0.0, 0.0, 60.0, 40.0])  # half the width, a quarter of the height of 120x160


def test_a_reference_build_of_training_data_resizes_as_mmdetection(tmp_path):
    from finetune.build import BuildConfig, _CandidateSource

    class Resizing(Seer):
        resizes = ("transformers", "mmdet")

        def detect(self, image, text, focus=None, resize="transformers"):
            self.sizes.append(resize)
            return Detections([[0, 0, 10, 10]], [0.9])

    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    sample = Sample(1, tmp_path / "a.png", "the cup", [[0, 0, 10, 10]], level=1)
    for profile, expected in (("default", "transformers"), ("reference", "mmdet")):
        detector = Resizing()
        config = BuildConfig(dataset_format="finecops-ref", annotations="u", output_dir=str(tmp_path), profile=profile)
        _CandidateSource(config, tmp_path / profile, detector).for_sample(sample)
        assert detector.sizes == [expected]
