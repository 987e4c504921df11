"""The specialist-detector protocol and the text checks every detector shares."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from PIL import Image

from ..detections import Detections
from ..errors import UserInputError

Span = tuple[int, int]


@runtime_checkable
class Detector(Protocol):
    """An open-vocabulary detector that grounds text in an image.

    Implement ``detect`` to plug in your own model (OWLv2, Florence-2, ...). ``image``
    is an RGB ``PIL.Image``; the result holds ``xyxy`` pixel boxes, best first.
    ``focus`` is the ``(start, end)`` character span of the target inside ``text``:
    when given, each box is scored by how well it matches those characters only
    (target-focus matching) instead of the whole text.
    """

    def detect(self, image: Image.Image, text: str, focus: Span | None = None) -> Detections: ...


def check_text(text: str, focus: Span | None = None) -> None:
    """Raise ``UserInputError`` for an empty text or a focus span that is not inside it."""
    if not isinstance(text, str) or not text.strip():
        raise UserInputError("the expression is empty")
    if focus is None:
        return
    try:
        start, end = (int(v) for v in focus)
    except (TypeError, ValueError):
        raise UserInputError(f"focus must be a (start, end) pair of ints, got {focus!r}") from None
    if not 0 <= start < end <= len(text):
        raise UserInputError(f"focus span {(start, end)} lies outside the text (length {len(text)}): {text!r}")
    if not text[start:end].strip():
        raise UserInputError(f"focus span {(start, end)} covers only whitespace in {text!r}")
