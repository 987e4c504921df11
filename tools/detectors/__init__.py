"""Specialist detectors: the protocol and the bundled backends."""

from .base import Detector, Span, caption_and_focus_tokens, check_text
from .grounding_dino import DEFAULT_DETECTOR, GroundingDinoDetector
from .groundingdino_original import OriginalGroundingDinoDetector

__all__ = [
    "DEFAULT_DETECTOR",
    "Detector",
    "GroundingDinoDetector",
    "OriginalGroundingDinoDetector",
    "Span",
    "caption_and_focus_tokens",
    "check_text",
]
