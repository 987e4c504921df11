"""Building blocks of REX Agent: detections, box maths, images and model backends.

    from tools import Detections, GroundingDinoDetector, load_image
    from tools import boxes            # every box conversion, IoU and NMS
"""

from .lazy import lazy_exports

_EXPORTS = {
    "boxes": ".boxes",
    "Detections": ".detections",
    "CRS_CANDIDATES": ".defaults",
    "ROUTING": ".defaults",
    "DEFAULT_DETECTOR": ".defaults",
    "DEFAULT_MLLM": ".defaults",
    "Detector": ".detectors",
    "Florence2Detector": ".detectors",
    "GroundingDinoDetector": ".detectors",
    "Owlv2Detector": ".detectors",
    "load_detector": ".detectors",
    "CheckpointNotFoundError": ".errors",
    "ImageLoadError": ".errors",
    "ModelOutputError": ".errors",
    "RemoteServiceError": ".errors",
    "RexError": ".errors",
    "UserInputError": ".errors",
    "load_image": ".images",
    "BoxFilter": ".defaults",
    "count_instances": ".routing",
    "difficulty_level": ".routing",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
