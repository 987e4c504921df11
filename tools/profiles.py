"""Profiles: the library's behaviour (``default``) or the authors' released scripts (``reference``).

Every behaviour in which the two differ is a field of ``Profile``, so the agent, the CRS data
builder and the README's table read them from one place. The README ("Profiles") says why
each default differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserInputError

# "iou": non-maximum suppression on the true IoU of xyxy boxes (``tools.boxes.nms``).
# "opencv": ``cv2.dnn.NMSBoxes`` called on xyxy boxes, which it reads as xywh (``tools.boxes.opencv_nms``).
NMS_METHODS = ("iou", "opencv")


@dataclass(frozen=True)
class Profile:
    name: str
    # How routing and CRS remove duplicate boxes (see NMS_METHODS).
    nms: str
    # CRS asks about the detector's boxes for the expression scored with target focus
    # (when ``focus`` is on). The authors' CRS never extracts a target.
    crs_focus: bool
    # Candidate boxes with no area (after clipping to the image) are dropped before top-k.
    drop_empty_candidates: bool
    # An MLLM answer with no usable box is replaced by the specialist's top box; else a miss.
    grounding_fallback: bool
    # Routing and the target-focus prompt use the extractor's own words (the scripts do),
    # rather than the phrase as it is written in the expression.
    verbatim_target: bool


PROFILES: dict[str, Profile] = {
    "default": Profile("default", nms="iou", crs_focus=True, drop_empty_candidates=True,
                       grounding_fallback=True, verbatim_target=False),
    "reference": Profile("reference", nms="opencv", crs_focus=False, drop_empty_candidates=False,
                         grounding_fallback=False, verbatim_target=True),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserInputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
