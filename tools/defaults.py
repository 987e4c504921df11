"""The method's numbers and the default checkpoints, declared once.

Everything here is plain data, importable without torch, so settings, command-line flags
and their help text can be built from it at once (``agent/configuration.py``). The modules
that use these values (``tools.routing``, the backends) import them from here.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from .errors import UserInputError
from .profiles import NMS_METHODS

# The paper's specialist (MM-Grounding-DINO-L) and MLLM (Qwen2-VL-7B-Instruct).
DEFAULT_DETECTOR = "openmmlab-community/mm_grounding_dino_large_all"
DEFAULT_MLLM = "Qwen/Qwen2-VL-7B-Instruct"
# The default checkpoint of each further family, when its class is built without one.
DEFAULT_INTERNVL = "OpenGVLab/InternVL3-8B-hf"
DEFAULT_OWLV2 = "google/owlv2-base-patch16-ensemble"
DEFAULT_FLORENCE2 = "florence-community/Florence-2-large"
# The tiles InternVL cuts an image into, at inference and in training: what its own RefCOCO
# evaluation uses (``--dynamic --max-num 6``; the released processors say 12).
INTERNVL_TILES = 6

# ``mllm`` / ``llm`` settings naming a model on an OpenAI-compatible server: "openai:MODEL".
OPENAI_PREFIX = "openai:"

# Queries run together, rows per MLLM forward pass, requests in flight to a server.
BATCH_SIZE = 8
# Expressions one target-extraction prompt asks about: the authors' script's batch.
EXTRACTION_PER_PROMPT = 8

# CRS options are lettered A, B, C, ...: at most this many options can be offered.
OPTION_LETTERS = string.ascii_uppercase


CRS_SCORE_THRESHOLD = 0.0


@dataclass(frozen=True)
class BoxFilter:
    """Which of a detector's boxes count: the top ``top_k``, then those scoring at least
    ``score_threshold`` (strictly above it with ``nms="opencv"``, as OpenCV does), then NMS at
    ``iou_threshold`` by ``nms`` (see ``tools.profiles.NMS_METHODS``). The router counts
    instances with one (``ROUTING``); CRS offers the boxes another keeps (``BoxFilter.crs``)."""

    top_k: int = 10
    score_threshold: float = 0.2
    iou_threshold: float = 0.7
    nms: str = "iou"

    def __post_init__(self) -> None:
        if self.nms not in NMS_METHODS:
            raise UserInputError(f"unknown NMS method {self.nms!r}; choose one of {', '.join(NMS_METHODS)}")
        if self.top_k < 1:
            raise UserInputError(f"top_k must be at least 1, got {self.top_k}")

    @classmethod
    def crs(cls, top_k: int, iou_threshold: float, nms: str = "iou") -> "BoxFilter":
        """The CRS candidates' filter: the authors' score threshold of 0, with ``top_k`` and NMS."""
        return cls(top_k, CRS_SCORE_THRESHOLD, iou_threshold, nms)


# The authors' router: top-10, scores of at least 0.2, NMS at 0.7.
ROUTING = BoxFilter()
# The authors' CRS: top-5, NMS 0.7, and a score threshold of 0 (OpenCV keeps scores above it).
CRS_CANDIDATES = BoxFilter.crs(top_k=5, iou_threshold=0.7)
