"""What every target extractor returns and promises."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, runtime_checkable

from .count import ExpectedCount

# "failed": the reference extraction dropped it (``tools.extraction.reference``; phrase and span None).
Source = Literal["model", "heuristic", "failed"]


@dataclass(frozen=True)
class ExtractedTarget:
    """The target of one expression and where it came from.

    ``phrase`` is the target exactly as written in the expression
    (``expression[span[0]:span[1]]``), ``span`` its character span, ``source`` says
    whether the model's answer was used ("model") or the model-free parser
    ("heuristic"), and ``answer`` keeps the model's own words (``None`` when it gave
    none). ``phrase`` and ``span`` are ``None`` only for a blank expression, and when
    ``source`` is "failed" (the reference extraction dropped it). ``count`` is
    how many objects the model said the expression names (1, a number or "many"; asked
    with the count prompt only), ``None`` when it was not asked or gave no usable count.
    """

    phrase: str | None
    span: tuple[int, int] | None
    source: Source
    answer: str | None = None
    count: ExpectedCount | None = None

    def within(self, expression: str) -> "ExtractedTarget":
        """This target as a caller hands it in for ``expression``: its text with control markup
        neutralised (as the expression's is), its span dropped unless it holds the phrase there."""
        from ..text import neutralise_markup

        phrase = None if self.phrase is None else neutralise_markup(self.phrase)
        answer = None if self.answer is None else neutralise_markup(self.answer)
        span = self.span
        if span is not None and not (0 <= span[0] < span[1] <= len(expression) and phrase is not None
                                     and expression[span[0]:span[1]] == phrase):
            span = None
        return replace(self, phrase=phrase, answer=answer, span=span)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phrase": self.phrase,
            "span": None if self.span is None else list(self.span),
            "source": self.source,
            "answer": self.answer,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExtractedTarget":
        span = data.get("span")
        return cls(data.get("phrase"), None if span is None else (int(span[0]), int(span[1])),
                   data["source"], data.get("answer"), data.get("count"))


@runtime_checkable
class TargetExtractor(Protocol):
    """Names the object each referring expression is about ("the white truck")."""

    def extract(self, expressions: list[str]) -> list[str | None]:
        """One target phrase per expression, in order (``None`` when there is none)."""
        ...


class ExtractorExtras(Protocol):
    """What a ``TargetExtractor`` may add (``tools.protocols`` checks its call): ``extract_spans``
    answers with each target's span and source itself; ``thread_safe = True`` lets calls from
    several threads in at once."""

    thread_safe: bool

    def extract_spans(self, expressions: list[str]) -> list[ExtractedTarget]: ...
