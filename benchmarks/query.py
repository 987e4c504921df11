"""The one standard query every benchmark measures, and the prompts the library builds for it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tools.detections import Detections
from tools.extraction import HeuristicExtractor
from tools.extraction.parsing import extraction_prompt
from tools.mllm.crs import crs_prompt
from tools.mllm.families import ModelFamily

IMAGE_SIZE = (640, 480)  # (w, h)
EXPRESSION = "the long snowboard to the right of the skis"
# Five specialist candidates in pixels, as CRS offers them (top-5, best first).
CANDIDATE_BOXES = [[52, 290, 598, 402], [310, 250, 636, 330], [18, 120, 210, 460], [402, 40, 590, 470],
                   [96, 300, 330, 388]]
CANDIDATE_SCORES = [0.62, 0.48, 0.41, 0.33, 0.27]


def target_phrase(expression: str = EXPRESSION) -> str:
    """The target the router detects, from the model-free extractor ("the long snowboard")."""
    return HeuristicExtractor().extract([expression])[0]


def candidates() -> Detections:
    return Detections(CANDIDATE_BOXES, CANDIDATE_SCORES)


def grounding_prompt(family: ModelFamily, focus: bool) -> str:
    """The family's grounding question, with the target-focus sentence when ``focus``."""
    return family.grounding_prompt(EXPRESSION, target_phrase() if focus else None)


def crs_question() -> str:
    """The CRS multiple-choice question over the five candidates (no "None" option)."""
    prompt, _ = crs_prompt(EXPRESSION, candidates(), IMAGE_SIZE)
    return prompt


def batch_expressions(size: int = 8) -> list[str]:
    """The standard expression and FineCops-Ref-style others: one batch as ``locate_batch``/``eval`` ask it."""
    from .targets_table import CASES, FINECOPS

    others = [case.expression for case in CASES if case.style == FINECOPS and case.expression != EXPRESSION]
    return [EXPRESSION, *others[: size - 1]]


def extraction_question(expressions: list[str] | None = None) -> str:
    """The target-extraction question for ``expressions`` (default: the standard one alone, as
    ``Agent.locate`` asks it)."""
    return extraction_prompt(expressions or [EXPRESSION])


def extraction_answer(expressions: list[str] | None = None) -> str:
    """The extractor's expected reply (a dict keyed "1".."n"), stop token included."""
    targets = HeuristicExtractor().extract(expressions or [EXPRESSION])
    return json.dumps({str(i): target for i, target in enumerate(targets, start=1)}) + "<|im_end|>"


def image() -> Image.Image:
    """A deterministic RGB image of ``IMAGE_SIZE``; content does not change any cost measured."""
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)
