"""The MLLM protocol: what a multimodal model must do for the agent to use it."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from PIL import Image

from ..detections import Detections
from .selection import Selection


@runtime_checkable
class MLLM(Protocol):
    """A multimodal LLM that can ground an expression and answer a CRS question.

    Implement these two methods to plug in your own model (a LLaVA, a Molmo, ...); a strategy asks
    only for what it uses (CRS: ``select``; the MLLM path: ``ground``). ``image`` is an RGB
    ``PIL.Image``; boxes are ``xyxy`` pixels of that image. The optional methods (batched calls,
    ``verify``, ``count``) are ``MLLMExtras``. A ``select`` that takes the keyword ``reading`` is
    asked with ``reading="generated"`` under the reference profile: answer greedily and return a
    ``Selection`` with the ``text`` written (``tools.mllm.reading``); without it, its letter
    probabilities stand.
    """

    def ground(self, image: Image.Image, expression: str, focus: str | None = None) -> Detections:
        """Boxes the model writes for ``expression``; ``focus`` names the target phrase
        for the target-focus prompt. Scores are the model's confidence in each box."""
        ...

    def select(
        self, image: Image.Image, expression: str, candidates: Detections, allow_none: bool = False
    ) -> Selection:
        """Probabilities over the lettered ``candidates`` (and "None" when allowed)."""
        ...


class MLLMExtras(Protocol):
    """What an ``MLLM`` may add, each used when present (``tools.protocols`` checks its call).

    The ``_batch`` methods answer the queries run together in one call; ``verify`` enables
    ``crs_mode="verify"``, ``count`` ``count_mode="image"``; ``thread_safe = True`` lets calls
    from several threads in at once (else they take turns, unless the model has a ``_lock``).
    """

    thread_safe: bool

    def ground_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     focuses: Sequence[str | None]) -> list[Detections]: ...

    def select_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     candidates: Sequence[Detections], allow_none: bool) -> list[Selection]: ...

    def verify(self, image: Image.Image, expression: str, candidates: Detections) -> Sequence[float]: ...

    def verify_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                     candidates: Sequence[Detections]) -> list[Sequence[float]]: ...

    def count(self, image: Image.Image, expression: str, candidates: Detections) -> Sequence[float] | int: ...

    def count_batch(self, images: Sequence[Image.Image], expressions: Sequence[str],
                    candidates: Sequence[Detections]) -> list[Sequence[float] | int]: ...
