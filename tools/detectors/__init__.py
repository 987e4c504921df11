"""Specialist detectors: the protocol and the bundled backends."""

from .base import Detector, Span, check_text
from .grounding_dino import DEFAULT_DETECTOR, GroundingDinoDetector

__all__ = ["DEFAULT_DETECTOR", "Detector", "GroundingDinoDetector", "Span", "check_text"]
