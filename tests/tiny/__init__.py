"""Builders of tiny, randomly initialised checkpoints of the real architectures.

Shared by the test suite (session fixtures in ``tests/conftest.py``) and by anything
else that needs a loadable model offline. Each builder writes a folder with
``save_pretrained`` that loads through the same ``from_pretrained`` path as a Hub id.
"""

from .florence2 import build_tiny_florence2
from .grounding_dino import build_tiny_grounding_dino
from .internvl import build_tiny_internvl
from .owlv2 import build_tiny_owlv2
from .qwen_vl import build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, build_tiny_qwen3_vl

__all__ = [
    "build_tiny_florence2", "build_tiny_grounding_dino", "build_tiny_internvl", "build_tiny_owlv2",
    "build_tiny_qwen2_vl", "build_tiny_qwen2_5_vl", "build_tiny_qwen3_vl",
]
