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


# "aligned": the extractor's answer aligned to the expression's words (``tools.extraction.align``).
# "substring": the first case-insensitive substring, as the scripts' ``find_positive`` finds it.
TARGET_SPANS = ("aligned", "substring")
# The detector's input size: "transformers", its processor's resize; "mmdet", mmdetection's
# ``FixScaleResize`` (``int(x + 0.5)``), which the scripts ran.
DETECTOR_RESIZES = ("transformers", "mmdet")


@dataclass(frozen=True)
class Profile:
    """The rules a ``profile`` setting selects (``Configuration.profile_rules``)."""

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
    # Target extraction with REX's prompt and per-item fallback ("rex"), or the scripts'
    # messages, parsing and batch dropping (``tools.extraction.reference``).
    extraction: str
    # Where the target's focus span lies in the expression (see TARGET_SPANS).
    target_span: str
    # The temperature a served extraction LLM is asked at; ``None``: not sent (the API's default).
    extraction_temperature: float | None
    # How a CRS answer is read (``tools.mllm.reading.READINGS``): "letter", the option letters'
    # next-token probabilities of one forward pass; "generated", the greedy answer text as the
    # authors' evaluators parse it (the letter probabilities are still recorded).
    crs_reading: str
    # The MLLM sees the image with its EXIF orientation applied (qwen-vl-utils does not apply it).
    mllm_exif_orientation: bool
    # See DETECTOR_RESIZES.
    detector_resize: str


PROFILES: dict[str, Profile] = {
    "default": Profile("default", nms="iou", crs_focus=True, drop_empty_candidates=True,
                       grounding_fallback=True, verbatim_target=False, extraction="rex", target_span="aligned",
                       extraction_temperature=0.0, crs_reading="letter", mllm_exif_orientation=True,
                       detector_resize="transformers"),
    "reference": Profile("reference", nms="opencv", crs_focus=False, drop_empty_candidates=False,
                         grounding_fallback=False, verbatim_target=True, extraction="reference",
                         target_span="substring", extraction_temperature=None, crs_reading="generated",
                         mllm_exif_orientation=False, detector_resize="mmdet"),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise UserInputError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
