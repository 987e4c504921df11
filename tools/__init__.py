"""Building blocks of REX Agent: detections, box maths, images and model backends.

    from tools import Detections, GroundingDinoDetector, load_image
    from tools import boxes            # every box conversion, IoU and NMS
"""

from . import boxes
from .detections import Detections
from .detectors import DEFAULT_DETECTOR, Detector, GroundingDinoDetector
from .errors import (
    CheckpointNotFoundError,
    ImageLoadError,
    ModelOutputError,
    RemoteServiceError,
    RexError,
    UserInputError,
)
from .images import load_image
from .routing import RoutingThresholds, count_instances, difficulty_level

__all__ = [
    "DEFAULT_DETECTOR",
    "CheckpointNotFoundError",
    "Detections",
    "Detector",
    "GroundingDinoDetector",
    "ImageLoadError",
    "ModelOutputError",
    "RemoteServiceError",
    "RexError",
    "RoutingThresholds",
    "UserInputError",
    "boxes",
    "count_instances",
    "difficulty_level",
    "load_image",
]
