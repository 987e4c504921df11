"""Specialist detectors: the protocol and the bundled backends."""

from ..lazy import lazy_exports

_EXPORTS = {
    "Detector": ".base",
    "Span": "..text",
    "caption_and_focus_tokens": ".base",
    "check_text": "..text",
    "DEFAULT_DETECTOR": "..defaults",
    "DETECTOR_CLASSES": ".auto",
    "Florence2Detector": ".florence2",
    "GroundingDinoDetector": ".grounding_dino",
    "Owlv2Detector": ".owlv2",
    "detector_class": ".auto",
    "load_detector": ".auto",
    "OriginalGroundingDinoDetector": ".groundingdino_original",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
