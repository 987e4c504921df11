"""Session-wide fixtures: tiny checkpoints are built once and loaded like real ones."""

from __future__ import annotations

import pytest
from hypothesis import settings
from PIL import Image

from tests import tiny

# Property tests check behaviour, not speed: no per-example deadline, which a busy
# 2-core machine would otherwise trip at random.
settings.register_profile("rex", deadline=None)
settings.load_profile("rex")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def tiny_mm_grounding_dino(tiny_checkpoints):
    """Folder of a tiny ``MMGroundingDinoForObjectDetection`` (text limit 32 tokens)."""
    return tiny.build_tiny_grounding_dino(tiny_checkpoints / "mm_grounding_dino", mm=True)


@pytest.fixture(scope="session")
def tiny_grounding_dino(tiny_checkpoints):
    """Folder of a tiny ``GroundingDinoForObjectDetection`` (the IDEA architecture)."""
    return tiny.build_tiny_grounding_dino(tiny_checkpoints / "grounding_dino", mm=False)


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tiny_checkpoints):
    return tiny.build_tiny_qwen2_vl(tiny_checkpoints / "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tiny_checkpoints):
    return tiny.build_tiny_qwen2_5_vl(tiny_checkpoints / "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tiny_checkpoints):
    pytest.importorskip("transformers", minversion="4.57")
    return tiny.build_tiny_qwen3_vl(tiny_checkpoints / "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_internvl(tiny_checkpoints):
    """Folder of a tiny ``InternVLForConditionalGeneration`` (-hf layout, 64-px tiles, at most 4)."""
    return tiny.build_tiny_internvl(tiny_checkpoints / "internvl")


@pytest.fixture(scope="session")
def tiny_owlv2(tiny_checkpoints):
    """Folder of a tiny ``Owlv2ForObjectDetection`` (64-px images, 16 boxes, 16-token queries)."""
    return tiny.build_tiny_owlv2(tiny_checkpoints / "owlv2")


@pytest.fixture(scope="session")
def tiny_florence2(tiny_checkpoints):
    """Folder of a tiny ``Florence2ForConditionalGeneration`` (64-px images, 5 image tokens)."""
    return tiny.build_tiny_florence2(tiny_checkpoints / "florence2")


@pytest.fixture
def street_image():
    """A 160x120 RGB image with a few flat-coloured rectangles."""
    image = Image.new("RGB", (160, 120), (90, 120, 160))
    for x0, colour in ((10, (200, 30, 30)), (70, (30, 200, 30)), (120, (240, 240, 240))):
        image.paste(colour, (x0, 40, x0 + 30, 100))
    return image
