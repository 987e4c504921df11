"""The original-checkpoint Grounding DINO backend (the optional ``groundingdino`` extra).

The caption/focus helper and the load errors are tested everywhere. The model tests
need ``groundingdino-py`` with ``transformers<5`` and are skipped without them (CI's
default): they build a small model through the package's own config file and
``build_model``, save its state dict as IDEA does, and load it through ``from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

from tools import boxes as box_ops
from tools.detectors.base import caption_and_focus_tokens
from tools.detectors.groundingdino_original import INSTALL_HINT, OriginalGroundingDinoDetector
from tools.errors import CheckpointNotFoundError, UserInputError

needs_groundingdino = pytest.mark.skipif(
    importlib.util.find_spec("groundingdino") is None or Version(transformers.__version__) >= Version("5"),
    reason=f"needs groundingdino-py and transformers<5 ({INSTALL_HINT})",
)

TEXT = "a red car on the left"
CAR = (6, 9)
# Whole words as tokens: "[CLS] a red car on the left . [SEP]" puts "car" at position 3.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "a", "red", "car", "on", "the", "left", "man", "dog"]
CAR_TOKEN = 3
# Appended to the package's SwinT OGC config: the real backbone, a one-layer transformer.
SMALL_MODEL = "enc_layers = 1\ndec_layers = 1\nnum_queries = 20\ndim_feedforward = 64\n"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT and its tokenizer, saved like a Hub checkpoint."""
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(folder)
    # From the folder: BertTokenizerFast(vocab_file=...) has an empty vocabulary in transformers 5.
    transformers.BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(bert_folder):
    return transformers.AutoTokenizer.from_pretrained(bert_folder)


def test_caption_is_stripped_and_ends_with_a_period(tokenizer):
    assert caption_and_focus_tokens("  a dog ", None, tokenizer, 256) == ("a dog.", None)
    assert caption_and_focus_tokens("a dog.", None, tokenizer, 256) == ("a dog.", None)


def test_focus_maps_to_the_overlapping_tokens(tokenizer):
    assert caption_and_focus_tokens(TEXT, CAR, tokenizer, 256)[1] == [CAR_TOKEN]
    assert caption_and_focus_tokens(TEXT, (2, 9), tokenizer, 256)[1] == [2, 3]
    # A span counts in the original text, before the leading spaces are stripped.
    assert caption_and_focus_tokens("   " + TEXT, (9, 12), tokenizer, 256)[1] == [CAR_TOKEN]


def test_long_text_warns_and_a_truncated_focus_falls_back_to_every_token(tokenizer):
    with pytest.warns(UserWarning, match="the text after 'a red car' is ignored"):
        assert caption_and_focus_tokens(TEXT, CAR, tokenizer, 4)[1] == [CAR_TOKEN]
    with pytest.warns(UserWarning) as record:
        assert caption_and_focus_tokens(TEXT, (17, 21), tokenizer, 4)[1] is None
    assert "truncated part" in str(record[-1].message)


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        OriginalGroundingDinoDetector.from_pretrained(tmp_path / "groundingdino_swint_ogc.pth")


def test_missing_package_names_the_extra(tmp_path, monkeypatch):
    checkpoint = tmp_path / "weights.pth"
    torch.save({"model": {}}, checkpoint)
    monkeypatch.setitem(sys.modules, "groundingdino", None)  # makes `import groundingdino` fail
    with pytest.raises(ImportError, match=r"rex-agent\[groundingdino\]"):
        OriginalGroundingDinoDetector.from_pretrained(checkpoint)


@needs_groundingdino
def test_transformers_5_is_refused_with_a_clear_message(small_checkpoint, monkeypatch):
    # Through sys.modules: importing transformers' submodules swaps the module object there.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.0.0")
    with pytest.raises(ImportError, match="needs transformers<5"):
        OriginalGroundingDinoDetector.from_pretrained(small_checkpoint[0])


