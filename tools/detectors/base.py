"""The specialist-detector protocol and the text checks every detector shares."""

from __future__ import annotations

import warnings
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from ..detections import Detections
from ..errors import UserInputError
from ..text import Span


@runtime_checkable
class Detector(Protocol):
    """An open-vocabulary detector that grounds text in an image.

    Implement ``detect`` to plug in your own model (a YOLO-World, a SAM pipeline, ...). ``image``
    is an RGB ``PIL.Image``; the result holds ``xyxy`` pixel boxes, best first.
    ``focus`` is the ``(start, end)`` character span of the target inside ``text``:
    when given, each box is scored by how well it matches those characters only
    (target-focus matching) instead of the whole text. The optional methods (several texts or
    images in one call) are ``DetectorExtras``.
    """

    def detect(self, image: Image.Image, text: str, focus: Span | None = None) -> Detections: ...


class DetectorExtras(Protocol):
    """What a ``Detector`` may add, each used when present (``tools.protocols`` checks its call).

    ``detect_many`` answers several texts on one image and ``detect_batch`` several (image, text)
    pairs, in one call each; ``thread_safe = True`` lets calls from several threads in at once
    (else they take turns, unless the model serialises itself with a ``_lock``).
    """

    thread_safe: bool

    def detect_many(self, image: Image.Image, texts: Sequence[str], focuses: Sequence[Span | None]
                    ) -> list[Detections]: ...

    def detect_batch(self, images: Sequence[Image.Image], texts: Sequence[str], focuses: Sequence[Span | None]
                     ) -> list[Detections]: ...


def resize_option(detector, resize: str) -> dict[str, str]:
    """``resize=`` for ``detector`` when it offers ``resize`` (its ``resizes``; transformers' resize
    is every detector's own and never passed), else nothing."""
    return {"resize": resize} if resize != "transformers" and resize in getattr(detector, "resizes", ()) else {}


def focus_spans(texts: Sequence[str], focuses: Sequence[Span | None] | None) -> list[Span | None]:
    """One focus span (or ``None``) per text: ``focuses`` as given, or none at all."""
    spans = list(focuses) if focuses is not None else [None] * len(texts)
    if len(spans) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(spans)} focus spans")
    return spans


# How a query is scored over the target's tokens with target focus: "mean", as mmdetection's
# ``convert_grounding_to_cls_scores`` does for the authors' ``tokens_positive``, or "max".
FOCUS_SCORES = ("mean", "max")


def check_focus_score(focus_score: str) -> str:
    if focus_score not in FOCUS_SCORES:
        raise UserInputError(f"unknown focus_score {focus_score!r}; choose one of {', '.join(FOCUS_SCORES)}")
    return focus_score


def query_scores(token_probs, score_tokens: list[int] | None, focus_score: str = "mean"):
    """Each query's score from its sigmoid probabilities over the caption's tokens, ``(queries, tokens)``.

    Without focus (``score_tokens`` is ``None``) the highest probability over every token,
    as transformers' post-processing and mmdetection (``tokens_positive=-1``) report; with
    focus the ``focus_score`` of the probabilities over the focus tokens.
    """
    if score_tokens is None:
        return token_probs.max(dim=-1).values
    focused = token_probs[:, score_tokens]
    return focused.mean(dim=-1) if focus_score == "mean" else focused.max(dim=-1).values


def caption_and_focus_tokens(
    text: str, focus: Span | None, tokenizer, max_tokens: int, *, keeps_sep: bool = False, stacklevel: int = 3
) -> tuple[str, list[int] | None]:
    """The caption Grounding DINO sees and the token positions a query is scored over.

    The caption is ``text`` stripped and ending with "." as Grounding DINO was trained.
    The model takes ``max_tokens`` tokens, special ones included; a longer caption is cut
    (with a warning naming what is dropped), ending on ``[SEP]`` again when ``keeps_sep``
    (transformers' truncation) or simply cut (the original code base). The positions are
    the kept tokens whose characters overlap ``focus`` (a span of ``text``); ``None``
    means every token, either because there is no focus or because it fell in the cut part.
    """
    lead = len(text) - len(text.lstrip())
    caption = text.strip()
    if not caption.endswith("."):
        caption += "."
    offsets = tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
    kept = offsets
    if len(offsets) > max_tokens:
        kept = offsets[: max_tokens - 1] if keeps_sep else offsets[:max_tokens]
        end_char = max(end for _, end in kept)
        warnings.warn(
            f"expression is {len(offsets)} tokens, over the detector's limit of {max_tokens}; "
            f"the text after {caption[max(0, end_char - 20):end_char]!r} is ignored",
            stacklevel=stacklevel,
        )
    if focus is None:
        return caption, None
    start, end = focus[0] - lead, focus[1] - lead
    tokens = [i for i, (s, e) in enumerate(kept) if e > s and s < end and e > start]
    if not tokens:
        warnings.warn(
            f"focus span {tuple(focus)} falls in the truncated part of the expression; scoring without focus",
            stacklevel=stacklevel,
        )
        return caption, None
    return caption, tokens
