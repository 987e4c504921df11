"""Plug your own detector and MLLM into the agent: here, two model-free toys that run offline.

    python examples/custom_backend.py

``ColourDetector`` finds flat-coloured shapes and scores them by the colour words of
the text (or of the focus span, for target-focus matching); ``RightmostChooser``
answers CRS questions from the detector's scores, nudged toward the rightmost candidate
when the expression says "right". Any object with the same methods works: OWLv2, Florence-2, GPT-4o, ...
"""

from pathlib import Path

import numpy as np

from agent import Agent
from tools import Detections
from tools.drawing import draw_detections
from tools.images import load_image

COLOURS = {"red": (200, 30, 40), "blue": (30, 60, 160), "green": (20, 140, 70), "orange": (240, 120, 20)}
IMAGE = Path(__file__).resolve().parent / "images" / "snow.png"


class ColourDetector:
    """Detector protocol: ``detect(image, text, focus=None) -> Detections`` (or ``(boxes, scores)``)."""

    def detect(self, image, text, focus=None):
        words = (text if focus is None else text[focus[0] : focus[1]]).lower()
        pixels = np.asarray(image).astype(int)
        boxes, scores = [], []
        for name, rgb in COLOURS.items():
            ys, xs = np.nonzero((np.abs(pixels - rgb).sum(axis=2) < 30))
            if len(xs):
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                scores.append(0.9 if name in words else 0.1)
        return boxes, scores


class RightmostChooser:
    """MLLM protocol, CRS half: option probabilities in candidate order ("None" last when allowed)."""

    def select(self, image, expression, candidates: Detections, allow_none=False):
        centres = (candidates.boxes[:, 0] + candidates.boxes[:, 2]) / 2
        preference = centres if "right" in expression else -centres
        weights = candidates.scores * np.exp((preference - preference.max()) / 200)
        return list(weights) + ([0.0] if allow_none else [])

    def ground(self, image, expression, focus=None):
        return [], []  # this toy cannot write boxes; the agent falls back to the specialist


if __name__ == "__main__":
    image = load_image(IMAGE)
    agent = Agent("crs", focus=True, detector=ColourDetector(), mllm=RightmostChooser(), extractor="heuristic")
    result = agent.locate(image, "the blue snowboard to the right of the skis")
    print(f"target {result.target!r} -> boxes {result.boxes} (path {result.path}, option {result.selection.letter})")
    draw_detections(image, result.detections).save("custom_backend.png")
    print("saved custom_backend.png")