def _config_file(folder: Path, extra: str = "") -> Path:
    import groundingdino

    shipped = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    path = folder / "GroundingDINO_small.py"
    path.write_text(shipped.read_text() + SMALL_MODEL + extra)
    return path


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, bert_folder):
    """``(checkpoint, config)`` of a randomly initialised model, saved as IDEA's ``.pth`` files are."""
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    folder = tmp_path_factory.mktemp("groundingdino")
    config_path = _config_file(folder)
    config = SLConfig.fromfile(str(config_path))
    config.text_encoder_type = str(bert_folder)
    torch.manual_seed(0)
    checkpoint = folder / "groundingdino_small.pth"
    torch.save({"model": build_model(config).state_dict()}, checkpoint)
    return checkpoint, config_path


@pytest.fixture(scope="module")
def detector(small_checkpoint, bert_folder):
    checkpoint, config_path = small_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a missing-weights warning would fail here
        warnings.filterwarnings("ignore", message=".*(meshgrid|C\\+\\+ ops)")  # the package's own noise
        return OriginalGroundingDinoDetector.from_pretrained(
            checkpoint, config_path, text_encoder=bert_folder, device="cpu", image_size=96, max_image_size=128
        )


def _raw_outputs(detector, image, caption):
    pixels, _ = detector.transform(image, None)
    with torch.inference_mode():
        outputs = detector.model(pixels[None], captions=[caption])
    return outputs["pred_logits"][0].sigmoid(), outputs["pred_boxes"][0]


@needs_groundingdino
def test_boxes_are_pixels_of_the_input_image(detector, street_image):
    detections = detector.detect(street_image, TEXT)
    assert len(detections) == 20
    assert box_ops.is_valid(detections.boxes).all()
    # Clipped to the image, as mmdetection clamps them.
    assert (detections.boxes >= 0).all()
    assert (detections.boxes[:, 2] <= street_image.width).all() and (detections.boxes[:, 3] <= street_image.height).all()
    assert list(detections.scores) == sorted(detections.scores, reverse=True)


@needs_groundingdino
def test_unfocused_score_is_the_max_over_all_tokens(detector, street_image):
    probs, cxcywh = _raw_outputs(detector, street_image, TEXT + ".")
    scores = probs.max(dim=-1).values.numpy()
    best = int(scores.argmax())
    # By hand: centre and size relative to the image, to corner pixels, clipped to the image.
    cx, cy, w, h = cxcywh[best].tolist()
    width, height = street_image.size
    expected_box = np.clip([[(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                             (cy + h / 2) * height]], 0, [width, height, width, height])

    detections = detector.detect(street_image, TEXT)
    np.testing.assert_allclose(detections.scores, np.sort(scores)[::-1], rtol=1e-6)
    np.testing.assert_allclose(detections.boxes[0], expected_box[0], rtol=1e-6)


@needs_groundingdino
def test_focused_score_uses_only_the_focus_tokens(detector, street_image):
    probs, _ = _raw_outputs(detector, street_image, TEXT + ".")
    expected = np.sort(probs[:, CAR_TOKEN].numpy())[::-1]
    np.testing.assert_allclose(detector.detect(street_image, TEXT, focus=CAR).scores, expected, rtol=1e-6)
    np.testing.assert_allclose(detector.detect(street_image, "  " + TEXT, focus=(8, 11)).scores, expected, rtol=1e-6)


@needs_groundingdino
def test_a_focus_over_several_tokens_scores_by_their_mean(detector, street_image):
    probs, _ = _raw_outputs(detector, street_image, TEXT + ".")
    expected = np.sort(probs[:, [2, 3]].mean(dim=-1).numpy())[::-1]  # characters 2..9 are tokens 2 and 3
    np.testing.assert_allclose(detector.detect(street_image, TEXT, focus=(2, 9)).scores, expected, rtol=1e-6)


@needs_groundingdino
def test_focus_outside_the_text_is_a_user_error(detector, street_image):
    with pytest.raises(UserInputError):
        detector.detect(street_image, TEXT, focus=(0, 99))


@needs_groundingdino
def test_checkpoint_of_another_architecture_is_a_user_error(small_checkpoint, bert_folder, tmp_path):
    checkpoint, _ = small_checkpoint
    wider = _config_file(tmp_path, "dim_feedforward = 128\n")
    with pytest.raises(UserInputError, match="does not fit config"):
        OriginalGroundingDinoDetector.from_pretrained(checkpoint, wider, text_encoder=bert_folder, device="cpu")
